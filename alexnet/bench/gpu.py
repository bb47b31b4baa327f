"""`alexnet bench gpu`: every GPU figure in one command, sized to finish within 6 minutes on one H100.

Stages, each merged into OUT/gpu.json and OUT/gpu.md as soon as it finishes (a run cut short keeps
what it measured; a stage that fails records its error and the next one runs):

    tests       `pytest -m gpu` over GPU_TEST_FILES, one subprocess and time limit per file (a file
                that fails to import is its own error): passed / failed / skipped counts
    env         GPU, driver, torch / torchvision / CUDA / cuDNN versions, date
    matmul      bf16 matrix product 8192^3: the machine's dense rate (TFLOP/s) measured now
    train_step  one training step at batch 256: ours as `train --fast` runs it (alexnet/training/step.py:
                bf16, channels_last, compiled step, compiled PaperSGD, cudnn.benchmark) at 227 and
                at 224 px vs torchvision.models.alexnet at 224 px eager fp32, eager bf16 +
                channels_last and compiled bf16 + channels_last, alternating, medians after
                warm-up; MFU (exact FLOPs) against the measured matmul rate and the published peak
                (alexnet/bench/trainstep.py)
    pipeline    training img/s fed by the device data path (train's default loader workers: every
                usable core less one, alexnet/data/cores.py) from a generated set of
                256-px JPEGs / the same step fed a fixed batch already on the device
    infer       batch-1024 img/s and batch-1 latency: ours (bf16, channels_last, CUDA graph) vs
                torchvision eager fp32
    train_run   `alexnet train --fast` for 60 s on the generated set: steady-state img/s after
                compilation, and the hours the paper's 90 epochs of ImageNet would take at that rate
                (epoch-end saves off: the set's short epochs would write 490 MB every second; the
                interrupt at the end writes the one last.pt)

`quick=True` runs every stage at toy sizes (a CPU check of the code paths and the JSON; its figures
mean nothing) and skips the tests stage, saying so in the JSON.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from alexnet.bench.common import environment, median
from alexnet.bench.gpu_report import markdown
from alexnet.bench.infer import run_infer_bench
from alexnet.bench.model import IMAGENET_TRAIN_IMAGES, PAPER_EPOCHS, matmul_tflops, resolve_device
from alexnet.bench.pipeline import generate_set, run_pipeline_bench
from alexnet.bench.trainstep import stage_train_step
from alexnet.data.cores import default_loader_workers
from alexnet.errors import UsageError, UserError
from alexnet.io import mark_output, read_json, write_json, write_text

STAGES = ("tests", "env", "matmul_tflops", "train_step", "pipeline", "infer", "train_run")
# The test files holding GPU tests, named (not collected from tests/): one that cannot be imported
# (a missing optional dependency) is reported as its own error and the others still run.
GPU_TEST_FILES = ("tests/test_gpu.py", "tests/test_data_packed.py")


@dataclass(frozen=True)
class Sizes:
    """What each stage runs: the full GPU sizes, or toy sizes for a quick check."""

    matmul: int = 8192  # n of the n x n x n bf16 product
    batch: int = 256  # training step and pipeline batch
    warmup: int = 3  # untimed rounds (torch.compile happens here)
    repeats: int = 10  # timed rounds; medians reported
    crop: int = 227  # the paper's input
    tv_input: int = 224  # torchvision's AlexNet input (ours runs at it too, for a row of equal inputs)
    image_size: int = 256  # generated JPEGs (the paper's prepared size)
    images: int = 16384  # generated set: 256 distinct drawn shapes, hard-linked up to this count
    workers: int | None = None  # loader processes; None: train's own default (what `train --fast` uses)
    pipe_steps: int = 30  # steps per timed pipeline round
    pipe_repeats: int = 3
    infer_batch: int = 1024
    latency_repeats: int = 50
    train_seconds: float = 60.0  # wall time of the `alexnet train --fast` run
    train_batch: int = 128  # the paper's batch
    train_max_steps: int | None = None  # stop earlier than train_seconds (quick runs)
    log_every: int = 20  # train's step records: the img/s samples
    tests_timeout: float = 240.0  # seconds for pytest -m gpu, per test file


QUICK = Sizes(matmul=256, batch=2, warmup=0, repeats=1, crop=80, tv_input=72, image_size=80, images=16, workers=0,
              pipe_steps=1, pipe_repeats=1, infer_batch=2, latency_repeats=1, train_seconds=120.0, train_batch=2,
              train_max_steps=3, log_every=1)  # fmt: skip


def fast_amp(dev: torch.device) -> str | None:
    """The fast settings' autocast: bf16 on CUDA; fp32 elsewhere (bf16 on a CPU without bf16 units is
    several times slower than fp32, and `alexnet train --fast` ignores it there too)."""
    return "bf16" if dev.type == "cuda" else None


def _utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _driver() -> str | None:
    """The NVIDIA driver version from nvidia-smi, None where there is none."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip().splitlines()[0] if out.strip() else None


