"""The device-side data path equals the per-image loader; `bench pipeline` and `bench infer` run on
CPU at a tiny size and print consistent JSON."""

from __future__ import annotations

import json
import statistics

import pytest
import torch

from alexnet.cli import main
from alexnet.data import PreparedSet, make_loader
from alexnet.data.device import DeviceAugment, make_device_loader, to_device_batches
from alexnet.data.prepare import prepare
from alexnet.data.synthetic import make_shapes
from alexnet.errors import UserError

SIZE, CROP = 80, 72  # CROP: the paper net's smallest workable input is 67


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("speed")
    make_shapes(str(root / "src"), classes=3, per_class=4, size=SIZE, seed=0)
    prepare(str(root / "src"), str(root / "set"), workers=1, val_fraction=0.25, size=SIZE)
    prepare(str(root / "src"), str(root / "raw"), workers=1, val_fraction=0.25, size=SIZE, fmt="raw")
    return PreparedSet(str(root / "set"))


def _epoch(loader, epoch):
    loader.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


@pytest.mark.parametrize("pca,normalize,decode,workers", [
    ("paper", "mean_image", "host", 0),
    ("convnet2", "channel", "device", 0),
    ("paper", "mean_image", "device", 1),
    ("off", "mean_image", "host", 1),
])  # fmt: skip
def test_device_loader_equals_per_image_loader(prepared, pca, normalize, decode, workers):
    kw = dict(train=True, batch_size=3, seed=5, crop=CROP, pca=pca, normalize=normalize)
    ref = _epoch(make_loader(prepared, "train", workers=0, **kw), 2)
    dev = _epoch(make_device_loader(prepared, "train", workers=workers, device="cpu", decode=decode, **kw), 2)
    assert len(ref) == len(dev) == prepared.split_size("train") // 3
    for (xa, ya), (xb, yb) in zip(ref, dev):
        assert xb.shape == (3, 3, CROP, CROP) and xb.dtype == torch.float32
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    other = _epoch(make_device_loader(prepared, "train", workers=0, device="cpu", **kw), 3)
    assert not all(torch.equal(a, b) for (a, _), (b, _) in zip(dev, other))  # a new epoch draws anew


def test_device_loader_eval_raw_and_resume(prepared):
    raw = PreparedSet(prepared.root.replace("/set", "/raw"))
    for crops in (1, 10):
        kw = dict(train=False, batch_size=2, crop=CROP, crops=crops)
        ref = _epoch(make_loader(raw, "val", workers=0, **kw), 0)
        dev = _epoch(make_device_loader(raw, "val", workers=0, device="cpu", **kw), 0)
        assert len(ref) == len(dev) > 0
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(ref, dev))
    loader = make_device_loader(prepared, "train", train=True, batch_size=2, workers=0, device="cpu", crop=CROP, seed=1)
    full = _epoch(loader, 4)
    tail = list(loader.iter_from(2))
    assert len(tail) == len(full) - 2 and all(torch.equal(a[0], b[0]) for a, b in zip(full[2:], tail))
    assert not hasattr(loader, "sampler") and len(loader) == len(full)
    with pytest.raises(UserError, match="decode=device needs a JPEG"):
        make_device_loader(raw, "train", train=True, batch_size=2, device="cpu", crop=CROP, decode="device")


def test_to_device_batches_channels_last(prepared):
    kw = dict(train=True, batch_size=2, seed=0, crop=CROP)
    ref = make_loader(prepared, "train", workers=0, **kw)
    host = make_device_loader(prepared, "train", workers=0, device="cpu", **kw).host
    got = list(to_device_batches(host, "cpu", prepared.stats, CROP, "paper", "mean_image", True))
    for (xa, ya), (xb, yb) in zip(ref, got):
        assert xb.is_contiguous(memory_format=torch.channels_last) and torch.equal(xa, xb) and torch.equal(ya, yb)
    augment = DeviceAugment(prepared.stats, device="cpu", crop=CROP)
    images, labels, draws = next(iter(host))
    assert (
        images.dtype == torch.uint8
        and images.shape == (2, 3, SIZE, SIZE)
        and set(draws) == {"y0", "x0", "flip", "alpha"}
    )
    assert augment((images, labels, draws))[0].shape == (2, 3, CROP, CROP)


