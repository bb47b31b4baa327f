"""`alexnet bench data` on a tiny generated set: runs end to end and reports consistent figures."""

from __future__ import annotations

import json
import shutil

import pytest

from alexnet.bench.data import run_data_bench
from alexnet.cli import main as cli_main


def test_bench_data_tiny(tmp_path):
    r = run_data_bench(n=24, workers=1, batch_size=8, repeats=1, warmup=0, work_dir=str(tmp_path))
    assert {"baseline", "ours_img_s", "baseline_img_s", "ratio", "prepare_img_s_per_worker"} <= set(r)
    assert r["ours_img_s"] > 0 and r["baseline_img_s"] > 0
    assert r["ratio"] == pytest.approx(r["ours_img_s"] / r["baseline_img_s"], rel=0.02)
    assert r["images"] == 24 and r["workers"] == 1
    # the limit, timed in the same run on the same worker: the bare decode of the same packed JPEGs
    assert r["bare_img_s"] > 0 and r["ours_vs_bare"] == pytest.approx(r["ours_img_s"] / r["bare_img_s"], abs=0.006)
    assert r["device_workers_vs_bare"] == pytest.approx(r["device_workers_img_s"] / r["bare_img_s"], abs=0.006)
    assert r["img_s_per_core"]["bare"] == pytest.approx(r["bare_img_s"], rel=0.01)  # one worker: one core
    assert r["decoder"] in r["decoders_img_s_one_core"] and "pillow" in r["decoders_img_s_one_core"]
    assert list(tmp_path.iterdir()) == []  # temporary files removed


def test_bench_data_cli_on_given_images(tmp_path, capsys, bench_photos):
    rc = cli_main(["bench", "data", "--images", str(bench_photos(n=16, classes=2)), "--workers", "0", "--batch-size", "8",
                   "--repeats", "1", "--warmup", "0", "--load", "1", "--json"])  # fmt: skip
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["images"] == 16 and out["workers"] == 0 and out["ratio"] > 0 and out["ours_vs_bare"] > 0
    assert out["load_threads"] == 1  # timed beside a competing 1-thread matmul process
    rc = cli_main(["bench", "data", "--images", str(tmp_path / "missing"), "--json"])
    assert rc == 2


def test_bench_data_option_errors_are_one_line(tmp_path, capsys):
    for argv, word in ((["--n", "4", "--batch-size", "8"], "--n 4"), (["--crop", "300"], "--crop 300"),
                       (["--work-dir", str(tmp_path / "missing")], "--work-dir"), (["--load", "-1"], "--load -1")):  # fmt: skip
        assert cli_main(["bench", "data", "--json", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and word in err


def test_bench_data_baseline_skips_files_prepare_skipped(tmp_path, capsys, bench_photos):
    """A folder with a truncated and a non-image .jpg: prepare skips them, and so must the baseline
    (ImageFolder's PIL loader would raise in a worker)."""
    imgs = shutil.copytree(bench_photos(n=8, classes=2), tmp_path / "imgs")
    (imgs / "class_00" / "bad.jpg").write_text("not an image")
    good = (imgs / "class_01" / "img_00001.jpg").read_bytes()
    (imgs / "class_01" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    rc = cli_main(["bench", "data", "--images", str(imgs), "--workers", "0", "--batch-size", "4",
                   "--repeats", "1", "--warmup", "0", "--json"])  # fmt: skip
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["images"] == 8


def test_bench_prepare_tiny(tmp_path, capsys):
    """`alexnet bench prepare`: prepare and decode + resize alone on the same images and workers."""
    from alexnet.bench.prepare_rate import run_prepare_bench

    r = run_prepare_bench(n=12, workers=1, repeats=1, warmup=0, work_dir=str(tmp_path))
    assert r["images"] == r["prepared"] == 12 and r["workers"] == 1
    assert r["ratio"] == pytest.approx(r["prepare_img_s"] / r["decode_resize_img_s"], abs=0.006)
    assert r["img_s_per_core"]["prepare"] == pytest.approx(r["prepare_img_s"], rel=0.01)  # one worker
    assert list(tmp_path.iterdir()) == []
    assert cli_main(["bench", "prepare", "--workers", "0", "--json"]) == 2
    assert "--workers 0" in capsys.readouterr().err
