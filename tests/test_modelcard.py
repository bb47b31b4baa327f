"""The model card: made from one checkpoint, and every number in it is that checkpoint's.

A small registered net (two convolutions, two fully-connected layers) trains three epochs from scratch
on 3 generated classes (its best.pt is epoch 1's, its last.pt epoch 3's: two checkpoints to mix up),
then is fine-tuned onto 6 other classes (new head, conv1 frozen, fc4 at 10x the rate). Each card is
read back: every number outside backticks must be one the checkpoint (or its own log record, or an
evaluation of that very file) holds, formatted as the card formats it.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from torch import nn

from alexnet import config as cfg
from alexnet.checkpoint import load_checkpoint
from alexnet.evaluation import evaluate_checkpoints
from alexnet.export import export
from alexnet.io import write_json
from alexnet.model import MODELS
from alexnet.training.config import TrainConfig
from alexnet.training.loop import train

NUMBER = re.compile(r"(?<![\w.-])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:e[+-]?\d+)?(?![\w])")
CONSTANTS = {"0", "255"}  # "0-255 pixels", "x / 255": the scale of 8-bit images, not a figure


class Small(nn.Module):
    """(N, 3, H, W) -> (N, C): conv1, conv2, fc3, fc4."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 5, stride=2), nn.ReLU(), nn.MaxPool2d(3, 2), nn.Conv2d(16, 32, 3), nn.ReLU()
        )
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, num_classes)
        )

    def forward(self, x):
        return self.classifier(self.features(x))


def _config(*overrides):
    base = ["data.batch_size=6", "data.workers=0", "data.crop=48", "model.name=card_small", "data.normalize=channel",
            "train.stall_steps=0", "schedule.name=constant", "optim.lr=0.02", "train.log_every=100"]  # fmt: skip
    return cfg.load_config(TrainConfig, None, base + list(overrides))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, prepared_shapes):
    """(scratch run, fine-tuned run): 3 epochs each on 64-px generated sets (3 classes, then 6)."""
    MODELS["card_small"] = (lambda num_classes=10: Small(num_classes), "a small net (tests)")
    root = tmp_path_factory.mktemp("cards")
    three = prepared_shapes(dict(classes=3, per_class=6, val_per_class=2, seed=0, size=64), size=64)
    six = prepared_shapes(dict(classes=6, per_class=2, val_per_class=2, seed=1, size=64), size=64)
    torch.manual_seed(0)
    train(three, root / "a", _config("train.epochs=3", "optim.lr=0.0"), progress="off")  # flat: best is epoch 1
    last = root / "a" / "checkpoints" / "last.pt"
    write_json(root / "a" / "eval.json", [evaluate_checkpoints([str(last)], three, "val", 1, workers=0)])
    tuned = _config("train.epochs=2", f"model.init_from={last}", "model.freeze=conv1", "optim.lr_mult.fc4=10")
    train(six, root / "b", tuned, progress="off")
    yield root / "a", root / "b"
    MODELS.pop("card_small", None)


def _numbers(text: str) -> list[str]:
    """The numbers of a card outside `code spans` (paths, options and commands live inside them)."""
    return NUMBER.findall(re.sub(r"`[^`]*`", "", text))


