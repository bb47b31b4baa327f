"""`alexnet demo`: the pipeline on generated images (shrunk here; the real default is a slow test)."""

import json
import re
import sys
from pathlib import Path

import pytest

from alexnet import demo
from alexnet.cli import main
from alexnet.report import analysis

sys.path.insert(0, str(Path(__file__).parent))
from chromium import find_chromium, inspect_page  # noqa: E402 - the helper beside this file

KEYS = {"run", "data", "report", "top1_error", "top5_error", "top1_error_10crop", "seconds"}


def test_demo_small_json_and_rerun(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo, "DATA", {"classes": 3, "per_class": 6, "val_per_class": 2, "size": 256, "seed": 0})
    monkeypatch.setattr(demo, "PROGRESS_EVERY", 0.0)  # a progress line at every update (5 s apart by default)
    monkeypatch.setattr(analysis, "BATCH", 4)  # the report's passes in several batches
    out = tmp_path / "demo"
    shrink = [
        "--set",
        "train.epochs=1",
        "--set",
        "data.crop=67",
        "--set",
        "data.batch_size=6",
        "--set",
        "data.workers=0",
    ]
    assert main(["demo", "--out", str(out), "--json", "--progress", "lines", *shrink]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)  # nothing but the JSON on stdout
    # after training, every step says what it does and counts its batches: the final evaluation
    # (6 images: one batch each, then the closing line) and each pass of the report (batches of 4;
    # its 10 crops come from eval.json)
    err = captured.err.splitlines()
    tail = err[next(i for i, x in enumerate(err) if x.startswith("demo: evaluating")) :]
    counted = [re.search(r"(\d+/\d+) img \(", x)[1] for x in tail if " img (" in x]
    assert counted == ["6/6"] * 4 + ["4/6", "6/6", "6/6"] + ["4/18", "8/18", "12/18", "16/18", "18/18", "18/18"]
    assert sum(x.startswith("report: drawing") for x in tail) == 5  # curves, Figures 3, 4 left and right, confusion
    assert set(result) == KEYS
    assert result["run"] == str(out / "run") and result["data"] == str(out / "data")
    assert 0 <= result["top1_error"] <= 1 and 0 <= result["top1_error_10crop"] <= 1
    assert result["top5_error"] is None  # 3 classes: every label is among the top five, not applicable
    assert result["report"] == str(out / "run" / "report" / "index.html")  # the report is part of the demo
    assert (out / "run" / "report" / "index.html").is_file()
    # eval.json: `alexnet evaluate`'s result, once per protocol (centre crop, 10 crops)
    evaluation = {r["crops"]: r for r in json.loads((out / "run" / "eval.json").read_text())}
    assert evaluation[1]["n"] == evaluation[10]["n"] == 6
    assert evaluation[1]["top1_error"] == result["top1_error"]
    assert evaluation[10]["top1_error"] == result["top1_error_10crop"]
    assert evaluation[1]["models"] == [str(out / "run" / "checkpoints" / "last.pt")]
    # the report's 10-crop row is the demo's 10-crop evaluation, read back from eval.json
    assert "read from RUN/eval.json" in (out / "run" / "report" / "index.html").read_text()
    if find_chromium():  # the demo's page on a phone (tests/test_report.py checks a report page in depth)
        page = inspect_page(find_chromium(), (out / "run" / "report" / "index.html").as_uri(), width=390)
        assert page["errors"] == [] and len(page["images"]) == 5 and all(i["width"] > 0 for i in page["images"])
        assert page["scrollWidth"] <= page["clientWidth"] == 390, page["wide"]
    assert (out / "run" / "checkpoints" / "last.pt").is_file()

    # a rerun without --force leaves the previous run alone: exit 2 and one line naming --force
    stamp = (out / "data" / "manifest.json").stat().st_mtime_ns
    before = (out / "run" / "log.jsonl").read_bytes()
    assert main(["demo", "--out", str(out), *shrink]) == 2
    err = capsys.readouterr().err
    assert "--force" in err and len(err.strip().splitlines()) == 1
    assert (out / "run" / "log.jsonl").read_bytes() == before

    # with --force it reuses the complete generated data and starts a fresh run
    assert main(["demo", "--out", str(out), "--force", *shrink]) == 0
    captured = capsys.readouterr()
    assert "reusing the prepared images" in captured.err and "replacing the previous demo run" in captured.err
    assert (out / "data" / "manifest.json").stat().st_mtime_ns == stamp
    assert "top-1" in captured.out and "top-5 n/a" in captured.out and str(out / "run") in captured.out
    steps = [json.loads(x) for x in (out / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if r["kind"] == "epoch"] == [3]  # one fresh epoch, not appended


def test_demo_refuses_a_file_as_out(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    assert main(["demo", "--out", str(target)]) == 1
    assert "not a directory" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_default_learns(tmp_path):
    """The real demo (about 5-10 minutes on a 2-core CPU): far below chance (0.9)."""
    result = demo.run_demo(tmp_path / "demo", progress="off")
    assert result["top1_error"] < 0.5 and result["top1_error_10crop"] < 0.5
