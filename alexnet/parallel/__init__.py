"""Parallel layouts: how the processes of a torchrun launch share the net and the batch.

- data (default): every process holds the whole net and takes 1/W of the batch; DDP all-reduces
  the gradients (alexnet/distributed.py).
- towers (`parallel.towers=2`): the paper's two-GPU training (§3.2). Each pair of processes holds
  one net, tower 1's weights on one and tower 2's on the other, and exchanges activations (and
  their gradients) only at the paper's points: the input of conv3 and of fc6, fc7 and fc8
  (alexnet/parallel/nets.py, TowerNet). WORLD_SIZE = 2 x D runs D such pairs data-parallel (a
  data x tower mesh: ranks 2d and 2d+1 are pair d), each tower's gradients averaged over its D copies.
- one weird trick (`parallel.fc=model`; Krizhevsky 2014): convolutions data-parallel, the
  fully-connected layers split over all K processes (WeirdTrickNet); only the convolutional
  weights' gradients are all-reduced.

The run plan (alexnet/training/plan.py) asks `make_layout` for the layout once; the layout then
says what it decided, and the training loop asks it rather than the config: each process's share
of the data (`train_shard`, `val_shard`, `replicas`), the group the meters are summed over (`sum`),
whether the processes draw the same random numbers (`shared_rng`), save together (`saves_together`:
a split net is gathered from all of them) and act on a stop signal together (`stops_together`: at
the next log point, agreed by `agreed_stop`). It gives the model to train (`local_model`, `wrap`),
and the gradient synchroniser comes with it (hooks on the weights that run once the backward pass
is done). Checkpoints are always the whole net's (`full_states` gathers them on rank 0;
`load_states` cuts them), so they resume into any layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from alexnet.checkpoint import unwrap
from alexnet.distributed import Processes, all_reduce_sum
from alexnet.errors import UserError
from alexnet.parallel.comm import SENT, Comm, counted_allreduce, new_groups
from alexnet.parallel.nets import Spec, SplitNet, TowerNet, WeirdTrickNet, part

__all__ = ["SENT", "Layout", "ParallelConfig", "make_layout"]


@dataclass
class ParallelConfig:
    # 1: each process holds the whole net (data parallel); 2: the paper's two-GPU split (§3.2), each of a
    # pair of processes holding one tower; WORLD_SIZE = 2 x D runs D pairs data-parallel
    towers: int = 1
    # data: every process holds the fully-connected layers too; model: "one weird trick" (Krizhevsky
    # 2014): convolutions data-parallel, fc6/fc7/fc8 split over all processes
    fc: Literal["data", "model"] = "data"

    def validate(self):
        if self.towers not in (1, 2):
            raise ValueError(f"towers = {self.towers}: choose 1 (whole net per process) or 2 (the paper's split)")
        if self.towers == 2 and self.fc == "model":
            raise ValueError("towers = 2 and fc = model are two different layouts: choose one")


class Layout:
    """Data parallelism (DDP); the base of the split layouts. Decided once (make_layout), then asked."""

    shared_rng = False  # every process draws the same random numbers (a split net's dropout masks)
    saves_together = False  # a checkpoint is gathered from every process (no process saves alone)
    stops_together = False  # a stop signal is acted on at a log point, by all processes at once

    def __init__(self, procs: Processes, *, replica: int | None = None, replicas: int | None = None, group=None):
        self.procs = procs
        # the global batch is cut `replicas` ways (data-parallel shares); this process takes share `replica`
        self.replica = procs.rank if replica is None else replica
        self.replicas = procs.world if replicas is None else replicas
        self.group = group  # the processes whose meters sum to the global batch's (one per share; None: all)

    @property
    def train_shard(self) -> tuple[int, int]:
        """(index, count) of the training images this process loads: its share of every batch."""
        return self.replica, self.replicas

    @property
    def val_shard(self) -> tuple[int, int]:
        """(index, count) of the validation images this process evaluates."""
        return self.replica, self.replicas

    @property
    def rng_rank(self) -> int:
        """Whose random-number stream this process draws (and restores from a checkpoint)."""
        return 0 if self.shared_rng else self.procs.rank

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """t summed over the data-parallel shares (in place): the global batch's meters."""
        return all_reduce_sum(t, self.procs, self.group)

    def local_model(self, net: nn.Module) -> nn.Module:
        """This process's share of the net (the net itself here)."""
        return net

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module to train: DDP around `model` under torchrun."""
        if not self.procs.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP  # only under torchrun

        device = self.procs.device
        ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
        ddp.register_comm_hook(None, counted_allreduce)  # the default all-reduce, its bytes counted
        return ddp

    def full_states(self, net: nn.Module, optimizer) -> tuple[dict | None, dict | None]:
        """(model state dict, optimizer state dict) of the whole net on rank 0 (a collective)."""
        return unwrap(net).state_dict(), optimizer.state_dict()

    def agreed_stop(self, signalled: int) -> int:
        """The stop signal to act on now (0: none). Processes that do not stop together: their own."""
        return signalled

    def load_states(self, net: nn.Module, optimizer, model: dict, optim: dict) -> None:
        """Load the whole net's states (a checkpoint's) into this process's share."""
        net.load_state_dict(model)
        optimizer.load_state_dict(optim)


