"""The run report: figures and page from a tiny CPU training run, checked against independent
computations (evaluate_checkpoints, fc7 features + brute-force distances); robustness to partial
runs; rendering in headless Chromium."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet import config as cfg
from alexnet.checkpoint import resolve_checkpoint_path
from alexnet.cli import main
from alexnet.errors import UserError
from alexnet.report import analysis, figures, write_report

sys.path.insert(0, str(Path(__file__).parent))
from chromium import find_chromium, inspect_page  # noqa: E402 - the helper beside this file

FIGURES = {"curves.png", "conv1.png", "top5.png", "neighbours.png", "confusion.png"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A real run: 3 classes x 4 training + 3 validation images, one epoch of 2 steps on the CPU."""
    from alexnet.data.prepare import prepare
    from alexnet.data.synthetic import make_shapes
    from alexnet.training.config import TrainConfig
    from alexnet.training.loop import train

    root = tmp_path_factory.mktemp("report")
    make_shapes(root / "src", classes=3, per_class=4, val_per_class=3, seed=0)
    prepare(str(root / "src"), str(root / "prep"), workers=1)
    config = cfg.load_config(
        TrainConfig,
        None,
        [
            "data.batch_size=6",
            "data.workers=0",
            "train.epochs=1",
            "train.log_every=1",
            "model.init=kaiming",
            "data.normalize=channel",
            "train.stall_steps=0",
            "schedule.name=constant",
        ],
    )
    train(root / "prep", root / "run", config, progress="off")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(analysis, "MAX_TEN_CROP", 2)  # exercises the cap (and keeps the test fast)
        index = write_report(root / "run", device="cpu")  # the prepared directory: from the run's env.json
    return {"root": root, "run": root / "run", "data": root / "prep", "index": index}


def _not_blank(path) -> None:
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
    assert pixels.shape[0] > 50 and pixels.shape[1] > 50, path
    assert pixels.std() > 5, f"{path} is blank"
    packed = pixels.astype(np.int64) @ np.array([65536, 256, 1])
    assert len(np.unique(packed)) > 20, f"{path} has almost no colours"


def test_page_and_figures_from_a_tiny_run(tiny):
    index = tiny["index"]
    assert index == tiny["run"] / "report" / "index.html" and index.is_file()
    html = index.read_text()
    sources = set(re.findall(r'<img src="([^"]+)"', html))
    assert sources == FIGURES
    for name in sources:
        _not_blank(index.parent / name)
    for title in (
        "Training curves",
        "Evaluation",
        "Figure 3",
        "Figure 4 (left)",
        "Figure 4 (right)",
        "Confusion matrix",
        "Architecture",
        "Config and environment",
    ):
        assert title in html, title
    # nothing fetched from elsewhere: no URLs, no scripts
    assert not re.search(r"(src|href)=\"(https?:)?//", html) and "<script" not in html
    # 3 classes: every label is among the top five, so top-5 error is not applicable (not "0.00%")
    assert html.count("n/a (3 classes)") >= 3  # headline (centre, 10 crops) and the evaluation table
    env = json.loads((tiny["run"] / "env.json").read_text())
    for key in ("batch_global", "batch_per_process", "accumulate", "lr_effective"):  # how the batch was split
        assert re.search(rf"<t[dh]>{key}</t[dh]>\s*<td>{re.escape(str(env[key]))}</td>", html), key
    summary = json.loads((index.parent / "report.json").read_text())
    assert summary["ten"]["n"] == 2 and "10-crop evaluation uses 2 of the 9 val images" in html
    from alexnet.model import build_model

    kwargs = json.loads((tiny["run"] / "config.json").read_text())
    with torch.device("meta"):  # shapes only
        net = build_model("alexnet", num_classes=3, init=kwargs["model"]["init"])
    params = sum(p.numel() for p in net.parameters())
    assert f"{params:,}" in html  # the architecture table's total, counted here from the module
    from alexnet.data import PreparedSet

    for name in PreparedSet(tiny["data"]).class_names:  # the per-class table
        assert f"<td>{name}</td>" in html
    # no temporary directories left beside the report
    from alexnet.training.rundir import MARKER  # the run directory's own marker

    assert sorted(p.name for p in tiny["run"].iterdir() if p.name.startswith(".")) == [MARKER]


