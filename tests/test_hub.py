"""hubconf.py: torch.hub.load(clone, entry, source="local") builds our nets and loads checkpoints."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torchvision

from alexnet.errors import UserError
from alexnet.model import build_model

ROOT = str(Path(__file__).resolve().parents[1])


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_entries_listed_and_parameter_counts():
    spec = importlib.util.spec_from_file_location("hubconf", Path(ROOT) / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    entries = sorted(
        k
        for k, v in vars(hubconf).items()
        if callable(v) and not k.startswith("_") and getattr(v, "__module__", None) == "hubconf"
    )
    assert entries == ["alexnet", "alexnet_torchvision", "alexnet_ungrouped"]
    assert hubconf.dependencies == ["torch", "torchvision"]
    net = torch.hub.load(ROOT, "alexnet", source="local")
    assert _params(net) == 60_965_224  # the paper's two towers (groups=2 on conv2/4/5)
    assert [c.groups for c in net.convs()] == [1, 2, 1, 2, 2]
    assert _params(torch.hub.load(ROOT, "alexnet_ungrouped", source="local")) == 62_378_344
    tv = torch.hub.load(ROOT, "alexnet_torchvision", source="local", num_classes=10)
    assert tv.state_dict().keys() == torchvision.models.alexnet(num_classes=10).state_dict().keys()
    assert tv.classifier[-1].out_features == 10


def test_weights_load_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = build_model("alexnet", num_classes=7)
    ckpt = tmp_path / "net.pt"
    torch.save(
        {
            "model": model.state_dict(),
            "model_name": "alexnet",
            "model_kwargs": {"num_classes": 7},
            "classes": {"ids": [str(i) for i in range(7)], "names": [f"c{i}" for i in range(7)]},
            "stats": {"channel_mean": [0.5] * 3, "channel_std": [0.25] * 3},
            "preprocess": {"crop": 227, "normalize": "channel"},
        },
        ckpt,
    )
    net = torch.hub.load(ROOT, "alexnet", source="local", weights=str(ckpt))
    assert not net.training
    for key, value in model.state_dict().items():
        assert torch.equal(net.state_dict()[key], value), key
    x = torch.randn(2, 3, 227, 227)
    model.eval()
    with torch.inference_mode():
        torch.testing.assert_close(net(x), model(x))
    with pytest.raises(UserError, match="holds model alexnet; load it with the hub entry 'alexnet'"):
        torch.hub.load(ROOT, "alexnet_ungrouped", source="local", weights=str(ckpt))
    with pytest.raises(UserError, match="drop dropout"):  # weights fix the net; only num_classes= may change it
        torch.hub.load(ROOT, "alexnet", source="local", weights=str(ckpt), dropout=0.1)
