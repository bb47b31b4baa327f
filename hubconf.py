"""torch.hub entry points: the paper's AlexNet and its variants, random or with a checkpoint's weights.

    import torch
    net = torch.hub.load("/path/to/clone", "alexnet", source="local")             # random, paper init
    net = torch.hub.load("/path/to/clone", "alexnet", source="local", weights="run/checkpoints/best.pt")

Entries: `alexnet` (the paper's two towers, 60,965,224 parameters), `alexnet_ungrouped` (the same
widths on one GPU) and `alexnet_torchvision` (torchvision's AlexNet; loads its weights). `weights`:
a checkpoint file or run directory (`alexnet train`, `alexnet import-torchvision`, `alexnet
import-caffe`) or an exported .safetensors file, holding that entry's model; the net comes back in
eval mode. Without weights, keyword arguments go to the builder (e.g. num_classes=10). Preprocessing
is the checkpoint's: `alexnet.load(weights)` gives the net with it (predict, features). Nothing is
downloaded.
"""

from alexnet.artifact import load_model_state
from alexnet.checkpoint import model_from_checkpoint
from alexnet.errors import UserError
from alexnet.model import build_model

dependencies = ["torch", "torchvision"]


def _entry(name: str, weights, kwargs: dict):
    if weights is None:
        return build_model(name, **kwargs)
    if kwargs:
        raise UserError(f"hub entry {name}: weights= fixes the net; drop {', '.join(sorted(kwargs))}")
    state = load_model_state(weights)
    if state["model_name"] != name:
        raise UserError(
            f"{weights}: holds model {state['model_name']}; load it with the hub entry "
            f"{state['model_name']!r}, not {name!r}"
        )
    return model_from_checkpoint(state, "cpu")


def alexnet(weights=None, **kwargs):
    """The paper's AlexNet: two towers (groups=2 on conv2/4/5), LRN, overlapping pooling, 227 input.

    weights: checkpoint path or run directory or exported .safetensors (None: the paper's init)."""
    return _entry("alexnet", weights, kwargs)


def alexnet_ungrouped(weights=None, **kwargs):
    """The paper's widths without the tower split (groups=1): 62,378,344 parameters."""
    return _entry("alexnet_ungrouped", weights, kwargs)


def alexnet_torchvision(weights=None, **kwargs):
    """torchvision's AlexNet (64-192-384-256-256, no LRN, 224 input); keys match torchvision's."""
    return _entry("alexnet_torchvision", weights, kwargs)
