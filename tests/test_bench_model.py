"""`alexnet bench model` runs at a tiny size and reports consistent JSON."""

import json
import os

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
    # the paper's recipe at the measured rate (1,281,167 ImageNet images, 90 epochs)
    assert out["imagenet_epoch_s"] == pytest.approx(1_281_167 / out["ours_img_s"])
    assert out["paper_recipe_hours"] == pytest.approx(90 * out["imagenet_epoch_s"] / 3600)


@pytest.mark.slow  # about 11 s; test_bench_model_cpu_json covers the command in the default suite
def test_bench_model_cuda_config_on_cpu(capsys):
    """The fast path's pieces that run on a CPU (bf16 autocast, channels_last, PaperSGD foreach)."""
    assert (
        main(
            [
                "bench",
                "model",
                "--batch",
                "2",
                "--warmup",
                "1",
                "--repeats",
                "1",
                "--amp",
                "bf16",
                "--channels-last",
                "--optimizer",
                "paper",
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["config"] == {
        "amp": "bf16",
        "channels_last": True,
        "compile": False,
        "compile_mode": None,
        "optimizer": "paper",
    }
    assert "speedup_vs_torchvision_bf16" not in out  # a CUDA-only baseline
    assert out["ours_img_s"] == pytest.approx(2 / out["ours_step_s"])
    assert out["ours_step_s"] == pytest.approx(out["step_times_s"]["ours"][0])  # the median of one round
    assert out["ratio"] == pytest.approx(out["ours_step_s"] / out["torchvision_step_s"])


@pytest.mark.parametrize("args", [["--repeats", "0"], ["--warmup", "-1"], ["--batch", "0"]])
def test_bench_model_bad_counts_are_one_line(capsys, args):
    assert main(["bench", "model", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("alexnet bench: error: --") and "Traceback" not in err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_bench_model_without_cuda_is_a_one_line_error(capsys):
    assert main(["bench", "model", "--device", "cuda", "--batch", "1"]) == 2
    err = capsys.readouterr().err
    assert "CUDA is not available" in err and err.count("\n") == 1


def test_competing_load_runs_during_the_body_and_is_gone_after():
    from alexnet.bench.common import competing_load

    with competing_load(1) as pid:
        assert pid is not None and os.path.exists(f"/proc/{pid}")
        with open(f"/proc/{pid}/stat") as f:
            assert f.read().split()[2] in "RSD"  # alive (running or between slices), not a zombie
    assert not os.path.exists(f"/proc/{pid}")  # killed and reaped
    with competing_load(0) as none:
        assert none is None


def test_bench_model_load_is_recorded(capsys):
    assert main(["bench", "model", "--batch", "1", "--warmup", "0", "--repeats", "1", "--load", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["load_threads"] == 1
    assert out["ratio"] == pytest.approx(out["ours_step_s"] / out["torchvision_step_s"])
    assert main(["bench", "model", "--load", "-1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--load -1" in err
