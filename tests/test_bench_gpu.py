"""`alexnet bench gpu`: on the CPU in quick mode every stage runs and gpu.json has the documented keys,
with each ratio equal to its parts; stages are saved one by one, and a failing stage is recorded
without losing the others."""

from __future__ import annotations

import json
import math
import signal
import statistics
import subprocess
import sys
import time

import pytest

from alexnet.bench import gpu
from alexnet.bench.model import IMAGENET_TRAIN_IMAGES, PAPER_EPOCHS
from alexnet.cli import main
from alexnet.summary import summarize

KEYS = {
    "train_step": {"ours_img_s", "torchvision_fp32_img_s", "torchvision_bf16_img_s", "ratio_vs_bf16", "mfu"},
    "pipeline": {"synthetic_img_s", "real_img_s", "ratio"},
    "infer": {"ours_img_s", "torchvision_img_s", "ours_latency_ms", "torchvision_latency_ms"},
    "train_run": {"img_s", "paper_recipe_hours"},
}


def test_quick_run_on_cpu_writes_every_stage(tmp_path, capsys):
    out = tmp_path / "gpu"
    assert main(["bench", "gpu", "--device", "cpu", "--quick", "--out", str(out)]) == 0
    assert "| figure | value | how |" in capsys.readouterr().out
    r = json.loads((out / "gpu.json").read_text())
    assert r["errors"] == {} and r["quick"] is True and set(r["stages_s"]) == set(gpu.STAGES)
    assert {"env", "tests", "matmul_tflops", *KEYS} <= set(r)
    for stage, keys in KEYS.items():
        assert keys <= set(r[stage]), stage
        assert all(r[stage][k] > 0 for k in keys), stage
    assert "quick" in r["tests"]["skipped"]  # said, not silently left out
    assert r["env"]["date"] and r["env"]["torch"] and r["env"]["slug"].startswith(r["env"]["date"][:10])
    ts, pipe, run = r["train_step"], r["pipeline"], r["train_run"]
    assert ts["ratio_vs_bf16"] == pytest.approx(ts["ours_img_s"] / ts["torchvision_bf16_img_s"], rel=1e-12)
    macs = summarize("alexnet", input_size=gpu.QUICK.crop).macs
    assert ts["mfu"] == pytest.approx(2 * 3 * macs * ts["ours_img_s"] / (r["matmul_tflops"] * 1e12), rel=1e-12)
    assert pipe["ratio"] == pytest.approx(pipe["real_img_s"] / pipe["synthetic_img_s"], rel=1e-12)
    # the train run's figure, recomputed from the run's own log
    records = [json.loads(line) for line in (out / "work" / "train_run.jsonl").read_text().splitlines()]
    rates = [x["img_s"] for x in records if x["kind"] == "step"]
    assert len(rates) == gpu.QUICK.train_max_steps and run["img_s"] == pytest.approx(statistics.median(rates[1:]))
    assert run["paper_recipe_hours"] == pytest.approx(PAPER_EPOCHS * IMAGENET_TRAIN_IMAGES / run["img_s"] / 3600)
    assert not (out / "work" / "train_run").exists() and not (out / "work" / "set").exists()  # no GBs left behind
    md = (out / "gpu.md").read_text()
    assert f"{pipe['ratio']:.2f}" in md and f"{ts['ratio_vs_bf16']:.2f}×" in md and "not measured" not in md


