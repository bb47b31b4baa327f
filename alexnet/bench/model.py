"""Training-step speed of a registered model against torchvision's AlexNet, in one process.

Contenders run alternately, one step each per round, after warm-up; medians are reported. A step
is forward, cross-entropy, backward and an SGD update with momentum 0.9 and weight decay 5e-4 (the
paper's update equals torch's SGD while the learning rate is constant, so by default both use
torch's fused (CUDA) / foreach (CPU) SGD; optimizer="paper" times ours with PaperSGD, foreach).
Inputs are random tensors already on the device: this measures the model only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torchvision
from torch import nn

from alexnet.bench.common import check_load, competing_load, environment, median, sync, time_alternately
from alexnet.errors import UsageError
from alexnet.model import build_model, model_input_size
from alexnet.summary import summarize

IMAGENET_TRAIN_IMAGES = 1_281_167  # ILSVRC-2012 training set
PAPER_EPOCHS = 90  # paper §5: "roughly 90 cycles through the training set"


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda, mps or cpu; an unavailable or mistyped device is a one-line error naming --device."""
    from alexnet.distributed import pick_device

    return pick_device(device, option="--device")


def train_step_fn(
    model: nn.Module,
    *,
    batch: int,
    input_size: int,
    num_classes: int,
    device: torch.device,
    amp: str | None = None,
    channels_last: bool = False,
    compile: bool = False,
    optimizer: str = "sgd",
    compile_mode: str | None = None,
) -> Callable[[], None]:
    """A closure doing one full training step on a fixed random batch.

    optimizer: "sgd" (torch SGD, fused on CUDA, foreach elsewhere) or "paper" (PaperSGD, foreach);
    compile_mode: torch.compile's mode ("reduce-overhead" adds CUDA graphs, "max-autotune" ...)."""
    model = model.to(device).train()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    if optimizer == "paper":
        from alexnet.training.optim import PaperSGD

        opt = PaperSGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    elif optimizer == "sgd":
        fused = device.type == "cuda"
        opt = torch.optim.SGD(
            model.parameters(),
            lr=0.01,
            momentum=0.9,
            weight_decay=5e-4,
            **({"fused": True} if fused else {"foreach": True}),
        )
    else:
        raise UsageError(f"--optimizer {optimizer!r}: choose sgd or paper")
    step_model = torch.compile(model, mode=compile_mode) if compile else model
    x = torch.randn(batch, 3, input_size, input_size, device=device).contiguous(memory_format=memory_format)
    y = torch.randint(0, num_classes, (batch,), device=device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}[amp]

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = nn.functional.cross_entropy(step_model(x), y)
        loss.backward()
        opt.step()

    return step


