"""One convention across the commands and the Python API: exit statuses, parser errors naming the
subcommand, --quiet and --force wherever they apply, a fast start, piped input, errors that are the
built-in exceptions they mean and name arguments the way their caller gave them."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import alexnet
from alexnet.checkpoint import save_checkpoint
from alexnet.cli import COMMAND_HELP, build_parser, main
from alexnet.model import AlexNet

ROOT = Path(__file__).resolve().parents[1]


def _run(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT)}, timeout=120
    )


def _subparsers(parser) -> dict:
    """{command name: parser} of a parser's subcommands (nested ones as "experiment ablations")."""
    out = {}
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                out[name] = sub
                out.update({f"{name} {k}": v for k, v in _subparsers(sub).items()})
    return out


def _options(parser) -> set[str]:
    return {flag for action in parser._actions for flag in action.option_strings}


# ---------------------------------------------------------------- start-up


def test_help_and_version_do_not_import_torch():
    code = (
        "import sys\nfrom alexnet.cli import main\n"
        "for argv in (['--help'], ['--version']):\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        "print('TORCH', 'torch' in sys.modules, 'numpy' in sys.modules)"
    )
    out = _run("-c", code).stdout.decode()
    assert "TORCH False False" in out and f"alexnet {alexnet.__version__}" in out
    assert "Exit status: 0 success, 1 a runtime failure" in out and "best.pt, else" in out  # documented in --help


def test_the_one_line_table_matches_the_commands():
    full = _subparsers(build_parser())
    top = {name for name in full if " " not in name}
    assert top == set(COMMAND_HELP)
    fast = _subparsers(build_parser(["--help"]))
    for name in COMMAND_HELP:  # `alexnet --help` shows what each command's own register() says
        assert fast[name].description is None or fast[name].description == COMMAND_HELP[name]
    helps = {a.dest: a.help for a in build_parser()._actions[-1]._choices_actions}
    assert helps == COMMAND_HELP


# ---------------------------------------------------------------- conventions on every parser


def test_quiet_wherever_progress_is_printed_and_force_wherever_files_are_replaced():
    parsers = _subparsers(build_parser())
    for name, parser in parsers.items():
        options = _options(parser)
        if "--progress" in options:
            assert "--quiet" in options, name
    for name in ("predict", "export", "import-torchvision", "report", "bench model", "bench infer"):
        assert "--quiet" in _options(parsers[name]), name
    writers = ("prepare", "evaluate", "features", "export", "import-torchvision", "import-caffe", "report", "demo")
    for name in (*writers, "experiment relu-vs-tanh", "experiment ablations", "bench gpu"):
        assert "--force" in _options(parsers[name]), name
    for name in ("evaluate", "features", "export", "predict"):  # what a run directory means, said in --help
        assert "best.pt" in parsers[name].format_help(), name


def test_parser_errors_name_the_subcommand_and_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "data", "--out", "run", "--tensorboard"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("alexnet train: error: unrecognized arguments: --tensorboard (see `alexnet train --help`)")
    with pytest.raises(SystemExit) as exit_:
        main(["experiment", "ablations", "--no-such-option"])
    assert exit_.value.code == 2 and capsys.readouterr().err.startswith("alexnet experiment ablations: error:")


def test_exit_statuses_usage_2_runtime_1(tmp_path, capsys):
    assert main(["predict", str(tmp_path / "missing.pt"), "x.jpg"]) == 1  # a file that is not there
    assert "no such checkpoint file" in capsys.readouterr().err
    assert main(["train", str(tmp_path), "--out", str(tmp_path / "r"), "--set", "optim.name=adam"]) == 2
    assert "--set" in capsys.readouterr().err  # the CLI keeps its wording
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "argv, kept",
    [
        (["experiment", "relu-vs-tanh", "--epochs", "1"], "result.json"),
        (["experiment", "ablations", "--epochs", "1"], "result.json"),
        (["bench", "gpu", "--device", "cpu", "--quick"], "gpu.json"),
        (["demo"], "run/log.jsonl"),
    ],
)
def test_finished_results_are_not_replaced_without_force(tmp_path, capsys, argv, kept):
    """A finished experiment, GPU measurement or demo run stays; the refusal comes before any work."""
    out = tmp_path / "out"
    made = [out / kept] + ([out / "run" / "config.json"] if argv == ["demo"] else [])
    for path in made:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("finished")
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--force" in err[0], err
    assert {p for p in out.rglob("*") if p.is_file()} == set(made)  # nothing drawn, prepared or written
    assert all(p.read_text() == "finished" for p in made)


# ---------------------------------------------------------------- predict's inputs


