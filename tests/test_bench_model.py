"""`alexnet bench model` runs at a tiny size and reports consistent JSON."""

import json

import pytest

from alexnet.cli import main


def test_bench_model_cpu_json(capsys):
    code = main(["bench", "model", "--batch", "2", "--warmup", "1", "--repeats", "2", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ours_img_s"] > 0 and out["torchvision_img_s"] > 0
    assert out["ratio"] == pytest.approx(out["ours_step_s"] / out["torchvision_step_s"])
    assert out["ours_img_s"] == pytest.approx(2 / out["ours_step_s"])
    assert len(out["step_times_s"]["ours"]) == 2
    assert out["env"]["torch"]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_bench_model_without_cuda_is_a_one_line_error(capsys):
    assert main(["bench", "model", "--device", "cuda", "--batch", "1"]) == 2
    err = capsys.readouterr().err
    assert "CUDA is not available" in err and err.count("\n") == 1