def matmul_tflops(device: torch.device, dtype: torch.dtype, size: int = 4096, repeats: int = 10) -> float:
    """The machine's dense matrix-product rate (TFLOP/s), measured now: the roofline reference."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    times = time_alternately({"mm": lambda: a @ b}, device=device, warmup=2, repeats=repeats)["mm"]
    return 2 * size**3 / median(times) / 1e12


def bench_model(
    model: str = "alexnet",
    *,
    batch: int = 32,
    device: str = "cpu",
    amp: str | None = None,
    channels_last: bool = False,
    compile: bool = False,
    optimizer: str = "sgd",
    compile_mode: str | None = None,
    warmup: int = 2,
    repeats: int = 5,
    load: int = 0,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Median training-step time and img/s of `model` vs torchvision's AlexNet (eager fp32).

    load: threads of a competing matrix-product process run during warm-up and timing (0: none).

    On CUDA the baselines also include torchvision eager bf16 + channels_last, and the model's
    achieved FLOP/s is compared with a bf16 matrix-product rate measured in the same run.
    Returns a JSON-ready dict; "ratio" = our step time / torchvision's step time.
    """
    dev = resolve_device(device)
    _check_options(batch=batch, warmup=warmup, repeats=repeats, amp=amp, load=load)
    torch.manual_seed(0)
    ours = build_model(model)
    size = model_input_size(ours)
    contenders = _contenders(
        ours,
        size,
        batch=batch,
        dev=dev,
        amp=amp,
        channels_last=channels_last,
        compile=compile,
        optimizer=optimizer,
        compile_mode=compile_mode,
    )
    if progress:
        beside = f", beside a {load}-thread matmul process" if load else ""
        progress(f"timing {', '.join(contenders)}: {warmup} warm-up + {repeats} timed rounds, batch {batch}{beside}")
    with competing_load(load):
        times = time_alternately(contenders, device=dev, warmup=warmup, repeats=repeats)
    step_s = {name: median(t) for name, t in times.items()}
    img_s = {name: batch / s for name, s in step_s.items()}
    macs = summarize(model).macs
    train_flops = 3 * 2 * macs * batch  # forward 2*MACs, backward about twice the forward
    result = {
        "model": model,
        "batch": batch,
        "device": str(dev),
        "config": {
            "amp": amp,
            "channels_last": channels_last,
            "compile": compile,
            "compile_mode": compile_mode if compile else None,
            "optimizer": optimizer,
        },
        "ours_step_s": step_s["ours"],
        "torchvision_step_s": step_s["torchvision"],
        "ours_img_s": img_s["ours"],
        "torchvision_img_s": img_s["torchvision"],
        "ratio": step_s["ours"] / step_s["torchvision"],
        "load_threads": load,
        "step_times_s": times,
        "model_tflops": train_flops / step_s["ours"] / 1e12,
        "imagenet_epoch_s": IMAGENET_TRAIN_IMAGES / img_s["ours"],
        "paper_recipe_hours": PAPER_EPOCHS * IMAGENET_TRAIN_IMAGES / img_s["ours"] / 3600,
        "env": environment(dev),
    }
    _add_roofline(result, img_s, dev)
    sync(dev)
    return result


def _check_options(*, batch: int, warmup: int, repeats: int, amp: str | None, load: int) -> None:
    """Reject bench_model's impossible options with a UserError."""
    if batch < 1:
        raise UsageError(f"--batch must be at least 1, got {batch}")
    if repeats < 1 or warmup < 0:
        raise UsageError(f"--repeats must be at least 1 and --warmup at least 0, got {repeats} and {warmup}")
    if amp not in (None, "bf16", "fp16"):
        raise UsageError(f"--amp {amp!r}: choose bf16 or fp16 (or leave it off)")
    check_load(load)


def _contenders(
    ours,
    size: int,
    *,
    batch: int,
    dev: torch.device,
    amp: str | None,
    channels_last: bool,
    compile: bool,
    optimizer: str,
    compile_mode: str | None,
) -> dict:
    """The training steps to time: ours, torchvision's AlexNet (eager fp32) and, on CUDA, its bf16 + channels_last."""
    contenders = {
        "ours": train_step_fn(
            ours,
            batch=batch,
            input_size=size,
            num_classes=1000,
            device=dev,
            amp=amp,
            channels_last=channels_last,
            compile=compile,
            optimizer=optimizer,
            compile_mode=compile_mode,
        ),
        "torchvision": train_step_fn(
            torchvision.models.alexnet(), batch=batch, input_size=224, num_classes=1000, device=dev
        ),
    }
    if dev.type == "cuda":
        contenders["torchvision_bf16_cl"] = train_step_fn(
            torchvision.models.alexnet(),
            batch=batch,
            input_size=224,
            num_classes=1000,
            device=dev,
            amp="bf16",
            channels_last=True,
        )
    return contenders


def _add_roofline(result: dict, img_s: dict, dev: torch.device) -> None:
    """Compare the model's FLOP/s with a matrix-product rate measured now (bf16 on CUDA, else fp32)."""
    if dev.type == "cuda":
        result["torchvision_bf16_cl_img_s"] = img_s["torchvision_bf16_cl"]
        result["speedup_vs_torchvision_bf16"] = img_s["ours"] / img_s["torchvision_bf16_cl"]
        result["matmul_tflops_bf16"] = matmul_tflops(dev, torch.bfloat16, size=8192)
        result["fraction_of_matmul"] = result["model_tflops"] / result["matmul_tflops_bf16"]
    else:
        result["matmul_tflops_fp32"] = matmul_tflops(dev, torch.float32, size=1024, repeats=5)
        result["fraction_of_matmul"] = result["model_tflops"] / result["matmul_tflops_fp32"]
