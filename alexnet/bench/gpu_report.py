"""`bench gpu`'s report: gpu.json as a Markdown section ready for BENCHMARKS.md (OUT/gpu.md)."""

from __future__ import annotations


def _fmt(value, spec: str = ",.0f", unit: str = "") -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "not measured"
    return f"{value:{spec}}{unit}"


def markdown(r: dict) -> str:
    """gpu.json as a section ready for BENCHMARKS.md: one table, the command and the machine."""
    env = r.get("env") or {}
    ts, pipe, inf, run, tests = (r.get(k) or {} for k in ("train_step", "pipeline", "infer", "train_run", "tests"))
    sz = r["sizes"]
    machine = env.get("gpu") or env.get("processor") or r.get("device")
    quick = " (quick: toy sizes, the figures mean nothing)" if r["quick"] else ""
    command = "PYTHONPATH=. python -m alexnet bench gpu --out OUT"
    command += f" --quick --device {r['device']}" if quick else ""
    img = lambda v: _fmt(v, ",.0f", " img/s")  # noqa: E731
    cfg = ts.get("config") or {}
    step_how = f"{cfg.get('amp') or 'fp32'}, compile {cfg.get('compile') or 'off'}, {cfg.get('optimizer')}"
    if ts.get("eager_fallbacks"):
        step_how += "; eager fallbacks: " + "; ".join(f"{k}: {v}" for k, v in ts["eager_fallbacks"].items())
    rows = [
        (f"bf16 matmul {sz['matmul']}³", _fmt(r.get("matmul_tflops"), ".1f", " TFLOP/s"), f"median of {sz['repeats']}"),
        (f"training step, ours as `train --fast` runs it, {cfg.get('input')} px", img(ts.get("ours_img_s")),
         f"batch {ts.get('batch')}, {step_how}; medians of {sz['repeats']} alternating rounds after "
         f"{sz['warmup']} warm-up"),
        (f"training step, ours at {cfg.get('same_input')} px", img(ts.get("ours_same_input_img_s")), "same rounds"),
        (f"training step, torchvision eager fp32, {cfg.get('torchvision_input')} px",
         img(ts.get("torchvision_fp32_img_s")), f"{cfg.get('torchvision_optimizer')}; same rounds"),
        ("training step, torchvision eager bf16 + channels_last", img(ts.get("torchvision_bf16_img_s")),
         "the reference scripts' way; same rounds"),
        ("training step, torchvision compiled bf16 + channels_last", img(ts.get("torchvision_bf16_compiled_img_s")),
         "its best settings; same rounds"),
        ("ours / torchvision eager bf16, both at the same input", _fmt(ts.get("ratio_same_input_vs_eager_bf16"),
         ".2f", "×"), "goal ≥ 2×"),
        ("ours / torchvision compiled bf16, both at the same input",
         _fmt(ts.get("ratio_same_input_vs_compiled_bf16"), ".2f", "×"), "goal ≥ 0.9× (its net has no LRN, no groups)"),
        ("ours at 227 px / torchvision compiled bf16 at 224 px", _fmt(ts.get("ratio_paper_input_vs_compiled_bf16"),
         ".2f", "×"), "each net's own input size"),
        ("MFU against the measured matmul rate", _fmt(ts.get("mfu_measured"), ".1%"),
         f"{_fmt(ts.get('train_flops_per_image'), ',')} FLOPs per training image, counted exactly"),
        ("MFU against the published dense bf16 peak", _fmt(ts.get("mfu_published"), ".1%")
         if ts.get("published_peak_tflops") else "no published peak known for this device",
         f"peak {ts['published_peak_tflops']:,.0f} TFLOP/s; goal ≥ 35 %" if ts.get("published_peak_tflops")
         else "goal ≥ 35 %"),
        ("pipeline: device path / fixed batch on the GPU",
         f"{_fmt(pipe.get('ratio'), '.2f')} ({_fmt(pipe.get('real_img_s'))} / {img(pipe.get('synthetic_img_s'))})",
         f"{pipe.get('workers')} workers, generated {sz['image_size']}-px JPEGs; goal ≥ 0.9"),
        (f"inference batch {inf.get('batch')}: ours / torchvision fp32",
         f"{_fmt(inf.get('ours_img_s'))} / {img(inf.get('torchvision_img_s'))}",
         "ours bf16 + channels_last + CUDA graph"),
        ("inference batch 1 latency: ours / torchvision fp32",
         f"{_fmt(inf.get('ours_latency_ms'), '.2f')} / {_fmt(inf.get('torchvision_latency_ms'), '.2f', ' ms')}",
         f"median of {sz['latency_repeats']}"),
        ("`alexnet train --fast`, steady state", img(run.get("img_s")),
         f"batch {run.get('batch')}, {_fmt(run.get('seconds'), '.0f', ' s')} run, median of step records after "
         "the first"),
        ("paper's 90 epochs × 1,281,167 images at that rate", _fmt(run.get("paper_recipe_hours"), ".1f", " h"),
         "the paper: 5–6 days on two GTX 580"),
        ("GPU tests (`pytest -m gpu`)", _tests_cell(tests), ""),
    ]  # fmt: skip
    lines = [f"### GPU: {machine}, {env.get('date', '?')[:10]}{quick}", "",
             f"`{command}`; torch {env.get('torch', '?')}, torchvision {env.get('torchvision', '?')}, "
             f"CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}, driver {env.get('driver')}.", "",
             "| figure | value | how |", "|---|---|---|"]  # fmt: skip
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    if r.get("errors"):
        lines += ["", "Stages that failed: " + "; ".join(f"{k}: {v}" for k, v in r["errors"].items())]
    return "\n".join(lines) + "\n"


def _tests_cell(tests: dict) -> str:
    if not tests:
        return "not run"
    if "skipped" in tests and isinstance(tests["skipped"], str):
        return f"not run ({tests['skipped']})"
    text = f"{tests['passed']} passed, {tests['failed']} failed, {tests['errors']} errors, {tests['skipped']} skipped"
    return text + (" (timed out)" if tests.get("timed_out") else "")
