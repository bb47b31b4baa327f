"""GPU-only paths (skipped without CUDA): the fast training step, the device data pipeline on CUDA,
nvJPEG decoding, CUDA-graph inference, the bench commands on CUDA, and `alexnet train` on CUDA
with the device pipeline and with fp16 + GradScaler (`alexnet bench gpu` runs these first).

Run on a GPU machine with: python -m pytest tests/test_gpu.py -m gpu -q
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from alexnet.checkpoint import load_checkpoint
from alexnet.cli import main
from alexnet.data import PreparedSet, make_loader
from alexnet.data.device import make_device_loader
from alexnet.data.prepare import prepare
from alexnet.data.synthetic import make_shapes
from alexnet.model import build_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

SIZE, CROP = 96, 88


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu")
    make_shapes(str(root / "src"), classes=4, per_class=6, size=SIZE, seed=0)
    prepare(str(root / "src"), str(root / "set"), workers=2, val_fraction=0.25, size=SIZE)
    return PreparedSet(str(root / "set"))


def _step(model, opt, x, y, amp):
    with torch.autocast("cuda", dtype=amp, enabled=amp is not None):
        loss = F.cross_entropy(model(x).float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def test_fast_training_step_matches_fp32():
    """train --fast's step (alexnet/training/step.py: bf16 autocast, channels_last, compiled forward/backward,
    compiled PaperSGD): the same loss and update as the eager fp32 step, loosely; one compilation
    across an lr drop."""
    from alexnet.training.optim import PaperSGD, paper_update
    from alexnet.training.step import Stepper

    torch._dynamo.reset()
    torch.manual_seed(0)
    ref = build_model("alexnet", num_classes=10, init="kaiming", dropout=0.0).cuda()
    fast = build_model("alexnet", num_classes=10, init="kaiming", dropout=0.0).cuda()
    fast.load_state_dict(ref.state_dict())
    fast = fast.to(memory_format=torch.channels_last)
    opt_ref = PaperSGD(ref.parameters(), lr=0.01)
    opt_fast = PaperSGD(fast.parameters(), lr=0.01)
    stepper = Stepper(fast, opt_fast, autocast_dtype=torch.bfloat16, channels_last=True, backend="inductor")
    x = torch.randn(16, 3, 227, 227, device="cuda")
    y = torch.randint(0, 10, (16,), device="cuda")
    for i in range(3):
        for opt in (opt_ref, opt_fast):
            opt.param_groups[0]["lr"] = 0.01 if i < 2 else 0.001
        l_ref = _step(ref, opt_ref, x, y, None)
        l_fast, row = stepper(x, y)
        assert torch.isfinite(l_fast) and abs(l_fast.item() - l_ref.item()) < 0.05 * max(1.0, l_ref.item())
        assert row[0].item() == 16
    for (name, a), b in zip(ref.named_parameters(), fast.parameters()):
        cos = F.cosine_similarity(a.flatten(), b.flatten(), dim=0)
        assert cos > 0.99, name
    cache = torch._dynamo.eval_frame._debug_get_cache_entry_list
    assert len(cache(Stepper._forward.__code__)) == 1 and len(cache(paper_update.__code__)) == 1


@pytest.mark.parametrize("decode", ["host", "device"])
def test_device_loader_on_cuda_equals_cpu_loader(prepared, decode):
    kw = dict(train=True, batch_size=4, seed=3, crop=CROP)
    ref = make_loader(prepared, "train", workers=0, **kw)
    dev = make_device_loader(prepared, "train", workers=2, device="cuda", decode=decode, channels_last=True, **kw)
    ref.set_epoch(1)
    dev.set_epoch(1)
    batches = list(zip(ref, dev))
    assert len(batches) == len(ref) > 0
    for (xa, ya), (xb, yb) in batches:
        assert xb.is_cuda and yb.is_cuda and xb.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(ya, yb.cpu())
        diff = (xa - xb.cpu()).abs()
        if decode == "host":
            assert diff.max() < 1e-3  # same pixels; float arithmetic on another device
        else:
            assert diff.mean() < 2.0 and diff.max() < 64  # nvJPEG's IDCT differs from libjpeg's slightly


def test_cuda_graph_inference_equals_eager():
    from alexnet.bench.infer import eager_forward, graphed

    torch.manual_seed(0)
    model = build_model("alexnet", init="kaiming").cuda().eval()
    x = torch.randn(8, 3, 227, 227, device="cuda")
    eager = eager_forward(model, device=torch.device("cuda"))(x)
    g = graphed(model, torch.empty_like(x))
    assert torch.allclose(g(x), eager, rtol=1e-4, atol=1e-4)
    x2 = torch.randn_like(x)  # a new input through the same graph
    assert torch.allclose(g(x2).clone(), eager_forward(model, device=torch.device("cuda"))(x2), rtol=1e-4, atol=1e-4)
    cl = model.to(memory_format=torch.channels_last)
    xc = x.contiguous(memory_format=torch.channels_last)
    gb = graphed(cl, xc, amp=torch.bfloat16)
    eb = eager_forward(cl, device=torch.device("cuda"), amp=torch.bfloat16)(xc)
    assert torch.allclose(gb(xc).float(), eb.float(), rtol=2e-2, atol=2e-2)


def test_nvjpeg_decode_leaves_memory_the_training_stream_still_reads():
    """torchvision's decoder writes from a private stream that does not wait for the caller's: memory
    freed while kernels queued on the training stream still read it must not reach the decoder.
    Each round queues a long kernel, then one sum per image-sized tensor, frees the tensors and
    decodes a batch the size of those tensors; every sum must still see its tensor's values."""
    from torchvision.io import encode_jpeg

    from alexnet.data.device import DeviceAugment

    torch.manual_seed(0)
    images = [torch.randint(0, 256, (3, SIZE, SIZE), dtype=torch.uint8) for _ in range(8)]
    parts = [encode_jpeg(x).view(torch.uint8) for x in images]
    offsets = torch.tensor([0] + [len(p) for p in parts]).cumsum(0)
    data = torch.cat(parts)
    augment = DeviceAugment({}, device="cuda", pca="off", normalize="channel")
    for _ in range(20):
        held = [torch.full((3, SIZE, SIZE), i + 1, dtype=torch.uint8, device="cuda") for i in range(8)]
        torch.cuda.synchronize()
        torch.cuda._sleep(20_000_000)  # the sums below wait behind this on the training stream
        sums = [x.sum(dtype=torch.int64) for x in held]
        del held  # freed on the training stream while its sums are still queued
        decoded = augment.decode((data, offsets))
        torch.cuda.synchronize()
        assert [int(t) for t in sums] == [(i + 1) * 3 * SIZE * SIZE for i in range(8)]
        assert decoded.shape == (8, 3, SIZE, SIZE)


