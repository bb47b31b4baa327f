"""Inference speed: eval-mode forward of a registered model against torchvision's AlexNet (eager).

Two figures, each timed alternately with the baselines after warm-up, medians reported:
throughput (img/s) at a large batch (1024 on CUDA, 64 on CPU by default) and latency (ms) at
batch 1. By default ours runs as the library runs it: on the CPU the paper's net switches itself
to channels_last under no_grad (`AlexNet.cpu_inference_channels_last`; `nchw=True` turns that off,
leaving only the max-pools in channels_last, which gives identical values). Ours may run in bf16
autocast, channels_last and, on CUDA, replayed as a CUDA graph (`graphed`), which removes the
per-kernel launch cost that dominates batch-1 latency.
Inputs are random tensors already on the device.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torchvision
from torch import nn

from alexnet.bench.common import check_load, competing_load, environment, median, sync, time_alternately
from alexnet.bench.model import resolve_device
from alexnet.errors import UsageError, UserError
from alexnet.model import build_model, model_input_size

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}


def eager_forward(model: nn.Module, *, device: torch.device, amp: torch.dtype | None = None) -> Callable:
    """x (B, 3, H, W) on device -> logits (B, C), under no_grad and the given autocast."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            return model(x)

    return forward


def graphed(model: nn.Module, example: torch.Tensor, *, amp: torch.dtype | None = None, warmup: int = 3) -> Callable:
    """The eval forward captured as one CUDA graph for inputs shaped like `example`.

    Returns f(x) -> logits: x is copied into the graph's static input, the graph replays, and the
    static output is returned (overwritten by the next call: clone it to keep it). Warm-up runs on
    a side stream before capture, as torch.cuda.graphs requires; autocast's weight cache is off
    during capture (cached casts would be captured once and go stale).
    """
    if example.device.type != "cuda":
        raise UserError("CUDA graphs need a CUDA device; drop --graphs or use --device cuda")
    static_x = example.clone()
    device = example.device

    def run() -> torch.Tensor:
        with torch.no_grad(), torch.autocast("cuda", dtype=amp, enabled=amp is not None, cache_enabled=False):
            return model(static_x)

    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(warmup):
            run()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y = run()

    def forward(x: torch.Tensor) -> torch.Tensor:
        static_x.copy_(x)
        graph.replay()
        return static_y

    forward.graph = graph  # keeps the graph (and its memory pool) alive with the closure
    return forward


def make_forward(model: nn.Module, example: torch.Tensor, *, amp: str | None = None, graphs: bool = False,
                 compile: bool = False) -> Callable:  # fmt: skip
    """Our configured forward for inputs like `example` (already in the wanted memory format).
    compile + graphs is torch.compile(mode="reduce-overhead") (its own CUDA graphs); graphs alone
    is a manual capture (`graphed`)."""
    dtype = DTYPES[amp]
    if compile:
        model = torch.compile(model, mode="reduce-overhead" if graphs else "default")
    elif graphs:
        return graphed(model, example, amp=dtype)
    return eager_forward(model, device=example.device, amp=dtype)