def _expected(state: dict, run, check: str | None = None) -> set[str]:
    """Every number the card may print for this checkpoint, formatted as the card formats it: the
    oracle, computed here from the checkpoint file, its own log.jsonl record and its evaluations."""
    config, classes = state["config"], len(state["classes"]["ids"])
    out = {
        f"{sum(v.numel() for v in state['model'].values()):,}",
        str(classes),
        str(state["epoch"]),
        str(state["step"]),
    }
    out |= {str(state["preprocess"]["crop"]), "64"}  # the crop; the prepared size (resize and central square)
    stats = state["stats"]
    out |= {f"{v:.4f}" for v in list(stats["channel_mean"]) + list(stats["channel_std"])}
    o, d, t, m = config["optim"], config["data"], config["train"], config["model"]
    out |= {f"{o['lr']:g}", f"{o['momentum']:g}", f"{o['weight_decay']:g}", str(d["batch_size"]), str(d["crop"])}
    out |= {str(t["epochs"]), str(t["seed"]), f"{m['dropout']:g}"} | {f"{v:g}" for v in o["lr_mult"].values()}
    for line in (run / "log.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["kind"] == "epoch" and (r["epoch"], r["step"]) == (state["epoch"], state["step"]):
            out |= {str(r["epoch"]), f"{100 * r['val_top1_error']:.2f}", f"{r['val_loss']:.4f}"}
            out |= {f"{100 * r['val_top5_error']:.2f}"} if classes > 5 else set()
    for r in json.loads((run / "eval.json").read_text()) if (run / "eval.json").is_file() else []:
        if r["models"] == [state["path"]]:
            out |= {str(r["crops"]), str(r["n"]), f"{100 * r['top1_error']:.2f}", f"{r['loss']:.4f}"}
            out |= {f"{100 * r['top5_error']:.2f}"} if classes > 5 else set()
    return out | CONSTANTS | set(_numbers(check or ""))


def _card(source, tmp_path, name: str) -> str:
    export(source if isinstance(source, dict) else str(source), "safetensors", str(tmp_path / name))
    return (tmp_path / f"{name}.MODEL_CARD.md").read_text()


@pytest.mark.parametrize("which", ["best", "last"])
def test_every_number_in_the_card_is_the_checkpoints_own(runs, tmp_path, which):
    """best.pt (epoch 1) and last.pt (epoch 3) of one run: each card names its checkpoint and gives its
    own epoch's validation only; the evaluation of last.pt appears on last.pt's card only."""
    run = runs[0]
    path = run / "checkpoints" / f"{which}.pt"
    state = load_checkpoint(path)
    card = _card(path, tmp_path, f"{which}.safetensors")
    stray = [n for n in _numbers(card) if n not in _expected(state, run)]
    assert not stray, f"numbers in the {which}.pt card that are not the checkpoint's: {stray}\n{card}"
    assert state["epoch"] == (1 if which == "best" else 3)  # two different checkpoints
    assert (
        f"the run's {which} checkpoint" in card and f"saved after epoch {state['epoch']}, step {state['step']}" in card
    )
    assert f"validation after epoch {state['epoch']} " in card
    assert ("`alexnet evaluate` of this file" in card) == (which == "last")
    mean = ", ".join(f"{c} {v:.4f}" for c, v in zip("RGB", state["stats"]["channel_mean"]))
    assert f"mean {mean}; std" in card  # the numbers themselves, not only the formula
    assert "top-5 error not applicable (3 classes" in card  # 3 classes: every label is in the top five
    assert "trained from scratch: init" in card and "`alexnet prepare` over its training split" in card


def test_a_fine_tuned_card_says_where_it_started_what_is_frozen_and_the_rates(runs, tmp_path):
    run = runs[1]
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    card = _card(run / "checkpoints" / "last.pt", tmp_path, "tuned.safetensors")
    assert not [n for n in _numbers(card) if n not in _expected(state, run)], card
    source = runs[0] / "checkpoints" / "last.pt"
    assert f"fine-tuned from `{source}` (`--init-from`)" in card
    assert "every layer up to and including conv1 (`--freeze`)" in card
    assert "learning-rate multipliers (`optim.lr_mult`): fc4 x 10" in card
    assert "recipe: optimizer paper, lr 0.02, momentum 0.9, weight decay 0.0005; schedule constant; batch 6" in card
    assert "6 classes:" in card and "top-5 error not applicable" not in card  # 6 classes: top-5 applies


def test_the_numbers_oracle_catches_a_stray_figure(runs, tmp_path):
    """The check above would fail on a figure of another checkpoint (last.pt's step on best.pt's card)."""
    run = runs[0]
    state = load_checkpoint(run / "checkpoints" / "best.pt")
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    card = _card(run / "checkpoints" / "best.pt", tmp_path, "best.safetensors")
    mixed = card + f"\n- {last['step']} steps done\n"
    assert str(last["step"]) not in _expected(state, run)
    assert [n for n in _numbers(mixed) if n not in _expected(state, run)] == [str(last["step"])]


def test_mean_image_and_imported_cards_give_their_numbers(tmp_path, monkeypatch):
    """The paper's normalisation: the mean image's size and channel averages; a Caffe import: its
    BGR mean and its source."""
    monkeypatch.setitem(MODELS, "card_small", (lambda num_classes=10: Small(num_classes), "a small net (tests)"))
    mean = np.random.default_rng(0).uniform(80, 160, (72, 72, 3)).astype(np.float32)
    state = {
        "model": Small(3).state_dict(), "model_name": "card_small", "model_kwargs": {"num_classes": 3},
        "classes": {"ids": ["a", "b", "c"], "names": ["apple", "bus", "cloud"]}, "stats": {"mean_image": mean},
        "preprocess": {"crop": 67, "normalize": "mean_image", "size": 72}, "config": {}, "path": "net.pt",
    }  # fmt: skip
    card = _card(state, tmp_path, "net.safetensors")
    averages = ", ".join(f"{c} {v:.2f}" for c, v in zip("RGB", mean.reshape(-1, 3).astype(np.float64).mean(0)))
    assert f"minus a 72 x 72 mean image on 0-255 (channel averages {averages};" in card
    assert "shorter side to 72, then the central 72 x 72" in card and "centre crop 67 x 67" in card
    assert "- not recorded in the checkpoint" in card  # a hand-made checkpoint: no claim about its training

    caffe = {**state, "stats": {"caffe_mean_bgr": [104.0, 117.0, 123.0]},
             "preprocess": {"crop": 67, "normalize": "caffe", "resize": "warp", "size": 72},
             "config": {"imported_from": "/x/bvlc_alexnet.caffemodel", "source": "caffe"}}  # fmt: skip
    card = _card(caffe, tmp_path, "caffe.safetensors")
    assert "imported from caffe's weights: `/x/bvlc_alexnet.caffemodel`" in card
    assert "the whole image to 72 x 72, aspect ratio ignored" in card
    assert "minus the mean B 104.00, G 117.00, R 123.00: Caffe's ImageNet mean (BVLC)" in card