@pytest.fixture(scope="module")
def oracle(tiny):
    """The run's last checkpoint loaded once, with loaders over its data (centre crop)."""
    from alexnet.checkpoint import load_checkpoint, model_from_checkpoint
    from alexnet.data import make_loader

    state = load_checkpoint(tiny["run"])  # what a run directory means everywhere: best.pt, else last.pt
    loaders = {
        split: make_loader(
            tiny["data"],
            split,
            train=False,
            batch_size=4,
            workers=0,
            normalize=state["preprocess"]["normalize"],
            crop=state["preprocess"]["crop"],
        )
        for split in ("train", "val")
    }
    return {"model": model_from_checkpoint(state), "loaders": loaders}


def test_centre_crop_numbers_match_evaluate(tiny, oracle):
    from alexnet.evaluation import evaluate

    summary = json.loads((tiny["index"].parent / "report.json").read_text())
    assert summary["checkpoint"] == str(resolve_checkpoint_path(tiny["run"]))
    expect = evaluate(oracle["model"], oracle["loaders"]["val"])
    assert summary["centre"]["n"] == expect["n"] == 9
    for key in ("top1_error", "top5_error", "loss"):
        assert summary["centre"][key] == pytest.approx(expect[key], rel=1e-4, abs=1e-6), key


def test_neighbours_are_the_nearest_in_fc7(tiny, oracle):
    from alexnet.predict import extract_features

    summary = json.loads((tiny["index"].parent / "report.json").read_text())
    feats = {split: extract_features(oracle["model"], oracle["loaders"][split]) for split in ("train", "val")}
    assert len(summary["neighbours"]) == analysis.QUERY_IMAGES
    for row, label, hits in summary["neighbours"]:
        assert label == feats["val"]["labels"][row]
        d = np.linalg.norm(feats["train"]["features"].astype(np.float64) - feats["val"]["features"][row], axis=1)
        order = np.argsort(d, kind="stable")[: analysis.NEIGHBOURS]
        assert [h[0] for h in hits] == order.tolist()
        np.testing.assert_allclose([h[2] for h in hits], d[order], rtol=1e-3)
        assert [h[1] for h in hits] == feats["train"]["labels"][order].tolist()


def test_kernel_mosaic_scales_each_kernel():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(5, 3, 4, 4))
    w[4] = 0.3  # a flat kernel
    mosaic = figures.kernel_mosaic(w, cols=3, gap=1)
    assert mosaic.shape == (2 * 5 - 1, 3 * 5 - 1, 3)
    for i in range(4):
        r, c = divmod(i, 3)
        tile = mosaic[r * 5 : r * 5 + 4, c * 5 : c * 5 + 4]
        expect = ((w[i] - w[i].min()) / (w[i].max() - w[i].min())).transpose(1, 2, 0)
        np.testing.assert_allclose(tile, expect)
    np.testing.assert_allclose(mosaic[5:9, 5:9], 0.5)
    assert np.all(mosaic[4, :] == 1.0)  # the gap row is white


def test_figures_take_odd_class_names(tmp_path):
    """Names with $ (matplotlib's mathtext), markup and underscores; fewer than five classes."""
    names = ["a $5 bill", "<b>bold</b>", "snake_case_name_that_is_far_too_long_for_a_bar"]
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(3)]
    probs = rng.dirichlet(np.ones(3), size=3)
    figures.top5_panel(images, probs, [0, 1, 2], names, tmp_path / "top5.png")
    cm = figures.confusion_matrix([0, 1, 2, 2], [0, 2, 2, 1], 3)
    assert cm.tolist() == [[1, 0, 0], [0, 0, 1], [0, 1, 1]]
    figures.confusion(cm, names, tmp_path / "cm.png")
    figures.neighbours_panel([(images[0], names[0])], [[(images[1], names[1], 1.5, False)]], tmp_path / "nn.png")
    for name in ("top5.png", "cm.png", "nn.png"):
        _not_blank(tmp_path / name)


