"""torch.hub entry points: the paper's AlexNet and its variants, untrained or with trained weights.

    import torch
    net = torch.hub.load("/path/to/clone", "alexnet", source="local")             # untrained, paper init
    net = torch.hub.load("/path/to/clone", "alexnet", source="local", weights="run/checkpoints/best.pt")
    net = torch.hub.load("/path/to/clone", "alexnet", source="local", weights="run", num_classes=5)  # new head
    net = torch.hub.load("/path/to/clone", "alexnet_torchvision", source="local", pretrained=True)

Entries: `alexnet` (the paper's two towers, 60,965,224 parameters), `alexnet_ungrouped` (the same
widths on one GPU) and `alexnet_torchvision` (torchvision's AlexNet; loads its weights). `weights`:
a checkpoint file or run directory (`alexnet train`, `alexnet import-torchvision`, `alexnet
import-caffe`) or an exported .safetensors file, holding that entry's model; or, for
`alexnet_torchvision`, torchvision's weight name "IMAGENET1K_V1" (= `pretrained=True`: torch's hub
cache, downloaded when missing; offline, one line naming the cache file). `num_classes` with
weights: a new head of that many outputs, the rest of the net kept (as `--init-from` does). A
trained net comes back in eval mode. Without weights, keyword arguments go to the builder (e.g.
num_classes=10). Preprocessing is the checkpoint's: `alexnet.load(weights)` gives the net with it
(predict, features).
"""

from alexnet.pretrained import hub_model

dependencies = ["torch", "torchvision"]


def alexnet(weights=None, pretrained=False, **kwargs):
    """The paper's AlexNet: two towers (groups=2 on conv2/4/5), LRN, overlapping pooling, 227 input.

    weights: checkpoint path or run directory or exported .safetensors (None: the paper's init)."""
    return hub_model("alexnet", weights, pretrained, kwargs)


def alexnet_ungrouped(weights=None, pretrained=False, **kwargs):
    """The paper's widths without the tower split (groups=1): 62,378,344 parameters."""
    return hub_model("alexnet_ungrouped", weights, pretrained, kwargs)


def alexnet_torchvision(weights=None, pretrained=False, **kwargs):
    """torchvision's AlexNet (64-192-384-256-256, no LRN, 224 input); keys match torchvision's.

    weights: a checkpoint, or "IMAGENET1K_V1" (= pretrained=True): torchvision's published weights."""
    return hub_model("alexnet_torchvision", weights, pretrained, kwargs)