def _json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_bench_pipeline_cpu_json(prepared, capsys):
    out = _json(capsys, ["bench", "pipeline", "--data", prepared.root, "--batch", "2", "--steps", "1", "--crop", str(CROP),
                         "--workers", "0", "--warmup", "1", "--repeats", "2", "--paths", "host,device,nvjpeg", "--json"])  # fmt: skip
    assert set(out["ratios"]) == {"host", "device", "nvjpeg"} and out["drain_steps"] == 0
    for path, ratio in out["ratios"].items():
        times = out["round_times_s"][path]
        assert len(times) == 2 and out["img_s"][path] == pytest.approx(2 * 1 / (sum(times) / 2))  # median of two
        assert ratio == pytest.approx(out["img_s"][path] / out["img_s"]["synthetic"])
    assert out["ratio"] == out["ratios"][out["default_path"]] == max(out["ratios"].values())
    assert out["env"]["torch"] and out["config"]["optimizer"] == "paper"


def _assert_pipeline_figures(out: dict, *, batch: int, steps: int) -> None:
    """The JSON's ratio is the real path's img/s over the synthetic ceiling's, each from its own round times."""
    for path, times in out["round_times_s"].items():
        assert out["img_s"][path] == pytest.approx(batch * steps / statistics.median(times))
    for path, ratio in out["ratios"].items():
        assert ratio == pytest.approx(out["img_s"][path] / out["img_s"]["synthetic"])
    assert out["ratio"] == out["ratios"][out["default_path"]]


def test_bench_pipeline_generates_a_set(capsys):
    out = _json(capsys, ["bench", "pipeline", "--n", "6", "--size", str(SIZE), "--crop", str(CROP), "--batch", "2",
                         "--steps", "1", "--workers", "1", "--warmup", "0", "--repeats", "1", "--paths", "device", "--json"])  # fmt: skip
    assert out["data"].startswith("generated: 6") and out["drain_steps"] == 2
    _assert_pipeline_figures(out, batch=2, steps=1)


def test_bench_pipeline_errors(prepared, capsys):
    assert main(["bench", "pipeline", "--data", prepared.root, "--crop", "40"]) == 2
    assert "at least 67" in capsys.readouterr().err
    assert (
        main(["bench", "pipeline", "--data", prepared.root, "--crop", str(CROP), "--batch", "2", "--paths", "gpu"]) == 2
    )
    assert "--paths 'gpu'" in capsys.readouterr().err


def test_bench_infer_cpu_json(capsys):
    out = _json(capsys, ["bench", "infer", "--batch", "2", "--warmup", "1", "--repeats", "2", "--latency-repeats", "2",
                         "--json"])  # fmt: skip
    t = out["times_s"]
    assert len(t["throughput"]["ours"]) == 2 and len(t["latency"]["torchvision"]) == 2
    assert out["throughput_ratio"] == pytest.approx(out["ours_img_s"] / out["torchvision_img_s"])
    assert out["latency_ratio"] == pytest.approx(out["ours_latency_ms"] / out["torchvision_latency_ms"])
    assert out["ours_img_s"] == pytest.approx(2 / (sum(t["throughput"]["ours"]) / 2))
    assert out["batch"] == 2 and out["device"] == "cpu" and out["env"]["torchvision"]
    assert out["load_threads"] == 0


