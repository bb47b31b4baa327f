"""`alexnet bench gpu`: on the CPU in quick mode every stage runs and gpu.json has the documented keys,
with each ratio equal to its parts; stages are saved one by one, and a failing stage is recorded
without losing the others."""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from alexnet import config as cfg
from alexnet.bench import gpu, trainstep
from alexnet.bench.model import IMAGENET_TRAIN_IMAGES, PAPER_EPOCHS
from alexnet.cli import main
from alexnet.summary import summarize

sys.path.insert(0, str(Path(__file__).parent))
import tiny_trainer  # noqa: E402,F401 - registers the "tiny" model

ROOT = Path(__file__).resolve().parents[1]
KEYS = {
    "train_step": {
        "ours_img_s",
        "ours_same_input_img_s",
        "torchvision_fp32_img_s",
        "torchvision_bf16_img_s",
        "torchvision_bf16_compiled_img_s",
        "ratio_same_input_vs_eager_bf16",
        "ratio_same_input_vs_compiled_bf16",
        "mfu_measured",
    },
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
    same = ts["ratio_same_input_vs_eager_bf16"]
    assert same == pytest.approx(ts["ours_same_input_img_s"] / ts["torchvision_bf16_img_s"], rel=1e-12)
    assert ts["ratio_paper_input_vs_compiled_bf16"] == pytest.approx(
        ts["ours_img_s"] / ts["torchvision_bf16_compiled_img_s"], rel=1e-12
    )
    assert ts["config"]["same_input"] == ts["config"]["torchvision_input"] == gpu.QUICK.tv_input
    assert ts["config"]["optimizer"].startswith("PaperSGD") and ts["eager_fallbacks"] == {}
    # exact FLOPs: forward, weight gradients, input gradients of every layer but conv1
    layers = [x for x in summarize("alexnet", input_size=gpu.QUICK.crop).layers if x.macs]
    assert ts["train_flops_per_image"] == 2 * sum(x.macs for x in layers) * 3 - 2 * layers[0].macs
    flops = ts["train_flops_per_image"] * ts["ours_img_s"]
    assert ts["mfu_measured"] == pytest.approx(flops / (r["matmul_tflops"] * 1e12), rel=1e-12)
    assert ts["published_peak_tflops"] is None and ts["mfu_published"] is None  # no GPU: measured only
    assert pipe["ratio"] == pytest.approx(pipe["real_img_s"] / pipe["synthetic_img_s"], rel=1e-12)
    # the train run's figure, recomputed from the run's own log
    records = [json.loads(line) for line in (out / "work" / "train_run.jsonl").read_text().splitlines()]
    rates = [x["img_s"] for x in records if x["kind"] == "step"]
    assert len(rates) == gpu.QUICK.train_max_steps and run["img_s"] == pytest.approx(statistics.median(rates[1:]))
    assert run["paper_recipe_hours"] == pytest.approx(PAPER_EPOCHS * IMAGENET_TRAIN_IMAGES / run["img_s"] / 3600)
    assert not (out / "work" / "train_run").exists() and not (out / "work" / "set").exists()  # no GBs left behind
    md = (out / "gpu.md").read_text()
    assert f"{pipe['ratio']:.2f}" in md and f"{same:.2f}×" in md and "not measured" not in md


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


def test_published_peaks_by_gpu_name():
    assert trainstep.published_peak("NVIDIA H100 80GB HBM3") == 989.0  # SXM
    assert trainstep.published_peak("NVIDIA H100 PCIe") == 756.0
    assert trainstep.published_peak("NVIDIA H200") == 989.0
    assert trainstep.published_peak("NVIDIA A100-SXM4-80GB") == 312.0
    assert trainstep.published_peak("NVIDIA GeForce GTX 580") is None and trainstep.published_peak(None) is None


def test_a_failed_compilation_is_timed_eagerly_with_its_reason():
    fallbacks, calls = {}, []

    def compiled():
        raise RuntimeError("InductorError: no working C++ compiler found\nmore")

    fn = trainstep.first_call_or_eager("ours_227", compiled, lambda: lambda: calls.append(1), fallbacks)
    fn()
    assert calls == [1, 1] and list(fallbacks) == ["ours_227"]  # called once untimed, once by us
    assert fallbacks["ours_227"].endswith("RuntimeError: InductorError: no working C++ compiler found")


def test_tests_stage_runs_each_named_file_on_its_own(tmp_path, monkeypatch):
    """One file that cannot be imported (a missing optional dependency) is one error; the tests of
    the other files still run and count; a named file that is missing is an error, not a silent 0.
    A line on stderr after pytest's summary (a plugin's warning at exit) does not hide the counts."""
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_a.py").write_text(
        "import atexit\nimport sys\n\nimport pytest\n\n"
        "atexit.register(lambda: print('SomeWarning: printed at exit', file=sys.stderr))\n\n"
        "@pytest.mark.gpu\ndef test_one():\n    pass\n\n"
        "@pytest.mark.gpu\ndef test_two():\n    pytest.skip('no CUDA')\n"
    )
    (tmp_path / "tests" / "test_b.py").write_text("import a_module_that_is_not_installed\n")
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    gpu: needs CUDA\n")
    monkeypatch.setattr(gpu, "_repo_root", lambda: str(tmp_path))
    r = gpu.stage_tests(60.0, ("tests/test_a.py", "tests/test_b.py", "tests/test_c.py"))
    assert (r["passed"], r["skipped"], r["failed"]) == (1, 1, 0) and r["errors"] == 2, r
    assert r["files"]["tests/test_a.py"]["exit_code"] == 0 and not r["timed_out"]
    assert any(f.startswith("tests/test_b.py") for f in r["failures"]) and any(
        "test_c.py: missing" in f for f in r["failures"]
    )
    assert set(gpu.GPU_TEST_FILES) <= {str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")}


def test_train_run_writes_at_most_two_checkpoints(prepared_shapes, tmp_path, monkeypatch):
    """train_run's settings on a set without val split, over 2 short epochs and 4 steps (6 steps an
    epoch): one save, at the end (before, a last.pt and a best.pt at every epoch end: 490 MB each
    on the paper net)."""
    data = prepared_shapes(dict(classes=3, per_class=6, seed=0), val_fraction=0.0)
    from alexnet.training import rundir
    from alexnet.training.config import TrainConfig
    from alexnet.training.loop import train

    saves = []
    original = rundir.RunDir.save
    monkeypatch.setattr(
        rundir.RunDir,
        "save",
        lambda self, payload, best=False: (saves.append(best), original(self, payload, best=best)),
    )
    sizes = dataclasses.replace(gpu.QUICK, train_max_steps=16, crop=64)
    sets = [*gpu.train_run_settings("cpu", sizes), "model.name=tiny", "data.batch_size=3"]
    summary = train(data, tmp_path / "run", cfg.load_config(TrainConfig, None, sets), progress="off")
    assert summary["step"] == 16 and summary["epoch"] == 2
    assert saves == [False]  # one last.pt, no best.pt


def test_train_run_takes_trains_own_worker_count():
    """The full-size run sets no data.workers: `train --fast` and bench gpu use the same default
    (alexnet/data/cores.py); the quick run's toy sizes still pin 0."""
    from alexnet.bench.gpu import QUICK, Sizes, train_run_settings

    full = train_run_settings(torch.device("cuda"), Sizes())
    assert Sizes().workers is None and not any(s.startswith("data.workers=") for s in full)
    assert "data.workers=0" in train_run_settings(torch.device("cpu"), QUICK)
