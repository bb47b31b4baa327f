"""The GPU path's properties, checked on the CPU: one compiled graph, the compiled step equal to the
eager one with no recompilation, and no device-to-host read inside a training step."""

import collections
import json
import sys
import traceback
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from alexnet import config as cfg
from alexnet.lrn import LocalResponseNorm, lrn_traceable
from alexnet.model import AlexNet
from alexnet.training.config import TrainConfig
from alexnet.training.loop import train
from alexnet.training.optim import PaperSGD, paper_update
from alexnet.training.step import Stepper, forward_loss

sys.path.insert(0, str(Path(__file__).parent))
import tiny_trainer  # noqa: E402,F401 - registers the "tiny" model
from test_model import lrn_naive  # noqa: E402
from test_optim import LRS, _formula, _run  # noqa: E402


def _graphs(variant: str, training: bool, channels_last: bool, amp: bool, scope: str = "layer") -> tuple:
    """(graphs, breaks, first break reason) of torch._dynamo.explain over one forward (no inductor)."""
    size = 224 if variant == "torchvision" else 227
    options = {} if variant == "torchvision" else {"lrn_scope": scope}
    model = AlexNet(variant, num_classes=10, **options).train(training)
    x = torch.randn(2, 3, size, size)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", torch.bfloat16, enabled=amp), torch.set_grad_enabled(training):
        e = torch._dynamo.explain(model)(x)
    return e.graph_count, e.graph_break_count, e.break_reasons[:1]


# (variant, training, channels_last, bf16 autocast, LRN scope): train --fast's settings first
CASES = [("paper", True, True, True, "layer"), ("paper", True, False, False, "layer"),
         ("paper", False, True, True, "layer"), ("paper", False, False, False, "layer"),
         ("paper", True, True, True, "tower"), ("ungrouped", True, True, True, "layer"),
         ("torchvision", True, True, True, "layer"), ("torchvision", False, False, False, "layer")]  # fmt: skip


def test_the_nets_trace_as_one_graph():
    """1 graph, 0 breaks: the paper net in train and eval (no_grad), fp32 and bf16 autocast, NCHW and
    channels_last, LRN over the layer and per tower; the ungrouped and torchvision variants."""
    for case in CASES:
        graphs, breaks, reason = _graphs(*case)
        assert (graphs, breaks) == (1, 0), (case, reason)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["paper", "ungrouped", "torchvision"])
def test_every_mode_traces_as_one_graph(variant):
    """The whole matrix: train/eval x fp32/bf16 x NCHW/channels_last x LRN scopes."""
    for scope in ["layer"] if variant == "torchvision" else ["layer", "tower"]:
        for training in (True, False):
            for channels_last in (False, True):
                for amp in (False, True):
                    case = (variant, training, channels_last, amp, scope)
                    graphs, breaks, reason = _graphs(*case)
                    assert (graphs, breaks) == (1, 0), (case, reason)


@pytest.mark.parametrize("beta", [0.75, 0.6])
@pytest.mark.parametrize("groups", [1, 2])
def test_traceable_lrn_is_the_formula(beta, groups):
    """lrn_traceable (what torch.compile traces) against the naive loop, per group, and its gradient
    (autograd through plain ops) against the eager kernel's analytic one."""
    torch.manual_seed(0)
    a = (torch.randn(2, 14, 4, 4, dtype=torch.float64) * 60).requires_grad_()
    halves = [lrn_naive(h, beta=beta) for h in a.detach().chunk(groups, dim=1)]
    out = lrn_traceable(a, 5, 1e-4, beta, 2.0, groups)
    assert torch.allclose(out, torch.cat(halves, dim=1), rtol=1e-12, atol=1e-12)
    g = torch.randn_like(out)
    (ours,) = torch.autograd.grad(out, a, g)
    (eager,) = torch.autograd.grad(LocalResponseNorm(5, 1e-4, beta, 2.0, groups)(a), a, g)
    assert torch.allclose(ours, eager, rtol=1e-10, atol=1e-12)
    # bf16 in, bf16 out, computed in float32: within bf16 rounding of the exact value
    x = (torch.rand(2, 14, 4, 4) * 60).bfloat16()
    exact = lrn_traceable(x.double(), 5, 1e-4, beta, 2.0, groups)
    assert lrn_traceable(x, 5, 1e-4, beta, 2.0, groups).dtype == torch.bfloat16
    assert torch.allclose(lrn_traceable(x, 5, 1e-4, beta, 2.0, groups).double(), exact, rtol=8e-3, atol=0)