class SplitLayout(Layout):
    """A net split over the ranks of `comm`, data-parallel over those of `data` (or none)."""

    shared_rng = saves_together = stops_together = True

    def __init__(self, procs: Processes, comm: Comm, data: Comm | None, **shares):
        super().__init__(procs, **shares)
        self.comm, self.data = comm, data
        self.net: SplitNet | None = None

    def wrap(self, model: nn.Module) -> nn.Module:
        return model  # the synchroniser's hooks are on the weights already (local_model)

    def _hooks(self, net: SplitNet, reduced: list[nn.Parameter], comm: Comm | None, scale: float) -> None:
        """Once per backward pass: all-reduce the gradients of `reduced` over comm (one flat buffer),
        then divide every gradient by `scale` (the ranks' losses are means over their own images)."""
        queued = [False]

        def sync():
            queued[0] = False
            grads = [p.grad for p in reduced if p.grad is not None]
            if comm is not None and comm.size > 1 and grads:
                flat = comm.all_reduce(_flatten_dense_tensors(grads), kind="gradients")
                for g, synced in zip(grads, _unflatten_dense_tensors(flat, grads)):
                    g.copy_(synced)
            if scale != 1:
                for p in net.parameters():
                    if p.grad is not None:
                        p.grad.div_(scale)

        def ready(_):
            if not queued[0]:
                queued[0] = True
                torch.autograd.Variable._execution_engine.queue_callback(sync)

        for p in net.parameters():
            p.register_post_accumulate_grad_hook(ready)

    def agreed_stop(self, signalled: int) -> int:
        """The largest stop signal any process has got (0: none), the same on all of them: the net is
        gathered from every process to be saved, so they must stop at the same step (a collective)."""
        flag = torch.tensor([signalled], dtype=torch.int64, device=self.procs.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return int(flag.item())

    def full_states(self, net: nn.Module, optimizer) -> tuple[dict | None, dict | None]:
        if 0 not in self.comm.ranks:  # every pair holds the same weights: rank 0's writes them
            return None, None
        specs = self.net.specs
        model = {name: self._gather(t, specs.get(name)) for name, t in net.state_dict().items()}
        optim = optimizer.state_dict()
        names = _state_names(net, optimizer)
        state = {}
        for index, name in enumerate(names):
            values, spec = optim["state"].get(index, {}), specs.get(name)
            # sharded weights have state on every rank (or on none yet); whole ones: the first rank's
            state[index] = {k: self._gather_value(v, spec) for k, v in sorted(values.items())}
        if self.comm.index != 0:
            return None, None
        return model, {"state": {i: s for i, s in state.items() if s}, "param_groups": optim["param_groups"]}

    def _gather(self, t: torch.Tensor, spec: Spec) -> torch.Tensor | None:
        if spec is None:
            return t if self.comm.index == 0 else None
        return self.comm.gather_to_first(t, spec[0])

    def _gather_value(self, value, spec: Spec):
        return self._gather(value, spec) if isinstance(value, torch.Tensor) and value.dim() else value

    def load_states(self, net: nn.Module, optimizer, model: dict, optim: dict) -> None:
        specs = self.net.specs
        local = {name: part(t, specs.get(name)) for name, t in model.items()}
        net.load_state_dict(local)
        names = _state_names(net, optimizer)
        state = {}
        for index, values in optim["state"].items():
            spec = specs.get(names[int(index)])
            state[index] = {
                k: part(v, spec) if isinstance(v, torch.Tensor) and v.dim() else v for k, v in values.items()
            }
        optimizer.load_state_dict({"state": state, "param_groups": optim["param_groups"]})


def _state_names(net: nn.Module, optimizer) -> list[str]:
    """The parameter names in the order optimizer.state_dict() numbers them: group by group (with
    optim.decay_biases=false the weights' group comes first, then the biases')."""
    names = {id(p): name for name, p in net.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


class Towers(SplitLayout):
    """The paper's two towers per pair of ranks, D pairs data-parallel."""

    def local_model(self, net: nn.Module) -> nn.Module:
        self.net = tower = TowerNet(net, self.comm)
        d, replicas = self.replica, self.replicas
        tower.batch_factor = replicas  # this pair's rows of the global batch: d::D (the sampler's shards)
        tower.dropout_rows = lambda mask: mask[d::replicas]
        self._hooks(tower, list(tower.parameters()), self.data, self.data.size if self.data else 1)
        return tower


class WeirdTrick(SplitLayout):
    """One weird trick over all K ranks."""

    @property
    def val_shard(self) -> tuple[int, int]:
        return 0, 1  # evaluation: every rank runs the whole split

    def local_model(self, net: nn.Module) -> nn.Module:
        self.net = trick = WeirdTrickNet(net, self.comm)
        k = self.comm.size
        # gathered rows are rank-major (rank r's j-th image at r N + j); rank r holds global rows r::K
        trick.dropout_rows = lambda mask: mask.view(-1, k, mask.shape[1]).transpose(0, 1).flatten(0, 1)
        self._hooks(trick, list(trick.features.parameters()), self.comm, k)
        return trick


def make_layout(pc: ParallelConfig, procs: Processes, *, model: str, compile: bool, amp: str, accumulate: int = 1,
                layers_named: bool = False) -> Layout:  # fmt: skip
    """The layout for this launch (see the module docstring). Every rank must call it (it creates
    process groups). A layout that cannot run is a UserError; layers_named: model.freeze or
    optim.lr_mult is set (they name layers of the whole net, which a split process does not hold)."""
    if pc.towers == 1 and pc.fc == "data":
        return Layout(procs)
    what = "parallel.towers=2" if pc.towers == 2 else "parallel.fc=model"
    if not model.startswith("alexnet"):
        raise UserError(f"{what} splits an AlexNet (model.name alexnet*), not {model}")
    if compile or amp == "fp16":
        raise UserError(f"{what} runs eagerly in fp32 or bf16: drop train.compile=true / train.amp=fp16")
    if accumulate > 1:  # the synchroniser scales each backward's gradients, not an accumulated sum
        raise UserError(f"{what} takes whole batches: drop data.accumulate={accumulate} (more processes, or pairs)")
    if layers_named:
        raise UserError(
            "model.freeze and optim.lr_mult name layers of the whole net; with parallel.towers=2 or "
            "parallel.fc=model each process holds a share of it: use them data-parallel (the defaults)"
        )
    if pc.towers == 2 and procs.world % 2:
        raise UserError(
            f"{what} needs an even number of processes (2 x D), got {procs.world}; "
            "e.g. torchrun --nproc_per_node=2 -m alexnet train ..."
        )
    world, rank = procs.world, procs.rank
    if pc.towers == 2:
        comm = new_groups([[2 * d, 2 * d + 1] for d in range(world // 2)], rank)
        data = new_groups([list(range(t, world, 2)) for t in range(2)], rank)
        return Towers(procs, comm, data, replica=rank // 2, replicas=world // 2, group=data.group)
    comm = new_groups([list(range(world))], rank) if world > 1 else None
    if comm is None:
        return Layout(procs)  # one process: nothing to split
    return WeirdTrick(procs, comm, None)