def _json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_bench_commands_on_cuda(prepared, capsys):
    m = _json(capsys, ["bench", "model", "--device", "cuda", "--fast", "--batch", "8", "--warmup", "2",
                       "--repeats", "2", "--json"])  # fmt: skip
    assert m["speedup_vs_torchvision_bf16"] > 0 and 0 < m["fraction_of_matmul"] < 1.5 and m["paper_recipe_hours"] > 0
    p = _json(capsys, ["bench", "pipeline", "--device", "cuda", "--data", prepared.root, "--crop", str(CROP), "--batch",
                       "4", "--steps", "2", "--repeats", "1", "--workers", "2", "--json"])  # fmt: skip
    assert p["default_path"] == "device" and set(p["ratios"]) == {"device", "host", "nvjpeg"}
    i = _json(capsys, ["bench", "infer", "--device", "cuda", "--fast", "--batch", "16", "--repeats", "2",
                       "--latency-repeats", "3", "--json"])  # fmt: skip
    assert i["config"]["graphs"] and i["ours_latency_ms"] > 0 and i["throughput_ratio_vs_bf16_cl"] > 0


# ---------------------------------------------------------------- training on CUDA: pipeline, fp16

TRAIN = ["data.batch_size=6", "data.workers=2", f"data.crop={CROP}", "model.init=kaiming", "data.normalize=channel",
         "train.stall_steps=0", "train.log_every=1", "train.device=cuda", "train.epochs=1"]  # fmt: skip


def _train(prepared, run, *args):
    sets = [a for kv in TRAIN for a in ("--set", kv)]
    assert main(["train", prepared.root, "--out", str(run), *sets, "--progress", "off", *args]) == 0
    return load_checkpoint(run / "checkpoints" / "last.pt")


def test_train_device_pipeline_on_cuda_follows_the_host_run(prepared, tmp_path):
    """data.pipeline=auto is the device path on CUDA; its run stays within float rounding of the
    host-pipeline run (cuDNN and the GPU's augmentation arithmetic round differently)."""
    host = _train(prepared, tmp_path / "host", "--set", "data.pipeline=host")
    dev = _train(prepared, tmp_path / "dev")
    assert dev["config"]["data"]["pipeline"] == "auto" and host["step"] == dev["step"] > 0
    for key, a in host["model"].items():
        b = dev["model"][key]
        assert torch.linalg.vector_norm((a - b).float()) <= 1e-3 * torch.linalg.vector_norm(a.float()) + 1e-6, key


def test_fp16_scaler_on_cuda_is_checkpointed_and_resumed(prepared, tmp_path):
    run = tmp_path / "fp16"
    ckpt = _train(prepared, run, "--amp", "fp16", "--set", "train.max_steps=2")
    assert ckpt["config"]["train"]["amp"] == "fp16" and ckpt["scaler"]["scale"] > 0
    path = run / "checkpoints" / "last.pt"
    raw = torch.load(path, map_location="cpu", weights_only=True)
    raw["scaler"]["scale"] = 1024.0  # a scale no fresh GradScaler starts from (65536)
    torch.save(raw, path)
    resumed = _train(prepared, run, "--resume", "--set", "train.max_steps=3")
    assert resumed["step"] == 3 and resumed["scaler"]["scale"] in (512.0, 1024.0)  # continued, not restarted
    assert all(torch.isfinite(v).all() for v in resumed["model"].values() if v.is_floating_point())