def test_lr_drops_and_epoch_length():
    steps = [
        {"step": s, "epoch": (s - 1) // 10 + 1, "lr": 0.01 if s <= 10 else 0.001, "loss": 1.0} for s in range(1, 21)
    ]
    epochs = [{"epoch": 1, "step": 10, "lr": 0.01}, {"epoch": 2, "step": 20, "lr": 0.001}]
    assert figures.lr_drops(steps, epochs, "step") == [10.0]
    assert figures.lr_drops(steps, epochs, None) == [10.0]
    assert figures.lr_drops(steps, [dict(e, lr_dropped=e["epoch"] == 1) for e in epochs], "plateau") == [10.0]
    assert figures.lr_drops(steps, epochs, "cosine") == []
    warmup = [{"step": s, "lr": 0.001 * s} for s in range(1, 11)]  # rising lr: no drop
    assert figures.lr_drops(warmup, [], "step") == []
    assert figures.steps_per_epoch(steps, epochs) == 10
    assert figures.steps_per_epoch(steps, []) == 10  # from the step records of epoch 1
    assert figures.steps_per_epoch(steps[:5], []) is None


def _hand_run(root, *, steps=(), epochs=(), config=None, env=None):
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps(config or {"model": {"name": "alexnet"}, "train": {"epochs": 3}}))
    (root / "env.json").write_text(json.dumps(env or {"device": "cpu", "started": "2024-01-01T00:00:00+0000"}))
    lines = [json.dumps({"kind": "step", **r}) for r in steps] + [json.dumps({"kind": "epoch", **r}) for r in epochs]
    (root / "log.jsonl").write_text("".join(line + "\n" for line in lines))
    return root


@pytest.mark.parametrize("logged", ["nothing", "steps", "epochs"])
def test_run_without_checkpoint_gets_curves_only(tmp_path, logged):
    steps = (
        [
            {
                "step": s,
                "epoch": 1,
                "loss": 2.3 - 0.1 * s,
                "lr": 0.01,
                "img_s": 50.0,
                "time": 1.7e9 + s,
                "top1_error": 0.9,
                "top5_error": 0.5,
            }
            for s in range(1, 6)
        ]
        if logged != "nothing"
        else []
    )
    epochs = (
        [
            {
                "epoch": 1,
                "step": 5,
                "lr": 0.01,
                "train_loss": 2.0,
                "train_top1_error": 0.8,
                "train_top5_error": 0.4,
                "val_loss": None,
                "val_top1_error": None,
                "val_top5_error": None,
                "seconds": 12.0,
            }
        ]
        if logged == "epochs"
        else []
    )
    run = _hand_run(
        tmp_path / "run",
        steps=steps,
        epochs=epochs,
        config={"model": {"name": "alexnet"}, "note": "<script>alert(1)</script> & co"},
    )
    with open(run / "log.jsonl", "a") as f:
        f.write('{"kind": "step", "ste')  # a line cut by a kill
    index = write_report(run, out=tmp_path / "out")
    html = index.read_text()
    assert "No checkpoint yet" in html and "unreadable line" in html
    assert set(re.findall(r'<img src="([^"]+)"', html)) == {"curves.png"}
    _not_blank(index.parent / "curves.png")
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in html


