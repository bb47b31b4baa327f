"""Training-step speed of a registered model against torchvision's AlexNet, in one process.

Contenders run alternately, one step each per round, after warm-up; medians are reported. Ours is
the step `alexnet train` ships (alexnet/training/step.py's Stepper: forward, cross-entropy and the
meters, backward, and the optimizer train builds for `optim.name`, by default PaperSGD with momentum
0.9 and weight decay 5e-4; compiled as --compile compiles it). torchvision's is the reference
training scripts' step: forward, cross-entropy, backward and torch's SGD (fused on CUDA, foreach
elsewhere; the paper's update equals it while the learning rate is constant). Inputs are random
tensors already on the device: this measures the model and its step only.
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
from alexnet.training.optim import build_optimizer
from alexnet.training.step import Stepper

IMAGENET_TRAIN_IMAGES = 1_281_167  # ILSVRC-2012 training set
PAPER_EPOCHS = 90  # paper §5: "roughly 90 cycles through the training set"
OPTIMIZERS = ("paper", "sgd", "lars")  # ours: the optim.name values train's build_optimizer takes


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda, mps or cpu; an unavailable or mistyped device is a one-line error naming --device."""
    from alexnet.distributed import pick_device

    return pick_device(device, option="--device")


AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}  # --amp -> autocast dtype


def shipped_stepper(
    model: nn.Module,
    device: torch.device,
    *,
    amp: str | None = None,
    channels_last: bool = False,
    compile: bool = False,
    optimizer: str = "paper",
    compile_mode: str | None = None,
) -> Stepper:
    """The Stepper `alexnet train` runs for `model` on `device`: the optimizer it builds for
    optim.name=`optimizer` (the paper's hyper-parameters), with --amp's autocast, --channels-last
    and --compile (torch.compile's `compile_mode`). A failed compilation raises at the first step."""
    if optimizer not in OPTIMIZERS:
        raise UsageError(f"--optimizer {optimizer!r}: choose {', '.join(OPTIMIZERS)}")
    model = model.to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = build_optimizer(optimizer, model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    return Stepper(model, opt, autocast_dtype=AUTOCAST[amp], channels_last=channels_last,
                   backend="inductor" if compile else None, mode=compile_mode)  # fmt: skip


def _inputs(batch: int, input_size: int, num_classes: int, device: torch.device, channels_last: bool):
    """A fixed random batch on the device: images (B, 3, S, S) and labels (B,)."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch, 3, input_size, input_size, device=device).contiguous(memory_format=memory_format)
    return x, torch.randint(0, num_classes, (batch,), device=device)


def shipped_step_fn(model: nn.Module, *, batch: int, input_size: int, num_classes: int, device: torch.device,
                    **options) -> Callable[[], None]:  # fmt: skip
    """A closure doing one step of `alexnet train`'s Stepper on a fixed random batch (options: shipped_stepper's)."""
    stepper = shipped_stepper(model, device, **options)
    x, y = _inputs(batch, input_size, num_classes, device, options.get("channels_last", False))
    return lambda: stepper(x, y)


def baseline_step_fn(
    model: nn.Module,
    *,
    batch: int,
    input_size: int,
    num_classes: int,
    device: torch.device,
    amp: str | None = None,
    channels_last: bool = False,
    compile: bool = False,
) -> Callable[[], None]:
    """torchvision's reference training step on a fixed random batch: forward, cross-entropy,
    backward, torch's SGD (fused on CUDA, foreach elsewhere); torch.compile'd model with `compile`."""
    model = model.to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    fused = {"fused": True} if device.type == "cuda" else {"foreach": True}
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, **fused)
    step_model = torch.compile(model) if compile else model
    x, y = _inputs(batch, input_size, num_classes, device, channels_last)
    dtype = AUTOCAST[amp]

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
    optimizer: str = "paper",
    compile_mode: str | None = None,
    warmup: int = 2,
    repeats: int = 5,
    load: int = 0,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Median training-step time and img/s of `model` in `alexnet train`'s step vs torchvision's
    AlexNet in its reference step (eager fp32). optimizer: ours, an optim.name (OPTIMIZERS).

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
    tv = dict(batch=batch, input_size=224, num_classes=1000, device=dev)
    contenders = {
        "ours": shipped_step_fn(ours, batch=batch, input_size=size, num_classes=1000, device=dev, amp=amp,
                                channels_last=channels_last, compile=compile, optimizer=optimizer,
                                compile_mode=compile_mode),
        "torchvision": baseline_step_fn(torchvision.models.alexnet(), **tv),
    }  # fmt: skip
    if dev.type == "cuda":
        contenders["torchvision_bf16_cl"] = baseline_step_fn(torchvision.models.alexnet(), **tv, amp="bf16",
                                                             channels_last=True)  # fmt: skip
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