@pytest.fixture(scope="module")
def tiny_net(tmp_path_factory):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 67 px: resampled before fc6 (said once per process)
        model = AlexNet("paper", num_classes=3, init="kaiming", input_size=67)
    path = tmp_path_factory.mktemp("net") / "net.pt"
    save_checkpoint(path, {
        "model": model.state_dict(), "model_name": "alexnet", "model_kwargs": {"num_classes": 3, "input_size": 67},
        "classes": {"ids": ["a", "b", "c"], "names": ["apple", "bus", "cloud"]},
        "stats": {"channel_mean": [0.5] * 3, "channel_std": [0.25] * 3},
        "preprocess": {"crop": 67, "normalize": "channel", "size": 72},
    })  # fmt: skip
    return str(path)


def test_predict_dash_reads_paths_or_one_piped_image(tiny_net, tmp_path, monkeypatch, capsys):
    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 80, 3), dtype=np.uint8)).save(image)
    results = []
    for stdin in (
        io.TextIOWrapper(io.BufferedReader(io.BytesIO(f"{image}\n".encode()))),  # a list of paths
        SimpleNamespace(buffer=io.BufferedReader(io.BytesIO(image.read_bytes()))),  # `cat x.png | alexnet predict ...`
    ):
        monkeypatch.setattr(sys, "stdin", stdin)
        assert main(["predict", tiny_net, "-", "--json"]) == 0
        results += json.loads(capsys.readouterr().out)
    a, b = results
    assert a["path"] == str(image) and b["path"] == "-" and a["predictions"] == b["predictions"]
    monkeypatch.setattr(sys, "stdin", SimpleNamespace(buffer=io.BufferedReader(io.BytesIO(bytes(range(256)) * 4))))
    assert main(["predict", tiny_net, "-"]) == 2  # binary that is no image: refused in one line
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "reads image paths, one a line" in err


def test_folder_of_class_folders_points_to_recursive(tiny_net, tmp_path, capsys):
    (tmp_path / "cats").mkdir()
    Image.new("RGB", (80, 80)).save(tmp_path / "cats" / "a.png")
    assert main(["predict", tiny_net, str(tmp_path)]) == 1
    assert "add --recursive" in capsys.readouterr().err
    assert main(["predict", tiny_net, str(tmp_path), "--recursive", "--quiet"]) == 0


def test_import_torchvision_without_a_source_says_so(tmp_path, capsys):
    assert main(["import-torchvision", "--out", str(tmp_path / "tv.pt")]) == 2
    err = capsys.readouterr().err
    assert "give a state dict file" in err and "not both" not in err


# ---------------------------------------------------------------- the Python API


def test_api_train_checks_a_python_config_before_touching_the_disk(tiny_prepared, tmp_path):
    for section, key, value, words in (
        ("data", "batch_size", "big", "data.batch_size = 'big' is not a valid int"),
        ("optim", "name", "adam", "optim.name = 'adam' is not valid"),
        ("data", "batch_size", 0, "batch_size, eval_batch_size and crop must be at least 1"),
    ):
        config = alexnet.TrainConfig()
        setattr(getattr(config, section), key, value)
        with pytest.raises(ValueError, match="^config: .*" + words.replace("(", r"\(").replace(")", r"\)")) as err:
            alexnet.train(tiny_prepared, tmp_path / "run", config)
        assert "--set" not in str(err.value)
        assert not (tmp_path / "run").exists()  # nothing created
    with pytest.raises(ValueError, match=r"^progress='loud'"):
        alexnet.train(tiny_prepared, tmp_path / "run", alexnet.TrainConfig(), progress="loud")
    with pytest.raises(FileNotFoundError):
        alexnet.train(tmp_path / "nothing", tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_api_features_of_a_split_as_the_readme_calls_it(tiny_net, tiny_prepared, tmp_path):
    out = tmp_path / "feats.npz"
    summary = alexnet.features(tiny_net, tiny_prepared, "val", str(out), workers=0, device="cpu")
    assert summary["n"] == 6 and summary["dim"] == 4096 and out.is_file()
    with np.load(out) as z:  # the same vectors as TrainedNet.features on the split's prepared images
        from alexnet.data import PackedDataset, PreparedSet

        net = alexnet.load(tiny_net, device="cpu")
        images = torch.stack([PackedDataset(PreparedSet(tiny_prepared), "val")[i][0] for i in range(6)])
        np.testing.assert_allclose(z["features"], net.features(images, batch_size=4).numpy(), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match=r"^batch_size=0"):
        alexnet.features(tiny_net, tiny_prepared, "val", str(tmp_path / "x.npz"), batch_size=0)
    assert not (tmp_path / "x.npz").exists()
