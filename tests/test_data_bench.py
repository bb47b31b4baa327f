"""`alexnet bench data` on a tiny generated set: runs end to end and reports consistent figures."""

from __future__ import annotations

import json

import pytest

from alexnet.bench.data import generate_images, run_data_bench
from alexnet.cli import main as cli_main


def test_bench_data_tiny(tmp_path):
    r = run_data_bench(n=24, workers=1, batch_size=8, repeats=1, warmup=0, work_dir=str(tmp_path))
    assert {"baseline", "ours_img_s", "baseline_img_s", "ratio", "prepare_img_s_per_worker"} <= set(r)
    assert r["ours_img_s"] > 0 and r["baseline_img_s"] > 0
    assert r["ratio"] == pytest.approx(r["ours_img_s"] / r["baseline_img_s"], rel=0.02)
    assert r["images"] == 24 and r["workers"] == 1
    assert list(tmp_path.iterdir()) == []  # temporary files removed


def test_bench_data_cli_on_given_images(tmp_path, capsys):
    generate_images(str(tmp_path / "imgs"), 16, classes=2, workers=1)
    rc = cli_main(["bench", "data", "--images", str(tmp_path / "imgs"), "--workers", "0", "--batch-size", "8",
                   "--repeats", "1", "--warmup", "0", "--json"])  # fmt: skip
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["images"] == 16 and out["workers"] == 0 and out["ratio"] > 0
    rc = cli_main(["bench", "data", "--images", str(tmp_path / "missing"), "--json"])
    assert rc == 2