def run_infer_bench(*, model: str = "alexnet", device: str = "cpu", batch: int | None = None, amp: str | None = None,
                    channels_last: bool = False, nchw: bool = False, graphs: bool = False, compile: bool = False,
                    warmup: int = 2,
                    repeats: int = 5, latency_repeats: int = 20, load: int = 0,
                    progress: Callable[[str], None] | None = None) -> dict:  # fmt: skip
    """Throughput at `batch` (default 1024 on CUDA, 64 on CPU) and batch-1 latency of `model`
    vs torchvision.models.alexnet eager fp32 (and on CUDA eager bf16 + channels_last).

    Returns a JSON-ready dict: ours_img_s, torchvision_img_s, throughput_ratio (ours / theirs),
    ours_latency_ms, torchvision_latency_ms, latency_ratio (ours / theirs: < 1 is faster).
    load: threads of a competing matrix-product process run while timing (0: none).
    nchw: turn off our net's own CPU inference layout (AlexNet.cpu_inference_channels_last), timing
    it in the caller's NCHW layout as before that switch existed.
    On the CPU torchvision's AlexNet in channels_last fp32 is a second baseline
    (torchvision_cl_img_s, torchvision_cl_latency_ms, *_ratio_vs_cl): what the layout alone gives it.
    """
    dev = resolve_device(device)
    cuda = dev.type == "cuda"
    batch = batch if batch is not None else (1024 if cuda else 64)
    if batch < 1 or repeats < 1 or latency_repeats < 1 or warmup < 0:
        raise UsageError("--batch, --repeats and --latency-repeats must be at least 1, --warmup at least 0")
    check_load(load)
    if amp not in DTYPES:
        raise UsageError(f"--amp {amp!r}: choose bf16 or fp16 (or leave it off)")
    if nchw and channels_last:
        raise UsageError("--nchw and --channels-last (or --fast) ask for opposite layouts: use one of them")
    if graphs and not cuda:
        raise UsageError("--graphs needs --device cuda (CUDA graphs); leave it off on the CPU")
    say = progress or (lambda m: None)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(0)
    ours = build_model(model).to(dev).eval().to(memory_format=fmt)
    if nchw and hasattr(ours, "cpu_inference_channels_last"):
        ours.cpu_inference_channels_last = False
    own_layout = bool(getattr(ours, "cpu_inference_channels_last", False)) and not cuda
    size = model_input_size(ours)
    theirs = torchvision.models.alexnet().to(dev).eval()
    baselines = {"torchvision": (theirs, None, torch.contiguous_format)}
    if cuda:
        theirs_cl = torchvision.models.alexnet().to(dev).eval().to(memory_format=torch.channels_last)
        baselines["torchvision_bf16_cl"] = (theirs_cl, torch.bfloat16, torch.channels_last)
    else:
        theirs_cl = torchvision.models.alexnet().to(dev).eval().to(memory_format=torch.channels_last)
        baselines["torchvision_cl"] = (theirs_cl, None, torch.channels_last)

    def inputs(b: int, s: int, memory_format) -> torch.Tensor:
        return torch.randn(b, 3, s, s, device=dev).contiguous(memory_format=memory_format)

    results = {}
    for label, b, reps in (("throughput", batch, repeats), ("latency", 1, latency_repeats)):
        x_ours = inputs(b, size, fmt)
        f_ours = make_forward(ours, x_ours, amp=amp, graphs=graphs, compile=compile)
        contenders = {"ours": lambda f=f_ours, x=x_ours: f(x)}
        for name, (net, dtype, mf) in baselines.items():
            x = inputs(b, 224, mf)
            f = eager_forward(net, device=dev, amp=dtype)
            contenders[name] = lambda f=f, x=x: f(x)
        beside = f", beside a {load}-thread matmul process" if load else ""
        say(f"{label}: batch {b}, {warmup} warm-up + {reps} timed rounds of {', '.join(contenders)}{beside}")
        with competing_load(load):
            results[label] = time_alternately(contenders, device=dev, warmup=warmup, repeats=reps)
        del f_ours  # a captured graph's memory pool goes with it
    sync(dev)
    per = {name: median(t) for name, t in results["throughput"].items()}
    lat = {name: median(t) * 1e3 for name, t in results["latency"].items()}
    out = {
        "device": str(dev),
        "model": model,
        "batch": batch,
        "config": {
            "amp": amp,
            "channels_last": channels_last,
            "graphs": graphs,
            "compile": compile,
            "cpu_inference_channels_last": own_layout,
        },
        "ours_img_s": batch / per["ours"],
        "torchvision_img_s": batch / per["torchvision"],
        "throughput_ratio": per["torchvision"] / per["ours"],
        "ours_latency_ms": lat["ours"],
        "torchvision_latency_ms": lat["torchvision"],
        "latency_ratio": lat["ours"] / lat["torchvision"],
        "load_threads": load,
        "times_s": results,
        "env": environment(dev),
    }
    if not cuda:
        out["torchvision_cl_img_s"] = batch / per["torchvision_cl"]
        out["torchvision_cl_latency_ms"] = lat["torchvision_cl"]
        out["throughput_ratio_vs_cl"] = per["torchvision_cl"] / per["ours"]
        out["latency_ratio_vs_cl"] = lat["ours"] / lat["torchvision_cl"]
    if cuda:
        out["torchvision_bf16_cl_img_s"] = batch / per["torchvision_bf16_cl"]
        out["torchvision_bf16_cl_latency_ms"] = lat["torchvision_bf16_cl"]
        out["throughput_ratio_vs_bf16_cl"] = per["torchvision_bf16_cl"] / per["ours"]
    return out
