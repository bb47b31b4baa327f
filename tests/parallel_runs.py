"""`torchrun --nproc_per_node=N tests/parallel_runs.py PLAN.json`: several `alexnet train` runs in one launch.

Starting torch in a process costs seconds on a loaded machine, so the layout tests run all their
multi-process trainings in one torchrun launch (and their one-process references in pytest's own
process, through `run_plan`). The process group is set up here once; `alexnet.train` joins it.

Registers "alexnet_narrow": the paper's net (two towers, LRN, dropout, the same layers and
groups) at about 1/8 of the widths, so that a step takes milliseconds instead of seconds.
"""

import json
import os
import shutil
import sys

import torch.distributed as dist

from alexnet import model
from alexnet.errors import Stopped
from alexnet.parallel import SENT
from alexnet.training.loop import train

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import faults  # noqa: E402  (tests/faults.py)


class NarrowAlexNet(model.AlexNet):
    """The paper's net with conv widths 16-32-48-48-32 (groups as the paper's) and 64 fc units."""

    conv_specs = {"paper": [(16, 11, 4, 0, 1), (32, 5, 1, 2, 2), (48, 3, 1, 1, 1), (48, 3, 1, 1, 2), (32, 3, 1, 1, 2)]}
    fc_units = 64


def register() -> None:
    model.MODELS["alexnet_narrow"] = (lambda **kw: NarrowAlexNet("paper", **kw), "the paper's net, narrow (tests)")


def run_plan(plan: list[dict]) -> None:
    """Each item: {"data", "out", "sets": [section.key=value, ...], "resume": bool, "copy": run dir
    to start from (copied to out), "traffic": path prefix for this rank's bytes sent (JSON), "signal":
    [rank, step, name]: that rank sends itself the signal after that step; the Stopped exit it and the
    others take is written to OUT-stopped-rankR.json}."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    for item in plan:
        if item.get("copy") and rank == 0:
            shutil.copytree(item["copy"], item["out"])
        if dist.is_initialized():
            dist.barrier()
        resume = bool(item.get("resume"))
        SENT.clear()
        undo = None
        if item.get("signal") and item["signal"][0] == rank:
            undo = faults.install(f"step:{item['signal'][1]}", item["signal"][2])
        try:
            summary = train(item["data"], item["out"], resume=resume, overrides=item["sets"], progress="off")
        except Stopped as stop:
            with open(f"{item['out']}-stopped-rank{rank}.json", "w") as f:
                json.dump({"signum": stop.signum}, f)
            continue
        finally:
            if undo is not None:
                undo()
        if item.get("traffic"):
            with open(f"{item['traffic']}-rank{rank}.json", "w") as f:
                json.dump({"sent": dict(SENT), "steps": summary["step"]}, f)


if __name__ == "__main__":
    register()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("gloo")
    with open(sys.argv[1]) as f:
        run_plan(json.load(f))
    if dist.is_initialized():
        dist.destroy_process_group()