def test_report_is_replaced_atomically_and_guards_other_directories(tmp_path):
    run = _hand_run(tmp_path / "run")
    first = write_report(run)
    (first.parent / "stale.png").write_bytes(b"old")  # a figure an older report wrote (before markers)
    (first.parent / ".alexnet-output").unlink()
    second = write_report(run)
    assert second == first and not (second.parent / "stale.png").exists()
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == []
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "data.txt").write_text("keep")
    with pytest.raises(UserError, match="data.txt, which alexnet did not write"):
        write_report(run, out=precious)
    assert (precious / "data.txt").read_text() == "keep"


@pytest.mark.parametrize("device", ["bogus", "cuda", "mps"])
def test_bad_device_is_one_line(tmp_path, capsys, device):
    if device == "cuda" and torch.cuda.is_available() or device == "mps" and torch.backends.mps.is_available():
        pytest.skip(f"{device} is available here")
    run = _hand_run(tmp_path / "run")
    assert main(["report", str(run), "--device", device, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("alexnet report: error: --device"), err
    assert not (run / "report").exists()


def test_user_errors(tmp_path, tiny):
    with pytest.raises(UserError, match="no such run directory"):
        write_report(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a run directory"):
        write_report(tmp_path / "empty")
    # a checkpoint but no recorded data: --data is asked for
    run = _hand_run(tmp_path / "run", env={"device": "cpu"})
    (run / "checkpoints").mkdir()
    os.link(tiny["run"] / "checkpoints" / "last.pt", run / "checkpoints" / "last.pt")
    with pytest.raises(UserError, match="--data"):
        write_report(run)
    assert main(["report", str(tmp_path / "missing")]) == 1  # a runtime failure, not a usage error


def test_cli_and_no_val_split(tiny, tmp_path, capsys):
    """`alexnet report --data` with a prepared set that has no val split: evaluation and Figure 4 are
    skipped with a note, Figure 3 and the architecture still shown."""
    from alexnet.data.prepare import prepare
    from alexnet.data.synthetic import make_shapes

    make_shapes(tmp_path / "src", classes=3, per_class=2, seed=1)
    prepare(str(tmp_path / "src"), str(tmp_path / "noval"), val_fraction=0, workers=1)
    out = tmp_path / "rep"
    assert (
        main(
            [
                "report",
                str(tiny["run"]),
                "--data",
                str(tmp_path / "noval"),
                "--out",
                str(out),
                "--quiet",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.strip() == str(out / "index.html")
    html = (out / "index.html").read_text()
    assert "has no val (or test) split" in html
    assert set(re.findall(r'<img src="([^"]+)"', html)) == {"curves.png", "conv1.png"}
    assert "Architecture" in html


def test_other_model_and_many_classes(tmp_path):
    """A non-AlexNet checkpoint (no Figure 3, no fc7 neighbours) on 31 classes (no confusion matrix)."""
    from alexnet.checkpoint import save_checkpoint
    from alexnet.data import PreparedSet
    from alexnet.data.prepare import prepare
    from alexnet.data.synthetic import make_shapes
    from alexnet.model import build_model

    make_shapes(tmp_path / "src", classes=31, per_class=1, val_per_class=1, size=40, seed=2)
    prepare(str(tmp_path / "src"), str(tmp_path / "prep"), size=40, workers=1)
    ps = PreparedSet(tmp_path / "prep")
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=31)
    run = _hand_run(
        tmp_path / "run",
        env={"device": "cpu", "data": ps.root},
        config={"model": {"name": "resnet18"}, "train": {"epochs": 1}},
    )
    save_checkpoint(
        run / "checkpoints" / "last.pt",
        {
            "model": model.state_dict(),
            "model_name": "resnet18",
            "model_kwargs": {"num_classes": 31},
            "classes": {"ids": ps.class_ids, "names": ps.class_names},
            "stats": {k: v.tolist() for k, v in ps.stats.items()},
            "preprocess": {"crop": 32, "normalize": "channel"},
        },
    )
    index = write_report(run, device="cpu")
    html = index.read_text()
    assert set(re.findall(r'<img src="([^"]+)"', html)) == {"curves.png", "top5.png"}
    assert "not an AlexNet" in html and "only AlexNet nets have" in html
    assert "No confusion matrix: 31 classes" in html and "n/a (" not in html  # 31 classes: top-5 applies
    _not_blank(index.parent / "top5.png")
    # one 10-crop pass gave both rows (the centre crop is crop 4 of the 10): check both against evaluate
    from alexnet.evaluation import evaluate_checkpoints

    summary = json.loads((index.parent / "report.json").read_text())
    for key, crops in (("centre", 1), ("ten", 10)):
        oracle = evaluate_checkpoints([str(run)], ps.root, "val", crops=crops, workers=0, device="cpu")
        assert summary[key]["n"] == oracle["n"] == 31
        for metric in ("top1_error", "top5_error", "loss"):
            assert summary[key][metric] == pytest.approx(oracle[metric], rel=1e-4, abs=1e-6), (key, metric)
    # a checkpoint without class names whose outputs do not match the data's classes
    other = _hand_run(tmp_path / "run5", env={"device": "cpu", "data": ps.root})
    save_checkpoint(
        other / "checkpoints" / "last.pt",
        {
            "model": build_model("resnet18", num_classes=5).state_dict(),
            "model_name": "resnet18",
            "model_kwargs": {"num_classes": 5},
        },
    )
    with pytest.raises(UserError, match="5 outputs but"):
        write_report(other, device="cpu")


# ---------------------------------------------------------------- headless Chromium


def test_page_renders_in_chromium(tiny, tmp_path):
    browser = find_chromium()
    if browser is None:
        pytest.skip("no chromium on PATH (Debian/Ubuntu: apt-get install chromium)")
    shot = tmp_path / "page.png"
    command = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}",
        "--window-size=1280,2000",
        tiny["index"].resolve().as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert shot.is_file(), done.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float64)
    assert pixels.shape[:2] == (2000, 1280)
    assert pixels.std() > 10, "the screenshot is a flat colour"
    not_white = (pixels < 240).any(axis=2).mean()
    assert not_white > 0.05, f"only {not_white:.1%} of the screenshot is drawn"


def test_page_on_a_phone_in_chromium(tiny):
    """The report as a phone shows it (headless Chromium, 390 CSS px wide, driven over the DevTools
    protocol): every image loaded, no console error (a missing image is one), no horizontal scroll."""
    browser = find_chromium()
    if browser is None:
        pytest.skip("no chromium on PATH (Debian/Ubuntu: apt-get install chromium)")
    page = inspect_page(browser, tiny["index"].resolve().as_uri(), width=390)
    assert {i["src"] for i in page["images"]} == FIGURES
    assert all(i["complete"] and i["width"] > 0 for i in page["images"]), page["images"]
    assert page["errors"] == []
    assert page["clientWidth"] == 390  # the viewport meta tag: laid out at the phone's width, not 980
    assert page["scrollWidth"] <= page["clientWidth"], f"wider than the phone: {page['wide']}"


def test_phone_check_sees_what_it_should(tiny, tmp_path):
    """The check above can fail: a missing image is seen (not loaded, and a console error), and so
    is an element wider than the phone."""
    browser = find_chromium()
    if browser is None:
        pytest.skip("no chromium on PATH (Debian/Ubuntu: apt-get install chromium)")
    html = (
        tiny["index"]
        .read_text()
        .replace("</main>", '<img src="gone.png"><div class="long" style="width:1200px">x</div></main>')
    )
    shutil.copytree(tiny["index"].parent, tmp_path / "page")
    (tmp_path / "page" / "index.html").write_text(html)
    page = inspect_page(browser, (tmp_path / "page" / "index.html").as_uri(), width=390)
    assert [i["width"] for i in page["images"] if i["src"] == "gone.png"] == [0]
    assert any("gone.png" in e for e in page["errors"])
    assert page["scrollWidth"] > page["clientWidth"] and page["wide"] == ["div.long"]


def test_eval_json_is_read_in_the_one_evaluation_schema(tmp_path):
    """RUN/eval.json: one `alexnet evaluate` result, or a list of them (`alexnet demo`); the 10-crop
    result of these very weights over the whole split is reused, nothing else."""
    ckpt = tmp_path / "checkpoints" / "last.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"weights")
    records = analysis.RunRecords(tmp_path, {}, {})
    ten = {
        "models": [str(ckpt)],
        "data": "d",
        "split": "val",
        "crops": 10,
        "crop": 227,
        "normalize": "mean_image",
        "n": 7,
        "loss": 1.5,
        "top1_error": 0.25,
        "top5_error": 0.0,
        "per_model": [],
        "per_class_top1_error": {},
    }
    centre = dict(ten, crops=1, top1_error=0.5)
    want = {"loss": 1.5, "top1_error": 0.25, "top5_error": 0.0, "n": 7}
    for doc in (ten, [centre, ten]):
        (tmp_path / "eval.json").write_text(json.dumps(doc))
        assert analysis._eval_json(records, ckpt, "val", 7) == want
        assert analysis._eval_json(records, ckpt, "val", 8) is None  # another split size
        assert analysis._eval_json(records, ckpt, "test", 7) is None
    for doc in ([centre], dict(ten, models=[str(ckpt), str(ckpt)])):  # no 10-crop result; an ensemble's
        (tmp_path / "eval.json").write_text(json.dumps(doc))
        assert analysis._eval_json(records, ckpt, "val", 7) is None


def test_progress_names_every_stage_and_counts_every_batch(tiny, tmp_path, capsys, monkeypatch):
    """`--progress lines` (interval 0 here; 30 s off a terminal by default): a line before each pass
    over the images and each figure, and a counter line per batch of each pass, so that no step is
    silent for longer than a batch (2 images here) or a figure. `--quiet` prints nothing."""
    monkeypatch.setattr(analysis, "BATCH", 2)  # 10 crops: 1 image a batch; otherwise 2
    monkeypatch.setattr(analysis, "MAX_TEN_CROP", 2)  # a centre pass, then a (short) 10-crop pass
    for name in ("training_curves", "conv1_kernels", "top5_panel", "neighbours_panel", "confusion"):
        monkeypatch.setattr(figures, name, lambda *args, **kwargs: None)  # the stages, not the drawing
    monkeypatch.setitem(__import__("alexnet.progress").progress.Progress.__init__.__kwdefaults__, "every", 0.0)
    out = tmp_path / "rep"
    args = ["report", str(tiny["run"]), "--out", str(out), "--device", "cpu"]
    assert main(args + ["--progress", "lines"]) == 0
    err = capsys.readouterr().err.splitlines()
    stages = [x[len("report: ") :] for x in err if x.startswith("report: ") and "img" not in x]
    assert stages[0].startswith("evaluating ") and stages[1:] == [
        "centre crop over 9 val images",
        "10 crops over 2 val images",
        "fc7 features of 12 training images (Figure 4, right)",
        "drawing the training curves",
        "drawing Figure 3 (conv1 kernels)",
        "drawing Figure 4, left (top-5 predictions)",
        "drawing Figure 4, right (nearest neighbours)",
        "drawing the confusion matrix",
    ]
    counts = {}
    for line in err:
        if " img" in line:
            what, rest = line[len("report: ") :].split(": ", 1)
            counts.setdefault(what, []).append(rest.split()[0])
    assert counts == {
        "centre crop over 9 val images": ["2/9", "4/9", "6/9", "8/9", "9/9", "9/9"],
        "10 crops over 2 val images": ["1/2", "2/2", "2/2"],
        "fc7 features of 12 training images (Figure 4, right)": [f"{i}/12" for i in range(2, 13, 2)] + ["12/12"],
    }
    assert main(args + ["--quiet", "--force"]) == 0
    assert capsys.readouterr().err == ""