@pytest.mark.parametrize(
    "args",
    [
        ["infer", "--batch", "0"],
        ["pipeline", "--batch", "0"],
        ["pipeline", "--steps", "0"],
        ["pipeline", "--n", "0"],
        ["pipeline", "--crop", "60"],
        ["pipeline", "--size", "64", "--crop", "72"],
    ],
)
def test_bench_zero_or_unfit_sizes_are_one_line_errors(capsys, args, tmp_path):
    """0 is not "unset": it is refused at once (it used to run the default size), before any set is generated."""
    tempfile_dir = tmp_path / "tmp"
    tempfile_dir.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TMPDIR", str(tempfile_dir))
        import tempfile

        mp.setattr(tempfile, "tempdir", None)
        assert main(["bench", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("alexnet bench: error: --"), err
    assert list(tempfile_dir.iterdir()) == []  # nothing generated


def test_bench_infer_fast_on_cpu_is_channels_last_fp32(capsys):
    out = _json(capsys, ["bench", "infer", "--batch", "1", "--warmup", "0", "--repeats", "1", "--latency-repeats", "1",
                         "--fast", "--json"])  # fmt: skip
    assert out["config"] == {"amp": None, "channels_last": True, "graphs": False, "compile": False,
                             "cpu_inference_channels_last": True}  # fmt: skip
    assert out["latency_ratio"] == pytest.approx(out["ours_latency_ms"] / out["torchvision_latency_ms"])


@pytest.mark.parametrize("nchw", [False, True])
def test_bench_infer_default_is_the_nets_own_layout_and_nchw_turns_it_off(capsys, nchw):
    """Default: ours as the library runs it (the net's CPU channels_last switch on); --nchw: off.
    Both also time torchvision in channels_last, and each ratio is its two medians' quotient."""
    out = _json(capsys, ["bench", "infer", "--batch", "2", "--warmup", "0", "--repeats", "1", "--latency-repeats", "1",
                         *(["--nchw"] if nchw else []), "--json"])  # fmt: skip
    assert out["config"]["cpu_inference_channels_last"] is (not nchw) and out["config"]["channels_last"] is False
    assert out["throughput_ratio_vs_cl"] == pytest.approx(out["ours_img_s"] / out["torchvision_cl_img_s"])
    assert out["latency_ratio_vs_cl"] == pytest.approx(out["ours_latency_ms"] / out["torchvision_cl_latency_ms"])
    assert set(out["times_s"]["throughput"]) == {"ours", "torchvision", "torchvision_cl"}


def test_bench_infer_errors(capsys):
    assert main(["bench", "infer", "--graphs"]) == 2
    assert "CUDA graphs" in capsys.readouterr().err
    assert main(["bench", "infer", "--nchw", "--fast"]) == 2
    err = capsys.readouterr().err
    assert "--nchw" in err and err.count("\n") == 1
    assert main(["bench", "infer", "--load", "-2"]) == 2
    err = capsys.readouterr().err
    assert "--load -2" in err and err.count("\n") == 1
    if not torch.cuda.is_available():
        assert main(["bench", "infer", "--device", "cuda"]) == 2
        assert "CUDA is not available" in capsys.readouterr().err


def test_bench_pipeline_bf16_channels_last_on_cpu(prepared, capsys):
    """The CUDA training configuration's code path (autocast + channels_last + device path) on CPU."""
    out = _json(capsys, ["bench", "pipeline", "--data", prepared.root, "--batch", "2", "--steps", "1", "--crop", str(CROP),
                         "--workers", "0", "--warmup", "0", "--repeats", "1", "--paths", "device", "--amp", "bf16",
                         "--channels-last", "--json"])  # fmt: skip
    assert out["config"]["amp"] == "bf16" and out["config"]["channels_last"]
    _assert_pipeline_figures(out, batch=2, steps=1)


@pytest.mark.slow
def test_bench_commands_compile_on_cpu(prepared, capsys):
    """torch.compile through the paper net (custom LRN autograd.Function) in training and inference."""
    out = _json(capsys, ["bench", "pipeline", "--data", prepared.root, "--batch", "2", "--steps", "1", "--crop", str(CROP),
                         "--workers", "0", "--warmup", "1", "--repeats", "1", "--paths", "device", "--compile", "--json"])  # fmt: skip
    assert out["config"]["compile"]
    _assert_pipeline_figures(out, batch=2, steps=1)
    out = _json(capsys, ["bench", "infer", "--batch", "2", "--warmup", "1", "--repeats", "1", "--latency-repeats", "1",
                         "--compile", "--channels-last", "--json"])  # fmt: skip
    assert out["config"]["compile"]
    assert out["ours_img_s"] == pytest.approx(2 / out["times_s"]["throughput"]["ours"][0])