def test_compiled_forward_and_gradients_equal_eager():
    """The paper net (LRN per tower, channels_last) compiled whole (aot_eager: Dynamo's graph and
    AOTAutograd's backward, without inductor's slow CPU code generation) against eager, fp32."""
    torch.manual_seed(0)
    model = AlexNet(num_classes=10, init="kaiming", dropout=0.0, lrn_scope="tower").to(
        memory_format=torch.channels_last
    )
    images, labels = torch.randn(2, 3, 227, 227) * 50, torch.tensor([3, 7])
    compiled = torch.compile(forward_loss, fullgraph=True, backend="aot_eager")
    results = []
    for fn in (forward_loss, compiled):
        model.zero_grad(set_to_none=True)
        loss, row = fn(model, images, labels, None, True)
        loss.backward()
        results.append((loss.detach(), row, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (le, re, ge), (lc, rc, gc) = results
    assert torch.allclose(lc, le, rtol=1e-5) and torch.equal(rc[0], re[0]) and rc[0] == 2
    for name in ge:
        scale = ge[name].abs().max()
        assert torch.allclose(gc[name], ge[name], rtol=1e-5, atol=1e-5 * scale), name


def test_compiled_paper_sgd_is_the_formula_and_an_lr_drop_does_not_recompile():
    torch._dynamo.reset()
    ours = _run(lambda p: _compiled(PaperSGD(p, lr=0.01, momentum=0.9, weight_decay=5e-4)), LRS)
    for step, (a, b) in enumerate(zip(ours, _formula(LRS))):
        for x, y in zip(a, b):
            assert torch.allclose(x, y, rtol=0, atol=1e-12), f"step {step}"
    assert _cache_entries(paper_update) == 1  # lr 0.01 then 0.001: the same compiled update


def _compiled(opt):
    opt.compile("aot_eager")
    return opt


def _cache_entries(fn) -> int:
    return len(torch._dynamo.eval_frame._debug_get_cache_entry_list(fn.__code__))


# ------------------------------------------------------------------------------------------------
# train itself: compiled vs eager, recompilations, host reads
# ------------------------------------------------------------------------------------------------

SETTINGS = ["model.name=tiny", "data.crop=64", "data.batch_size=4", "train.device=cpu", "train.log_every=5",
            "data.normalize=channel", "schedule.name=step", "schedule.milestones=[2]"]  # fmt: skip


@pytest.fixture(scope="module")
def small(prepared_shapes):
    """3 classes x 8 training images (6 steps of 4 per epoch) and 6 validation images."""
    return prepared_shapes(dict(classes=3, per_class=8, val_per_class=2, seed=3))


def _config(*extra):
    return cfg.load_config(TrainConfig, None, [*SETTINGS, *extra])


def _records(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_compiled_training_equals_eager_without_recompiling(small, tmp_path):
    """train.compile over 3 epochs with an lr drop at epoch 2: the same log and weights as eager, and
    one compiled forward/backward and one compiled update for the whole run (no recompilation at
    the lr drop, at an epoch end or after validation)."""
    torch._dynamo.reset()
    extra = ["train.epochs=3", "data.workers=0"]
    train(small, tmp_path / "eager", _config(*extra), progress="off")
    train(small, tmp_path / "compiled", _config(*extra, "train.compile=true", "train.compile_backend=aot_eager"),
          progress="off")  # fmt: skip
    assert _cache_entries(Stepper._forward) == 1 and _cache_entries(paper_update) == 1
    eager, compiled = _records(tmp_path / "eager"), _records(tmp_path / "compiled")
    assert [r["lr"] for r in compiled if r["kind"] == "epoch"] == pytest.approx([0.01, 0.001, 0.001])
    for a, b in zip(eager, compiled):
        for key in ("loss", "train_loss", "val_loss", "top1_error", "val_top1_error"):
            if a.get(key) is not None:
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["kind"], a["step"], key)
    wa, wb = (torch.load(tmp_path / r / "checkpoints" / "last.pt")["model"] for r in ("eager", "compiled"))
    for key in wa:
        assert torch.allclose(wa[key], wb[key], rtol=1e-4, atol=1e-6), key


# Where reading a value back is allowed: log points, epoch ends, checkpoints, the one stall check
ALLOWED = {"interval_record", "check_loss", "end_epoch", "epoch_metrics", "check_stall", "restore"}
NEW_HOST_TENSOR = {torch.ops.aten.lift_fresh.default, torch.ops.aten._local_scalar_dense.default}
READS = {"item", "tolist", "__float__", "__int__", "__bool__", "__index__", "numpy", "cpu"}


class HostReads(TorchFunctionMode):
    """Counts tensor-to-host reads (.item(), .tolist(), float(t), ...) by where they happen."""

    def __init__(self, counts):
        super().__init__()
        self.counts = counts

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", None) in READS:
            self.counts[_where()] += 1
        return func(*args, **(kwargs or {}))


class HostCopies(TorchDispatchMode):
    """Counts scalar reads and new tensors made from host data (torch.tensor(...): a blocking copy
    onto an accelerator) by where they happen."""

    def __init__(self, counts):
        super().__init__()
        self.counts = counts

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in NEW_HOST_TENSOR:
            self.counts[_where()] += 1
        return func(*args, **(kwargs or {}))


def _where() -> str:
    stack = traceback.extract_stack()
    names = {frame.name for frame in stack}
    if "train_one_epoch" not in names:
        return "outside the epoch loop"  # building the run, validation, final save
    if any("torch/utils/data/" in frame.filename for frame in stack):
        return "data loader"  # torch's DataLoader drawing seeds and indices from host tensors
    if "save" in names:
        return "checkpoint"  # a save copies every tensor to the host anyway (and digests them)
    return "log point or epoch end" if names & ALLOWED else "inside a step"


@pytest.mark.parametrize("compiled", [False, True])
def test_a_training_step_reads_nothing_back_from_the_device(small, tmp_path, compiled):
    """`train` with the --fast data path, eager and compiled, for 2 epochs of 6 steps: no read and no
    new host tensor inside a step (data loading runs in a worker process); reads only at the log
    points and epoch ends."""
    counts = collections.Counter()
    extra = ["train.compile=true", "train.compile_backend=aot_eager"] if compiled else []
    config = _config("train.epochs=2", "data.workers=1", "data.pipeline=device", "data.batch_size=4",
                     "train.checkpoint_every=4", *extra)  # fmt: skip
    with HostReads(counts), HostCopies(counts):
        summary = train(small, tmp_path / "run", config, progress="off")
    assert summary["step"] == 12
    assert counts["inside a step"] == 0, counts
    # 4 log points (steps 5, 6, 10, 12) and 2 epoch ends: a few reads each (the saves apart)
    assert 0 < counts["log point or epoch end"] <= 8 * 6, counts
    assert counts["checkpoint"] > 0  # the mid-epoch saves (steps 4 and 8) were inside the epoch loop
