"""One rule resolves a run's config (alexnet/training/config.py): the base (defaults, or the saved
config on --resume) <- --fast's preset (CUDA only) <- --config FILE <- flags and --set in command-line
order, the later winning. Each flag with a --set twin, given both ways round on one command line."""

import json
from pathlib import Path

import pytest
import torch

from alexnet.cli import build_parser
from alexnet.errors import UserError
from alexnet.training import config as training_config
from alexnet.training.config import TrainConfig, resolve

ROOT = Path(__file__).resolve().parents[1]


def _resolved(tmp_path, *argv) -> TrainConfig:
    """The config `alexnet train DATA --out RUN ARGV...` trains with (the arguments the CLI passes)."""
    args = build_parser(["train"]).parse_args(["train", "data", "--out", str(tmp_path / "run"), *argv])
    return resolve(args.out, config_file=args.config, overrides=args.overrides, fast=args.fast).config


# (flag and its argument, the --set twin with another value, the key, the flag's value, the twin's)
TWINS = [
    (["--model", "alexnet_ungrouped"], "model.name=alexnet_one_gpu", "model.name", "alexnet_ungrouped", "alexnet_one_gpu"),
    (["--amp", "bf16"], "train.amp=off", "train.amp", "bf16", "off"),
    (["--channels-last"], "train.channels_last=false", "train.channels_last", True, False),
    (["--compile"], "train.compile=false", "train.compile", True, False),
    (["--freeze", "conv2"], "model.freeze=fc6", "model.freeze", "conv2", "fc6"),
]  # fmt: skip


@pytest.mark.parametrize("flag, twin, key, flag_value, twin_value", TWINS, ids=[t[0][0] for t in TWINS])
def test_a_flag_and_its_set_twin_the_later_wins(tmp_path, flag, twin, key, flag_value, twin_value):
    section, name = key.split(".")
    flag_last = _resolved(tmp_path, "--set", twin, *flag)
    set_last = _resolved(tmp_path, *flag, "--set", twin)
    assert getattr(getattr(flag_last, section), name) == flag_value
    assert getattr(getattr(set_last, section), name) == twin_value
    # and both beat the config file, which beats the defaults
    (tmp_path / "c.toml").write_text(f"[{section}]\n{name} = {json.dumps(twin_value)}\n")
    assert (
        getattr(getattr(_resolved(tmp_path, "--config", str(tmp_path / "c.toml"), *flag), section), name) == flag_value
    )


def test_init_from_and_its_set_twin_the_later_is_the_source_read(tmp_path):
    """--init-from is resolved with the rest: the source read (here: named as missing) is the later one's."""
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    for argv, read, not_read in (
        (["--set", f"model.init_from={json.dumps(str(a))}", "--init-from", str(b)], b, a),
        (["--init-from", str(b), "--set", f"model.init_from={json.dumps(str(a))}"], a, b),
    ):
        with pytest.raises(UserError) as info:
            _resolved(tmp_path, *argv)
        message = str(info.value)
        assert message.startswith("--init-from") and str(read) in message and str(not_read) not in message


def test_fast_is_a_preset_under_the_file_and_every_setting(tmp_path, monkeypatch, capsys):
    """On CUDA --fast's values fill in what nothing else sets, wherever --fast stands; off CUDA it
    changes nothing (one note)."""
    assert _resolved(tmp_path, "--fast", "--set", "train.amp=off") == _resolved(tmp_path, "--set", "train.amp=off")
    assert "--fast ignored on cpu" in capsys.readouterr().err
    monkeypatch.setattr(training_config, "pick_device", lambda *a, **k: torch.device("cuda", 0))
    fast = _resolved(tmp_path, "--fast")
    assert (fast.train.amp, fast.train.compile, fast.train.channels_last, fast.data.pipeline) == (
        "bf16", True, True, "device",
    )  # fmt: skip
    for argv in (["--fast", "--set", "train.amp=off"], ["--set", "train.amp=off", "--fast"]):
        assert _resolved(tmp_path, *argv).train.amp == "off"  # --set wins in both orders
    for argv in (["--fast", "--amp", "fp16"], ["--amp", "fp16", "--fast"]):
        assert _resolved(tmp_path, *argv).train.amp == "fp16"  # so does a flag
    (tmp_path / "c.toml").write_text("[train]\ncompile = false\n")
    from_file = _resolved(tmp_path, "--fast", "--config", str(tmp_path / "c.toml"))
    assert not from_file.train.compile and from_file.train.amp == "bf16"  # the file beats the preset


def test_resume_takes_the_saved_config_as_the_base(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"")  # resolve only looks whether it exists
    saved = resolve(run, overrides=["train.epochs=7", "train.amp=bf16"]).config
    (run / "config.json").write_text(json.dumps(training_config.cfg.to_dict(saved)))
    args = build_parser(["train"]).parse_args(["train", "d", "--out", str(run), "--resume", "--compile",
                                               "--set", "train.epochs=9"])  # fmt: skip
    config = resolve(args.out, overrides=args.overrides, resume=args.resume).config
    assert (config.train.epochs, config.train.amp, config.train.compile) == (9, "bf16", True)


def test_the_rule_is_written_in_help_and_docs(capsys):
    with pytest.raises(SystemExit):
        build_parser(["train", "--help"]).parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--fast's preset <- --config FILE.toml <- --set section.key=value and the flags" in text
    assert "in the order given on the command line" in text
    docs = " ".join((ROOT / "docs" / "training.md").read_text(encoding="utf-8").split())
    assert "`--fast`'s preset (CUDA only) ← `--config FILE.toml` ← `--set` and the flags" in docs
    assert "in the order given on the command line (the later wins)" in docs
