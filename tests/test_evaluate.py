"""The test protocol: top-k against a naive loop, 10 crops against hand-made crops, ensembles,
class checks, the CLI, and DDP (2 gloo processes) against one process."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from alexnet.checkpoint import save_checkpoint
from alexnet.cli import main
from alexnet.errors import UserError
from alexnet.evaluation import (
    average_probabilities,
    evaluate_checkpoints,
    format_table,
    is_imagenet,
    topk_correct,  # fmt: skip
)
from alexnet.model import AlexNet

NUM_CLASSES = 3


def make_checkpoint(path, prepared, seed: int, *, lists: bool = True, **overrides) -> str:
    """A freshly initialised small AlexNet saved as a checkpoint of the prepared set's classes.

    lists: statistics as lists (the contract's form) or as tensors (faster to load)."""
    torch.manual_seed(seed)
    model = AlexNet("paper", num_classes=prepared.num_classes, init="kaiming")
    with torch.no_grad():  # moderate logits (kaiming on 0-255 inputs saturates the softmax)
        model.classifier[-1].weight.mul_(0.05)
    state = {
        "model": model.state_dict(), "model_name": "alexnet", "model_kwargs": {"num_classes": prepared.num_classes},
        "classes": {"ids": list(prepared.class_ids), "names": list(prepared.class_names)},
        "stats": {k: np.asarray(v).tolist() if lists else torch.from_numpy(np.asarray(v)) for k, v in prepared.stats.items()},
        "preprocess": {"crop": 227, "normalize": "mean_image"}, "config": {},
    }  # fmt: skip
    state.update(overrides)
    save_checkpoint(path, state)
    return str(path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from alexnet.data import PreparedSet
    from alexnet.data.prepare import prepare
    from alexnet.data.synthetic import make_shapes

    root = tmp_path_factory.mktemp("eval")
    make_shapes(root / "src", classes=NUM_CLASSES, per_class=2, val_per_class=1, size=64)  # 3 val images: odd
    prepare(str(root / "src"), str(root / "prep"), workers=1)
    prepared = PreparedSet(root / "prep")
    a = make_checkpoint(root / "a.pt", prepared, seed=1)
    b = make_checkpoint(root / "b.pt", prepared, seed=2, lists=False)
    single = evaluate_checkpoints([a], prepared, "val", crops=1, batch_size=2, workers=0, device="cpu")
    return {"root": root, "prepared": prepared, "a": a, "b": b, "single": single}


# ---------------------------------------------------------------- top-k


@pytest.mark.parametrize("num_classes", [1, 4, 10])
def test_topk_correct_matches_naive_loop(num_classes):
    g = torch.Generator().manual_seed(num_classes)
    scores = torch.randn(40, num_classes, generator=g)
    target = torch.randint(0, num_classes, (40,), generator=g)
    ks = (1, 2, 5)
    got = topk_correct(scores, target, ks)
    for k, hits in zip(ks, got):
        for i in range(40):
            order = sorted(range(num_classes), key=lambda c: -scores[i, c].item())
            assert bool(hits[i]) == (target[i].item() in order[:k])


# ---------------------------------------------------------------- 10 crops and ensembles


def _hand_crops(image_u8: torch.Tensor, mean_image: np.ndarray, crop: int) -> list[torch.Tensor]:
    """The paper's 10 crops by hand: corners TL, TR, BL, BR, centre, then their mirrors."""
    x = image_u8.float() - torch.from_numpy(mean_image).permute(2, 0, 1)
    s = x.shape[-1]
    e, c = s - crop, (s - crop) // 2
    views = [x[:, y : y + crop, z : z + crop] for y, z in ((0, 0), (0, e), (e, 0), (e, e), (c, c))]
    return views + [v.flip(-1) for v in views]


def test_ten_crops_equal_mean_of_ten_single_crop_passes(setup):
    from alexnet.checkpoint import load_checkpoint, model_from_checkpoint
    from alexnet.data import PackedDataset

    prepared = setup["prepared"]
    model = model_from_checkpoint(load_checkpoint(setup["b"]))
    raw = PackedDataset(prepared, "val")
    labels = torch.as_tensor(raw.labels)
    with torch.no_grad():  # each crop is its own pass (batched per image: rows are independent)
        hand = torch.stack([torch.softmax(model(torch.stack(_hand_crops(raw.image(i), prepared.stats["mean_image"], 227))), 1).mean(0)
                            for i in range(len(raw))])  # fmt: skip
    result = evaluate_checkpoints([setup["b"]], prepared, "val", crops=10, batch_size=4, workers=0, device="cpu")
    assert result["n"] == len(raw) == 3 and result["crops"] == 10
    assert result["top1_error"] == pytest.approx(1 - (hand.argmax(1) == labels).float().mean().item())
    nll = -torch.log(hand[torch.arange(len(raw)), labels]).mean().item()
    assert result["loss"] == pytest.approx(nll, rel=1e-4)

    # the 10-crop batch the loader builds, averaged by average_probabilities, equals the hand mean
    from alexnet.data import EvalTransform

    transform = EvalTransform(stats=prepared.stats, crop=227, crops=10)
    images = torch.stack([transform(raw.image(i)) for i in (0, 2)])  # (2, 10, 3, 227, 227)
    got, _ = average_probabilities([model], images)
    torch.testing.assert_close(got, hand[[0, 2]], rtol=1e-4, atol=1e-6)


def test_ensemble_of_a_model_with_itself_equals_the_model(setup):
    prepared = setup["prepared"]
    one = setup["single"]
    two = evaluate_checkpoints(
        [setup["a"], setup["a"]], prepared, "val", crops=1, batch_size=2, workers=0, device="cpu"
    )
    for key in ("n", "top1_error", "top5_error"):
        assert two[key] == one[key]
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-6)
    assert two["per_class_top1_error"] == one["per_class_top1_error"]
    assert len(two["per_model"]) == 2 and two["per_model"][0]["top1_error"] == one["top1_error"]


@pytest.fixture(scope="module")
def cli_json(setup, tmp_path_factory):
    """`alexnet evaluate A B --json --out FILE` run once: (exit status, stdout document, file)."""
    out = tmp_path_factory.mktemp("cli") / "eval.json"
    args = ["evaluate", setup["a"], setup["b"], "--data", setup["prepared"].root, "--workers", "0",
            "--device", "cpu", "--crops", "1", "--json", "--out", str(out)]  # fmt: skip
    return args, out


def test_ensemble_averages_softmax_over_nets(setup, cli_json, capsys):
    from alexnet.checkpoint import load_checkpoint, model_from_checkpoint
    from alexnet.data import make_loader

    args, out = cli_json
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == result
    prepared = setup["prepared"]
    models = [model_from_checkpoint(load_checkpoint(p)) for p in (setup["a"], setup["b"])]
    images, labels = next(iter(make_loader(prepared, "val", train=False, batch_size=16, workers=0)))
    with torch.no_grad():
        p0, p1 = torch.softmax(models[0](images), 1), torch.softmax(models[1](images), 1)
    probs = (p0 + p1) / 2
    assert result["top1_error"] == pytest.approx(1 - (probs.argmax(1) == labels).float().mean().item())
    nll = -torch.log(probs[torch.arange(len(labels)), labels]).mean().item()
    assert result["loss"] == pytest.approx(nll, rel=1e-4)
    assert result["per_model"][1]["top1_error"] == pytest.approx(1 - (p1.argmax(1) == labels).float().mean().item())
    assert result["per_model"][0]["top1_error"] == setup["single"]["top1_error"]
    assert [r["model"] for r in result["per_model"]] == [setup["a"], setup["b"]]

    # the --json document's keys, and the table made from it
    assert {"models", "crops", "top1_error", "top5_error", "loss", "per_model", "per_class_top1_error"} <= set(result)
    assert result["models"] == [setup["a"], setup["b"]] and result["crops"] == 1 and result["n"] == 3
    assert set(result["per_class_top1_error"]) == set(prepared.class_ids)
    # per-class errors are consistent with the overall error (1 image per class)
    assert np.mean(list(result["per_class_top1_error"].values())) == pytest.approx(result["top1_error"])
    table = format_table(result, prepared.class_ids)
    assert "ensemble of 2" in table and "top-1 err" in table and "centre crop" in table
    rows = [line for line in table.splitlines() if line.startswith((setup["a"], setup["b"], "ensemble"))]
    assert len(rows) == 3 and all(line.endswith("centre crop") for line in rows)  # every row names its crops
    assert "paper" not in table  # the paper's ImageNet numbers only beside ImageNet results


# ---------------------------------------------------------------- checks and the CLI


def test_class_mismatch_is_a_one_line_error_naming_both(setup, capsys):
    prepared = setup["prepared"]
    other = make_checkpoint(
        setup["root"] / "other.pt", prepared, seed=3, classes={"ids": ["x", "y", "z"], "names": ["x", "y", "z"]}
    )
    with pytest.raises(UserError) as err:
        evaluate_checkpoints([other], prepared, "val", workers=0, device="cpu")
    message = str(err.value)
    assert other in message and prepared.root in message and "\n" not in message
    assert main(["evaluate", other, "--data", prepared.root, "--workers", "0"]) == 1
    assert capsys.readouterr().err.strip().count("\n") == 0


def test_ensemble_with_different_preprocessing_is_refused(setup):
    prepared = setup["prepared"]
    c = make_checkpoint(setup["root"] / "c.pt", prepared, seed=4, preprocess={"crop": 227, "normalize": "channel"})
    with pytest.raises(UserError, match="preprocessing"):
        evaluate_checkpoints([setup["a"], c], prepared, "val", workers=0, device="cpu")


def test_checkpoint_of_other_sized_images_is_a_one_line_error(setup, capsys):
    """A net whose mean image is 72 px (`prepare --size 72`) on 256-px data: refused, not a traceback."""
    prepared = setup["prepared"]
    stats = {k: np.asarray(v) for k, v in prepared.stats.items()}
    stats["mean_image"] = stats["mean_image"][:72, :72]
    small = make_checkpoint(setup["root"] / "small.pt", prepared, seed=5, stats={k: v.tolist() for k, v in stats.items()},
                            preprocess={"crop": 67, "normalize": "mean_image"})  # fmt: skip
    for args in (
        ["evaluate", small, "--data", prepared.root],
        ["features", small, "--data", prepared.root, "--out", str(setup["root"] / "f.npz")],
    ):
        assert main(args + ["--workers", "0", "--device", "cpu"]) == 1
        err = capsys.readouterr().err.strip()
        assert "72-px mean image" in err and "--size 72" in err and "\n" not in err


def test_cli_evaluate_table_and_bad_split(setup, capsys):
    prepared = setup["prepared"]
    assert main(["evaluate", setup["b"], "--data", prepared.root, "--workers", "0", "--device", "cpu"]) == 0
    table = capsys.readouterr().out
    assert "top-1 err" in table and "ensemble" not in table and "3 images" in table
    # the default is the paper's test protocol, 10 crops, and the row says so
    assert "3 images, 10 crops" in table
    assert next(line for line in table.splitlines() if line.startswith(setup["b"])).endswith("10 crops")
    # 3 classes: every label is among the top five, so top-5 error is not applicable (not "0.00%")
    row = next(line for line in table.splitlines() if line.startswith(setup["b"]))
    assert " n/a " in row and "(top-5 error not applicable: 3 classes" in table
    single = setup["single"]
    assert single["top5_error"] is None and single["per_model"][0]["top5_error"] is None
    assert single["top5_note"] == "not applicable: 3 classes (top-5 needs 6 or more)"
    assert main(["evaluate", setup["a"], "--data", prepared.root, "--split", "nope", "--workers", "0"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("alexnet evaluate: error:") and "nope" in err and "\n" not in err


@pytest.mark.parametrize("command", ["evaluate", "predict", "features"])
def test_bad_device_is_a_one_line_error(setup, command, capsys, tmp_path):
    prepared = setup["prepared"]
    args = {
        "evaluate": ["evaluate", setup["a"], "--data", prepared.root],
        "predict": ["predict", setup["a"], str(tmp_path)],
        "features": ["features", setup["a"], "--data", prepared.root, "--out", str(tmp_path / "f.npz")],
    }[command]
    assert main(args + ["--device", "tpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"alexnet {command}: error: --device 'tpu'") and "cpu" in err and "\n" not in err


def test_paper_rows_only_for_imagenet():
    from alexnet.artifact import imagenet_classes

    ids = [w for w, _ in imagenet_classes()]
    assert is_imagenet(ids) and not is_imagenet(ids[:3])
    result = {
        "split": "val",
        "data": "d",
        "n": 1,
        "crops": 10,
        "crop": 227,
        "normalize": "mean_image",
        "top1_error": 0.5,
        "top5_error": 0.1,
        "loss": 1.0,
        "per_model": [{"model": "r/checkpoints/best.pt", "top1_error": 0.5, "top5_error": 0.1, "loss": 1.0}],
    }
    table = format_table(result, ids)
    assert "40.70%" in table and "r/best.pt" in table and "10 crops" in table
    assert next(line for line in table.splitlines() if line.startswith("r/best.pt")).endswith("10 crops")


# ---------------------------------------------------------------- distributed


def _ddp_worker(rank: int, world: int, init_file: str, ckpts: list, data: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        result = evaluate_checkpoints(ckpts, data, "val", crops=1, batch_size=2, workers=0, device="cpu")
    finally:
        dist.destroy_process_group()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)


def test_distributed_two_gloo_processes_equal_one_process(setup, tmp_path):
    prepared, ckpts, single = setup["prepared"], [setup["a"]], setup["single"]
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), ckpts, prepared.root, str(tmp_path)), nprocs=2)
    for rank in range(2):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["n"] == single["n"] == 3  # 2 + 1: unpadded shards count every image once
        for key in ("top1_error", "top5_error"):
            assert got[key] == pytest.approx(single[key])
        assert got["loss"] == pytest.approx(single["loss"], rel=1e-5)
        for a, b in zip(got["per_model"], single["per_model"]):
            assert a["top1_error"] == pytest.approx(b["top1_error"])
        for cid, err in single["per_class_top1_error"].items():
            assert math.isclose(got["per_class_top1_error"][cid], err, abs_tol=1e-9)


def test_cli_progress_lines_on_stderr(setup, capsys):
    """--progress lines: a closing line with the count on stderr (stdout keeps the JSON alone); off: none."""
    prepared = setup["prepared"]
    base = [
        "evaluate",
        setup["a"],
        "--data",
        prepared.root,
        "--workers",
        "0",
        "--device",
        "cpu",
        "--crops",
        "1",
        "--json",
    ]
    assert main(base + ["--progress", "lines"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["n"] == 3
    assert "evaluate: 3/3 img (100.0%)" in captured.err
    assert main(base + ["--progress", "off"]) == 0
    assert capsys.readouterr().err == ""


def test_api_evaluate_takes_every_documented_argument(setup, capsys):
    """alexnet.evaluate called as the README shows, with each documented argument; its errors are
    ValueError / FileNotFoundError naming the argument, not a command-line flag."""
    import alexnet

    root = setup["prepared"].root
    done = []
    result = alexnet.evaluate(
        [setup["a"]], root, "val", 1, batch_size=2, workers=0, device="cpu", progress=done.append
    )  # positional split and crops, a callable progress
    assert result["top1_error"] == setup["single"]["top1_error"] and sum(done) == result["n"] == 3
    for mode in ("off", "lines"):  # the command's --progress values
        again = alexnet.evaluate(setup["a"], root, crops=1, workers=0, device="cpu", progress=mode)  # one path
        assert again["top1_error"] == result["top1_error"]
    assert "evaluate:" in capsys.readouterr().err  # "lines" reported on stderr
    for bad, words in (
        (dict(crops=3), "crops=3"),
        (dict(batch_size=0), "batch_size=0"),
        (dict(progress=5), "progress=5"),
    ):
        with pytest.raises(ValueError, match=words) as err:
            alexnet.evaluate([setup["a"]], root, **{"workers": 0, "device": "cpu", **bad})
        assert "--" not in str(err.value)
    with pytest.raises(FileNotFoundError):
        alexnet.evaluate([str(setup["root"] / "missing.pt")], root, workers=0, device="cpu")
    with pytest.raises(FileNotFoundError):
        alexnet.evaluate([setup["a"]], str(setup["root"] / "no-data"), workers=0, device="cpu")


def test_evaluate_out_is_not_overwritten_without_force(setup, tmp_path, capsys):
    out = tmp_path / "eval.json"
    out.write_text("keep")
    args = [
        "evaluate",
        setup["a"],
        "--data",
        setup["prepared"].root,
        "--workers",
        "0",
        "--crops",
        "1",
        "--out",
        str(out),
    ]
    assert main(args + ["--quiet"]) == 2 and out.read_text() == "keep"  # refused before evaluating
    assert "--force" in capsys.readouterr().err
    assert main(args + ["--force", "--quiet"]) == 0 and json.loads(out.read_text())["n"] == 3


@pytest.mark.parametrize("crops", [1, 10])
def test_progress_is_told_every_batch(setup, capsys, monkeypatch, crops):
    """Never silent for longer than a batch: the callable hears each batch (3 images in batches of 2
    -> 2, 1), and `--progress lines` with the line interval at 0 prints a line per batch, counting
    up, then the closing line (the interval is alexnet.progress's, 30 s off a terminal)."""
    from alexnet.progress import Progress

    root = setup["prepared"].root
    done = []
    evaluate_checkpoints([setup["a"]], root, "val", crops, batch_size=2, workers=0, device="cpu", progress=done.append)
    assert done == [2, 1]
    monkeypatch.setitem(Progress.__init__.__kwdefaults__, "every", 0.0)
    args = ["evaluate", setup["a"], "--data", root, "--workers", "0", "--device", "cpu", "--crops", str(crops)]
    assert main(args + ["--batch-size", "1", "--progress", "lines", "--json"]) == 0
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("evaluate: ")]
    assert [x.split()[1] for x in lines] == ["1/3", "2/3", "3/3", "3/3"]  # a line per batch, then the last