def test_stages_are_saved_one_by_one_and_a_failure_is_kept(tmp_path, monkeypatch):
    """Each stage lands in gpu.json as it finishes; a failing stage records its error, later stages
    still run; an interrupt keeps what was measured before it."""
    calls = []

    def fake(name, value):
        def stage(*args, **kwargs):
            if calls:  # the previous stage is on disk before this one starts
                assert calls[-1] in json.loads((tmp_path / "gpu.json").read_text())
            calls.append(name)
            if isinstance(value, BaseException):
                raise value
            return value

        return stage

    monkeypatch.setattr(gpu, "stage_tests", fake("tests", {"passed": 3, "failed": 0, "errors": 0, "skipped": 1}))
    monkeypatch.setattr(gpu, "stage_env", fake("env", {"date": "2030-01-01T00:00:00Z", "gpu": "X"}))
    monkeypatch.setattr(gpu, "matmul_tflops", fake("matmul_tflops", 500.0))
    monkeypatch.setattr(gpu, "stage_train_step", fake("train_step", RuntimeError("CUDA out of memory")))
    monkeypatch.setattr(gpu, "generate_set", lambda *a, **k: str(tmp_path / "set"))
    pipeline = {"synthetic_img_s": 2.0, "real_img_s": 1.0, "ratio": 0.5}
    monkeypatch.setattr(gpu, "stage_pipeline", fake("pipeline", pipeline))
    monkeypatch.setattr(gpu, "stage_infer", fake("infer", KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        gpu.run_gpu_bench(tmp_path, device="cpu", sizes=gpu.Sizes())  # the GPU sizes, every stage faked
    r = json.loads((tmp_path / "gpu.json").read_text())
    assert calls == ["tests", "env", "matmul_tflops", "train_step", "pipeline", "infer"]
    assert r["tests"]["passed"] == 3 and r["matmul_tflops"] == 500.0 and r["pipeline"]["ratio"] == 0.5
    assert r["train_step"] is None and "CUDA out of memory" in r["errors"]["train_step"]
    assert "infer" not in r and "train_run" not in r
    md = (tmp_path / "gpu.md").read_text()
    assert "3 passed, 0 failed" in md and "500.0 TFLOP/s" in md and "train_step: RuntimeError" in md


def test_steady_img_s_skips_the_compiling_record():
    records = [{"kind": "step", "img_s": 10.0}, {"kind": "epoch"}, {"kind": "step", "img_s": 900.0},
               {"kind": "step", "img_s": 1100.0}, {"kind": "step", "img_s": 1000.0}]  # fmt: skip
    assert gpu.steady_img_s(records) == 1000.0
    assert gpu.steady_img_s(records[:2]) is None
    assert math.isclose(gpu.steady_img_s(records[:3]), 900.0)


def test_bench_gpu_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert main(["bench", "gpu", "--device", "cpu", "--quick", "--out", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(["bench", "gpu", "--device", "nonsense", "--quick", "--out", str(tmp_path / "x")]) == 2
    assert "--device" in capsys.readouterr().err
    assert main(["bench", "gpu", "--device", "cpu", "--out", str(tmp_path / "x")]) == 2  # hours at GPU sizes
    assert "add --quick" in capsys.readouterr().err and not (tmp_path / "x").exists()


FAKE_TRAIN = """
import json, sys, time
time.sleep(float(sys.argv[2]))  # "compiling"
try:
    with open(sys.argv[1], "a") as f:
        while True:
            f.write(json.dumps({"kind": "step", "img_s": 1.0}) + "\\n")
            f.flush()
            time.sleep(0.05)
except KeyboardInterrupt:
    sys.exit(130)
"""


@pytest.mark.parametrize("compiling,grace,least,most",
                         [(0.0, 30.0, 0.5, 10), (1.5, 30.0, 1.5, 12), (60.0, 1.0, 1.5, 12)])  # fmt: skip
def test_train_run_is_interrupted_after_its_time(tmp_path, compiling, grace, least, most):
    """Ctrl-C after `seconds`, later while fewer than min_records step records exist (a slow
    compilation), but never later than seconds + grace."""
    log = tmp_path / "log.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", FAKE_TRAIN, str(log), str(compiling)])
    start = time.perf_counter()
    rc = gpu._run_for(proc, log, 0.5, min_records=3, grace=grace)
    took = time.perf_counter() - start
    assert rc in (130, -signal.SIGINT) and least <= took < most
    if compiling < grace:
        assert len(log.read_text().splitlines()) >= 3