def stage_env(dev: torch.device) -> dict:
    """Machine, versions and date; `slug` names the results folder (benchmarks/<slug>)."""
    env = environment(dev)
    cuda = dev.type == "cuda"
    date = _utc_now()
    name = torch.cuda.get_device_name(dev) if cuda else f"cpu-{env['machine']}"
    env.update({
        "date": date,
        "gpu": name if cuda else None,
        "gpu_memory_gib": round(torch.cuda.get_device_properties(dev).total_memory / 2**30, 1) if cuda else None,
        "driver": _driver() if cuda else None,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "slug": f"{date[:10]}_{re.sub(r'[^A-Za-z0-9]+', '-', name).strip('-')}",
    })  # fmt: skip
    return env


def stage_pipeline(dev: torch.device, s: Sizes, data: str) -> dict:
    """The device data path against a fixed batch on the device (bench pipeline's contenders), with
    train --fast's compiled step on CUDA; timed eagerly, the reason recorded, if compiling fails."""
    cuda = dev.type == "cuda"

    def bench(compile: bool) -> dict:
        return run_pipeline_bench(data=data, device=str(dev), batch=s.batch, crop=s.crop, workers=s.workers,
                                  steps=s.pipe_steps, warmup=min(1, s.warmup), repeats=s.pipe_repeats,
                                  amp=fast_amp(dev), channels_last=True, compile=compile, paths=["device"])  # fmt: skip

    fallback = None
    try:
        r = bench(cuda)
    except Exception as exc:  # noqa: BLE001 - see first_call_or_eager; anything but compiling fails eagerly too
        if not cuda:
            raise
        fallback = f"torch.compile failed, timed eagerly: {type(exc).__name__}: {str(exc).strip()[:300]}"
        r = bench(False)
    return {"synthetic_img_s": r["synthetic_img_s"], "real_img_s": r["img_s"]["device"],
            "ratio": r["img_s"]["device"] / r["synthetic_img_s"], "path": "device", "batch": s.batch,
            "workers": r["workers"], "steps_per_round": r["steps_per_round"], "data": r["data"], "config": r["config"],
            "decoder": r["decoder"], "eager_fallback": fallback}  # fmt: skip


def stage_infer(dev: torch.device, s: Sizes) -> dict:
    """bench infer with ours fast: bf16 + channels_last (+ a CUDA graph on CUDA)."""
    r = run_infer_bench(device=str(dev), batch=s.infer_batch, amp=fast_amp(dev), channels_last=True,
                        graphs=dev.type == "cuda", warmup=s.warmup, repeats=s.repeats,
                        latency_repeats=s.latency_repeats)  # fmt: skip
    keep = (
        "batch",
        "config",
        "ours_img_s",
        "torchvision_img_s",
        "throughput_ratio",
        "ours_latency_ms",
        "torchvision_latency_ms",
        "latency_ratio",
        "torchvision_bf16_cl_img_s",
        "torchvision_bf16_cl_latency_ms",
    )
    return {k: r[k] for k in keep if k in r}


def steady_img_s(records: list[dict]) -> float | None:
    """Median img/s of train's step records after the first (which includes compilation); None
    without at least two records."""
    rates = [r["img_s"] for r in records if r.get("kind") == "step"][1:]
    return median(rates) if rates else None


def train_run_settings(dev: torch.device, s: Sizes) -> list[str]:
    """train_run's --set values: the generated set has no val split to plateau on, and its short
    epochs would each write a 490 MB last.pt and best.pt, so epoch-end saves are off."""
    sets = [f"data.batch_size={s.train_batch}", f"data.crop={s.crop}", "train.epochs=100000",
            f"train.log_every={s.log_every}", f"train.device={dev}",
            "schedule.name=constant", "train.checkpoint_epochs=0"]  # fmt: skip
    if s.workers is not None:  # unset: train's own default, as `train --fast` runs
        sets.append(f"data.workers={s.workers}")
    if s.train_max_steps is not None:
        sets.append(f"train.max_steps={s.train_max_steps}")
    return sets


