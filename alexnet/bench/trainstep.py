"""`bench gpu`'s training-step stage: the step `alexnet train --fast` runs, against torchvision's AlexNet
under each of its usual settings, with FLOPs counted exactly and MFU against two peaks.

Ours is alexnet/training/step.py's Stepper exactly as train builds it under --fast: bf16 autocast, channels_last,
the forward and loss as one compiled graph with its compiled backward, PaperSGD's compiled update,
cudnn.benchmark (on CUDA; on a CPU --fast changes nothing, so neither does this). It runs at the
paper's 227 px and at torchvision's 224 px (conv1 then pads by 2), so one row compares equal inputs.
torchvision's AlexNet (no LRN, no groups) runs at 224 px with torch's fused SGD: eager fp32, eager bf16
+ channels_last (the reference training scripts' way) and compiled bf16 + channels_last (its best).
A contender whose compilation fails runs eagerly instead, and the reason is recorded.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torchvision

from alexnet.bench.common import median, sync, time_alternately
from alexnet.bench.model import baseline_step_fn, shipped_step_fn
from alexnet.model import build_model
from alexnet.summary import summarize

# Dense bf16 tensor-core peaks (TFLOP/s, without sparsity) from NVIDIA's data sheets, by a name
# fragment of torch.cuda.get_device_name; the first match wins, so variants come before the family.
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ("H200", 989.0),
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
)


def published_peak(gpu_name: str | None) -> float | None:
    """The data-sheet dense bf16 peak of a GPU by its CUDA name (None: not in the table, or no GPU)."""
    for fragment, tflops in PEAK_BF16_TFLOPS if gpu_name else ():
        if fragment in gpu_name:
            return tflops
    return None


def train_flops_per_image(model: str, input_size: int) -> int:
    """Exact FLOPs of one training image: 2 per multiply-add; the forward, the weight gradients, and
    the input gradients of every layer but the first (an image needs no gradient)."""
    layers = [layer for layer in summarize(model, input_size=input_size).layers if layer.macs]
    macs = sum(layer.macs for layer in layers)
    return 2 * (3 * macs - layers[0].macs)


def ours_step_fn(dev: torch.device, batch: int, size: int, amp: str | None, compile: bool) -> Callable:
    """One step of train --fast's Stepper on a fixed random batch (the paper net at `size` px, seeded)."""
    torch.manual_seed(0)
    return shipped_step_fn(build_model("alexnet", input_size=size), batch=batch, input_size=size, num_classes=1000,
                           device=dev, amp=amp, channels_last=True, compile=compile)  # fmt: skip


def first_call_or_eager(name: str, compiled: Callable[[], Callable], eager: Callable[[], Callable],
                        fallbacks: dict) -> Callable:  # fmt: skip
    """compiled() built and called once (where torch.compile compiles); if either fails, eager()
    instead, called once too, with the reason in fallbacks[name]."""
    try:
        fn = compiled()
        fn()
        return fn
    except Exception as exc:  # noqa: BLE001 - a GPU host without a C compiler, an unsupported op: anything
        text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        fallbacks[name] = f"torch.compile failed, timed eagerly: {type(exc).__name__}: {text}"
        fn = eager()
        fn()
        return fn


def stage_train_step(dev: torch.device, s, matmul: float, gpu_name: str | None) -> dict:
    """Ours at 227 and 224 px vs torchvision at 224 px (module docstring); alternating rounds, medians."""
    cuda = dev.type == "cuda"
    backend = "inductor" if cuda else None  # train --fast's compilation and autocast (none off CUDA, as --fast there)
    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = cuda  # as --fast sets it
    fallbacks: dict = {}
    tv = dict(batch=s.batch, input_size=s.tv_input, num_classes=1000, device=dev)
    amp_name = "bf16" if cuda else None

    def ours(size):
        return first_call_or_eager(f"ours_{size}", lambda: ours_step_fn(dev, s.batch, size, amp_name, cuda),
                                   lambda: ours_step_fn(dev, s.batch, size, amp_name, False), fallbacks)  # fmt: skip

    def torchvision_step(**kw):
        return baseline_step_fn(torchvision.models.alexnet(), **tv, **kw)

    try:
        contenders = {
            "ours": ours(s.crop),
            "ours_same_input": ours(s.tv_input),
            "torchvision_fp32": torchvision_step(),
            "torchvision_bf16": torchvision_step(amp=amp_name, channels_last=True),
            "torchvision_bf16_compiled": first_call_or_eager(
                "torchvision_bf16_compiled",
                lambda: torchvision_step(amp=amp_name, channels_last=True, compile=cuda),
                lambda: torchvision_step(amp=amp_name, channels_last=True),
                fallbacks,
            ),
        }
        times = time_alternately(contenders, device=dev, warmup=s.warmup, repeats=s.repeats)
        sync(dev)
    finally:
        torch.backends.cudnn.benchmark = benchmark
    img_s = {k: s.batch / median(v) for k, v in times.items()}
    flops = train_flops_per_image("alexnet", s.crop)
    peak = published_peak(gpu_name)
    achieved = flops * img_s["ours"] / 1e12
    return {
        "batch": s.batch,
        "config": {
            "amp": amp_name,
            "channels_last": True,
            "compile": backend,
            "cudnn_benchmark": cuda,
            "optimizer": "PaperSGD, compiled" if backend else "PaperSGD, foreach",
            "input": s.crop,
            "same_input": s.tv_input,
            "torchvision_input": s.tv_input,
            "torchvision_optimizer": "torch SGD " + ("fused" if cuda else "foreach"),
            "torchvision_compile": "inductor" if cuda else None,
        },  # fmt: skip
        "eager_fallbacks": fallbacks,
        "ours_img_s": img_s["ours"],
        "ours_same_input_img_s": img_s["ours_same_input"],
        "torchvision_fp32_img_s": img_s["torchvision_fp32"],
        "torchvision_bf16_img_s": img_s["torchvision_bf16"],
        "torchvision_bf16_compiled_img_s": img_s["torchvision_bf16_compiled"],
        # equal inputs (ours at torchvision's size): the rows to hold against the goals
        "ratio_same_input_vs_eager_bf16": img_s["ours_same_input"] / img_s["torchvision_bf16"],
        "ratio_same_input_vs_compiled_bf16": img_s["ours_same_input"] / img_s["torchvision_bf16_compiled"],
        # the paper's 227 px against torchvision's 224 px: what each net's own recipe trains on
        "ratio_paper_input_vs_eager_bf16": img_s["ours"] / img_s["torchvision_bf16"],
        "ratio_paper_input_vs_compiled_bf16": img_s["ours"] / img_s["torchvision_bf16_compiled"],
        "ratio_paper_input_vs_eager_fp32": img_s["ours"] / img_s["torchvision_fp32"],
        "train_flops_per_image": flops,
        "model_tflops": achieved,
        "published_peak_tflops": peak,
        "mfu_measured": achieved / matmul,  # against the bf16 matmul rate measured in this run
        "mfu_published": achieved / peak if peak else None,  # against the data sheet's dense bf16 peak
        "step_times_s": times,
    }
