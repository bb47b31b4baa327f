"""docs/architecture.md names every module of the package, and only modules that exist: its life of
one training step and its table are the map a new contributor reads first."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXT = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
NAMED = set(re.findall(r"`(alexnet/[\w/]+\.py)`", TEXT))


def test_every_module_named_exists():
    missing = sorted(path for path in NAMED if not (ROOT / path).is_file())
    assert not missing, f"docs/architecture.md names modules that do not exist: {missing}"


def test_every_module_of_the_package_is_named():
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "alexnet").rglob("*.py")}
    unnamed = sorted(modules - NAMED)
    assert not unnamed, f"docs/architecture.md does not name: {unnamed}"


def test_the_life_of_a_step_comes_first_from_the_command_to_the_saved_checkpoint():
    """The first section follows one step: the command, the config, the plan, the step and its
    update, the save (each where the step first meets it)."""
    life = TEXT.split("\n## ")[1]
    assert life.startswith("The life of one training step")
    order = [life.index(mark) for mark in (
        "`alexnet/cli/train.py`", "`alexnet/training/loop.py`", "`alexnet/training/config.py`",
        "`alexnet/training/plan.py`", "`Stepper.__call__`", "`PaperSGD.step`", "`checkpoint_payload`",
        "RUN/checkpoints/last.pt atomically",
    )]  # fmt: skip
    assert order == sorted(order)