def stage_train_run(dev: torch.device, s: Sizes, data: str, run_dir: Path) -> dict:
    """`python -m alexnet train DATA --fast` for s.train_seconds (Ctrl-C then, as a user would:
    train saves last.pt and exits 130), or until s.train_max_steps."""
    sets = train_run_settings(dev, s)
    cmd = [sys.executable, "-m", "alexnet", "train", data, "--out", str(run_dir), "--fast", "--progress", "lines"]
    cmd += [a for kv in sets for a in ("--set", kv)]
    shutil.rmtree(run_dir, ignore_errors=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [_repo_root(), os.environ.get("PYTHONPATH")])))
    log = run_dir.parent / "train_run.log"
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            rc = _run_for(proc, run_dir / "log.jsonl", s.train_seconds)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    seconds = time.perf_counter() - start
    records = _records(run_dir / "log.jsonl")
    if (run_dir / "log.jsonl").is_file():  # keep the log; the run folder (checkpoints) goes
        shutil.copyfile(run_dir / "log.jsonl", run_dir.parent / "train_run.jsonl")
    shutil.rmtree(run_dir, ignore_errors=True)
    img_s = steady_img_s(records)
    if img_s is None:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        raise UserError(f"alexnet train logged fewer than two step records in {seconds:.0f} s (exit {rc}): "
                        + " | ".join(tail))  # fmt: skip
    steps = [r for r in records if r.get("kind") == "step"]
    # train falls back to eager itself when compiling fails, and says so in one line
    fallback = next((line.strip() for line in log.read_text(errors="replace").splitlines()
                     if "torch.compile failed" in line), None)  # fmt: skip
    return {"img_s": img_s, "eager_fallback": fallback, "paper_recipe_hours": PAPER_EPOCHS * IMAGENET_TRAIN_IMAGES / img_s / 3600,
            "batch": s.train_batch, "seconds": seconds, "workers": s.workers if s.workers is not None else
            default_loader_workers(dev, batch_bytes=s.train_batch * 3 * s.crop * s.crop * 4), "steps": steps[-1]["step"], "step_records": len(steps),
            "exit_code": rc, "command": " ".join(cmd[1:]), "log": str(log),
            "records": str(run_dir.parent / "train_run.jsonl"),
            "note": "the generated set has 10 classes: fc8 is 4096x10, not 4096x1000 (0.6% fewer MACs)"}  # fmt: skip


def _run_for(proc: subprocess.Popen, log: Path, seconds: float, *, min_records: int = 5, grace: float = 60.0) -> int:
    """Let `proc` (alexnet train) run `seconds`, or up to `grace` more until its log holds
    `min_records` step records (a slow first compilation), then Ctrl-C it as a user would (train
    saves last.pt and exits 130); killed if it has not stopped 60 s later. Returns its exit status."""
    start = time.perf_counter()
    while proc.poll() is None:
        elapsed = time.perf_counter() - start
        if elapsed >= seconds + grace or (elapsed >= seconds and len(
                [r for r in _records(log) if r.get("kind") == "step"]) >= min_records):  # fmt: skip
            proc.send_signal(signal.SIGINT)
            try:
                return proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                return proc.wait()
        time.sleep(1.0)
    return proc.returncode


def _records(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line cut by the interrupt
    return out


def _repo_root() -> str:
    return str(Path(__file__).resolve().parents[2])


_SUMMARY = re.compile(r"\d+ (passed|failed|errors?|skipped|deselected)\b.* in \d+(\.\d+)?s")


def stage_tests(timeout: float, files: tuple[str, ...] = GPU_TEST_FILES) -> dict:
    """pytest -m gpu over `files` (relative to the repository), one subprocess with its own `timeout`
    per file, so that a file that cannot be imported or runs out of time costs only its own tests.
    Counts are summed from each run's summary line."""
    root = Path(_repo_root())
    if not (root / "tests").is_dir():
        return {"skipped": f"no tests/ folder at {root / 'tests'} (an installed package without its repository)"}
    counts = {k: 0 for k in ("passed", "failed", "errors", "skipped")}
    failures, per_file = [], {}
    for name in files:
        if not (root / name).is_file():
            counts["errors"] += 1
            per_file[name] = {"exit_code": None, "timed_out": False, "error": "missing"}
            failures.append(f"{name}: missing")
            continue
        # addopts cleared: its "-n 2" needs pytest-xdist, which a GPU machine may not have
        cmd = [sys.executable, "-m", "pytest", "-o", "addopts=", "-m", "gpu", "-q", "-p", "no:cacheprovider", name]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=root)
            text, timed_out, rc = done.stdout + "\n" + done.stderr, False, done.returncode
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout or b""
            text, timed_out, rc = out.decode(errors="replace") if isinstance(out, bytes) else out, True, None
        lines = text.strip().splitlines()
        # the summary is pytest's last "N passed ... in S s" line, not the last line: a plugin's warning
        # on stderr (pytest-benchmark's under xdist, say) may follow it
        summary = next((line for line in reversed(lines) if _SUMMARY.search(line)), "")
        found = re.findall(r"(\d+) (passed|failed|errors?|skipped)", summary)
        for number, word in found:
            counts["errors" if word.startswith("error") else word] += int(number)
        if (timed_out or rc not in (0, 5)) and not found:  # 5: nothing collected (every test deselected)
            counts["errors"] += 1
            failures.append(f"{name}: " + ("timed out" if timed_out else (lines[-1] if lines else f"exit {rc}")))
        failures += [line.split(" ", 1)[1] for line in lines if line.startswith(("FAILED ", "ERROR "))][:20]
        per_file[name] = {"exit_code": rc, "timed_out": timed_out}
    timed_out = any(f["timed_out"] for f in per_file.values())
    return {**counts, "timed_out": timed_out, "files": per_file, "failures": failures[:40],
            "command": f"python -m pytest -o addopts= -m gpu -q FILE (each of {', '.join(files)})"}  # fmt: skip


# ------------------------------------------------------------------------------------------------
# The run and its report
# ------------------------------------------------------------------------------------------------


def run_gpu_bench(out: str | Path, *, device: str = "cuda", quick: bool = False, skip_tests: bool = False,
                  sizes: Sizes | None = None, progress: Callable[[str], None] | None = None) -> dict:  # fmt: skip
    """Run every stage, merging each into OUT/gpu.json and OUT/gpu.md as it finishes.

    Args:
        out: results folder (created). device: cuda (the point), or cpu for a check of the code.
        quick: toy sizes (QUICK) and no tests stage. skip_tests: leave pytest out.
    Returns the gpu.json dict. A stage that raises records {"error": ...} and the run goes on.
    """
    dev = resolve_device(device)
    if dev.type != "cuda" and not quick and sizes is None:
        raise UsageError(
            f"--device {dev.type} without --quick: the GPU sizes would take hours here; add --quick "
            "(toy sizes, a check of the code) or run on a CUDA machine"
        )
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: is a file; give a folder for gpu.json and gpu.md")
    out.mkdir(parents=True, exist_ok=True)
    s = sizes or (QUICK if quick else Sizes())
    say = progress or (lambda m: None)
    result: dict = {"quick": quick, "device": str(dev), "sizes": asdict(s), "stages_s": {}, "errors": {}}
    work = out / "work"
    data: str | None = None

    def dataset() -> str:
        nonlocal data
        if data is None:
            shutil.rmtree(work / "set", ignore_errors=True)
            say(f"generating {s.images} JPEGs at {s.image_size} px in {work}")
            data = generate_set(str(work), n=s.images, size=s.image_size,
                                workers=None if s.workers is None else max(1, s.workers))  # fmt: skip
        return data

    stages = {
        "tests": lambda: ({"skipped": "quick mode: the GPU tests need CUDA and minutes; run without --quick"}
                          if quick else {"skipped": "--skip-tests"} if skip_tests else stage_tests(s.tests_timeout)),
        "env": lambda: stage_env(dev),
        "matmul_tflops": lambda: matmul_tflops(dev, torch.bfloat16, size=s.matmul, repeats=s.repeats),
        "train_step": lambda: stage_train_step(dev, s, result.get("matmul_tflops") or float("nan"),
                                               (result.get("env") or {}).get("gpu")),
        "pipeline": lambda: stage_pipeline(dev, s, dataset()),
        "infer": lambda: stage_infer(dev, s),
        "train_run": lambda: stage_train_run(dev, s, dataset(), work / "train_run"),
    }  # fmt: skip
    assert tuple(stages) == STAGES
    try:
        for name, fn in stages.items():
            say(f"stage {name} ...")
            t0 = time.perf_counter()
            try:
                result[name] = fn()
            except Exception as exc:  # noqa: BLE001 - one failed stage must not lose the others
                result[name] = None
                result["errors"][name] = f"{type(exc).__name__}: {str(exc).strip()[:500]}"
                say(f"stage {name} failed: {result['errors'][name]}")
            result["stages_s"][name] = time.perf_counter() - t0
            save(out, result)
            say(f"stage {name} done in {result['stages_s'][name]:.0f} s -> {out / 'gpu.json'}")
    finally:
        shutil.rmtree(work / "set", ignore_errors=True)  # the generated images; the train log stays
        shutil.rmtree(work / "train_run", ignore_errors=True)  # its checkpoints: half a GB each
    return result


def save(out: Path, result: dict) -> None:
    write_json(out / "gpu.json", result)
    write_text(out / "gpu.md", markdown(result))
    mark_output(out, "bench-gpu")  # what a later --force may replace


def load(out: str | Path) -> dict:
    return read_json(Path(out) / "gpu.json")
