"""The paper's AlexNet, its variants and switches, checked against the paper's formulas and torchvision."""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from alexnet.errors import UserError
from alexnet.model import MODEL_NAMES, AlexNet, LocalResponseNorm, MaxPool2d, build_model


def reference_lrn(
    x: torch.Tensor, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0
) -> torch.Tensor:
    """The paper's LRN through torch's own module (which divides alpha by size): the oracle."""
    return F.local_response_norm(x, size, alpha=alpha * size, beta=beta, k=k)


def out_size(n, f, s, p):
    return (n - f + 2 * p) // s + 1  # the paper's / textbooks' formula


def expected_shapes(input_size, widths=(96, 256, 384, 384, 256), pad1=None):
    """Shapes after every conv/pool from the formula alone, without running the net."""
    pad1 = pad1 if pad1 is not None else (2 if input_size == 224 else 0)
    n = out_size(input_size, 11, 4, pad1)
    shapes = [(widths[0], n, n)]
    n = out_size(n, 3, 2, 0)
    shapes.append((widths[0], n, n))
    n = out_size(n, 5, 1, 2)
    shapes.append((widths[1], n, n))
    n = out_size(n, 3, 2, 0)
    shapes.append((widths[1], n, n))
    for w in widths[2:]:
        n = out_size(n, 3, 1, 1)
        shapes.append((w, n, n))
    n = out_size(n, 3, 2, 0)
    shapes.append((widths[4], n, n))
    return shapes


@pytest.mark.parametrize("input_size", [227, 224])
def test_shapes_after_every_layer(input_size):
    model = AlexNet(input_size=input_size).eval()
    x = torch.randn(2, 3, input_size, input_size)
    seen = []
    for layer in model.features:
        x = layer(x)
        if isinstance(layer, (nn.Conv2d, nn.MaxPool2d)):
            seen.append(tuple(x.shape[1:]))
    assert seen == expected_shapes(input_size)
    assert seen[0] == (96, 55, 55) and seen[-1] == (256, 6, 6)  # paper Fig. 2
    assert model(torch.randn(2, 3, input_size, input_size)).shape == (2, 1000)


def test_groups_are_the_two_towers():
    convs = AlexNet("paper").convs()
    assert [c.groups for c in convs] == [1, 2, 1, 2, 2]  # conv3 crosses towers, paper §3.5
    assert [tuple(c.weight.shape) for c in convs] == [
        (96, 3, 11, 11),
        (256, 48, 5, 5),
        (384, 256, 3, 3),
        (384, 192, 3, 3),
        (256, 192, 3, 3),
    ]
    assert all(c.groups == 1 for c in AlexNet("ungrouped").convs())


def count_params(model):
    return sum(p.numel() for p in model.parameters())


def formula_params(widths, groups, classes=1000):
    kernels = [11, 5, 3, 3, 3]
    total, in_ch = 0, 3
    for w, k, g in zip(widths, kernels, groups):
        total += w * (in_ch // g) * k * k + w
        in_ch = w
    return total + (256 * 36 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * classes + classes)


@pytest.mark.parametrize(
    "variant,expected", [("paper", 60_965_224), ("ungrouped", 62_378_344), ("torchvision", 61_100_840)]
)
def test_param_counts(variant, expected):
    model = AlexNet(variant)
    widths = [c.out_channels for c in model.convs()]
    groups = [c.groups for c in model.convs()]
    assert count_params(model) == formula_params(widths, groups) == expected


def test_torchvision_variant_matches_torchvision_exactly():
    torch.manual_seed(0)
    reference = torchvision.models.alexnet(weights=None).eval()
    ours = AlexNet("torchvision").eval()
    assert list(ours.state_dict()) == list(reference.state_dict())
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        expected = reference(x)
        fast = ours(x)  # on the CPU in channels_last: other summation order, same values up to rounding
        ours.cpu_inference_channels_last = False  # torchvision's own layout: bit for bit
        assert torch.equal(ours(x), expected)
    assert torch.allclose(fast, expected, rtol=1e-4, atol=1e-5)


def test_every_parameter_receives_a_gradient():
    model = AlexNet(num_classes=17)
    loss = model(torch.randn(2, 3, 227, 227)).logsumexp(1).sum()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_num_classes_17():
    model = AlexNet(num_classes=17).eval()
    assert model(torch.randn(1, 3, 227, 227)).shape == (1, 17)
    assert model.classifier[-1].out_features == 17


def test_paper_init_statistics():
    torch.manual_seed(0)
    model = AlexNet("paper")
    layers = model.convs() + model.linears()
    for index, layer in enumerate(layers, start=1):
        assert abs(layer.weight.std().item() - 0.01) < 0.001, index
        assert abs(layer.weight.mean().item()) < 0.001, index
        expected_bias = 1.0 if index in (2, 4, 5, 6, 7) else 0.0  # paper §5
        assert torch.all(layer.bias == expected_bias), index


def test_kaiming_init_is_fan_in():
    torch.manual_seed(0)
    model = AlexNet(init="kaiming")
    conv1 = model.convs()[0]
    fan_in = 3 * 11 * 11
    assert abs(conv1.weight.std().item() - math.sqrt(2 / fan_in)) < 0.01 * math.sqrt(2 / fan_in) * 10
    assert all(torch.all(layer.bias == 0) for layer in model.convs() + model.linears())


def lrn_naive(a, n=5, alpha=1e-4, beta=0.75, k=2.0):
    """b_i = a_i / (k + alpha * sum_{j=max(0,i-n/2)}^{min(N-1,i+n/2)} a_j^2)^beta, paper §3.3, by loop."""
    out = torch.empty_like(a)
    channels = a.shape[1]
    for i in range(channels):
        lo, hi = max(0, i - n // 2), min(channels - 1, i + n // 2)
        s = (a[:, lo : hi + 1] ** 2).sum(dim=1)
        out[:, i] = a[:, i] / (k + alpha * s) ** beta
    return out


def test_lrn_against_the_formula_and_torch():
    torch.manual_seed(0)
    a = torch.randn(2, 11, 5, 5, dtype=torch.float64) * 60  # large enough that the denominator matters
    ours = LocalResponseNorm()(a)
    assert torch.allclose(ours, lrn_naive(a), rtol=1e-12, atol=1e-12)
    assert torch.allclose(ours, reference_lrn(a), rtol=1e-10, atol=1e-10)
    # torch divides alpha by n: nn.LocalResponseNorm(5, alpha=5e-4) is the paper's alpha=1e-4
    assert torch.allclose(ours, nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)(a), rtol=1e-10)
    assert not torch.allclose(ours, nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)(a), rtol=1e-6)


@pytest.mark.parametrize("beta", [0.75, 0.6])
def test_lrn_gradcheck(beta):
    torch.manual_seed(0)
    a = (torch.randn(2, 7, 3, 3, dtype=torch.float64) * 60).requires_grad_()
    lrn = LocalResponseNorm(5, 1e-4, beta, 2.0)
    assert torch.autograd.gradcheck(lrn, (a,))
    g = torch.randn(2, 7, 3, 3, dtype=torch.float64)
    (grad_ours,) = torch.autograd.grad(lrn(a), a, g)
    (grad_ref,) = torch.autograd.grad(reference_lrn(a, beta=beta), a, g)
    assert torch.allclose(grad_ours, grad_ref, rtol=1e-9, atol=1e-12)


def test_lrn_channels_last_and_blocks():
    torch.manual_seed(0)
    a = torch.relu(torch.randn(9, 96, 13, 13) * 50)  # 9 images: several blocks of the fused kernel
    g = torch.randn_like(a)
    ref_in = a.clone().requires_grad_()
    reference_lrn(ref_in).backward(g)
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = a.clone().to(memory_format=fmt).requires_grad_()
        y = LocalResponseNorm()(x)
        y.backward(g)
        assert torch.allclose(y, reference_lrn(a), rtol=1e-5, atol=1e-5)
        assert torch.allclose(x.grad, ref_in.grad, rtol=1e-4, atol=1e-5)


def test_cpu_inference_runs_channels_last_with_the_nchw_outputs():
    """Under no_grad on the CPU the net switches to channels_last itself (conv1's output shows it);
    logits and fc7 features equal the NCHW forward's up to float rounding; with autograd on, or
    with the switch off, the caller's layout is kept."""
    torch.manual_seed(0)
    model = AlexNet(num_classes=10).eval()
    x = torch.randn(3, 3, 227, 227)
    seen = []
    model.features[0].register_forward_hook(
        lambda m, i, o: seen.append(o.is_contiguous(memory_format=torch.channels_last))
    )
    with torch.no_grad():
        fast, fast_fc7 = model(x), model.fc7_features(x)
        model.cpu_inference_channels_last = False
        slow, slow_fc7 = model(x), model.fc7_features(x)
    model.cpu_inference_channels_last = True
    with_grad = model(x)
    with torch.no_grad():
        model(x[:1])  # one image: kept NCHW (the weights' layout)
    assert seen == [True, True, False, False, False, False]
    assert torch.allclose(fast, slow, rtol=1e-4, atol=1e-5) and torch.allclose(with_grad, slow, rtol=1e-4, atol=1e-5)
    assert torch.allclose(fast_fc7, slow_fc7, rtol=1e-4, atol=1e-5)


def test_max_pool_in_inference_is_torchs_to_the_bit():
    """AlexNet's MaxPool2d pools an NCHW input in channels_last on the CPU without autograd:
    the same values and layout as nn.MaxPool2d; with autograd it is nn.MaxPool2d itself."""
    torch.manual_seed(0)
    x = torch.randn(2, 96, 55, 55)
    ours, reference = MaxPool2d(3, 2), nn.MaxPool2d(3, 2)
    with torch.no_grad():
        y = ours(x)
        assert y.is_contiguous() and torch.equal(y, reference(x))
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours(a).square().sum().backward()
    reference(b).square().sum().backward()
    assert torch.equal(a.grad, b.grad)


def differing_modules(a: nn.Module, b: nn.Module):
    """Positions in features/classifier whose module type or settings differ."""
    out = []
    for part in ("features", "classifier"):
        for i, (x, y) in enumerate(zip(getattr(a, part), getattr(b, part))):
            if type(x) is not type(y) or x.extra_repr() != y.extra_repr():
                out.append((part, i, type(x).__name__, type(y).__name__))
    return out


def test_each_ablation_switch_changes_exactly_what_it_names():
    base = AlexNet()
    no_lrn = differing_modules(base, AlexNet(lrn=False))
    assert [(p, i) for p, i, *_ in no_lrn] == [("features", 2), ("features", 6)]
    assert all(t == "LocalResponseNorm" and u == "Identity" for *_, t, u in no_lrn)
    pools = differing_modules(base, AlexNet(pool="non-overlapping"))
    assert {t for *_, t, _ in pools} == {"MaxPool2d"} and len(pools) == 3
    tanh = differing_modules(base, AlexNet(activation="tanh"))
    assert {(t, u) for *_, t, u in tanh} == {("ReLU", "Tanh")} and len(tanh) == 7
    drop = differing_modules(base, AlexNet(dropout=0.2))
    assert {t for *_, t, _ in drop} == {"Dropout"} and len(drop) == 2
    # placement: paper drops the outputs of fc6/fc7, torchvision their inputs
    kinds = lambda m: [type(x).__name__ for x in m.classifier]  # noqa: E731
    assert kinds(base) == ["Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout", "Linear"]
    assert kinds(AlexNet(dropout_placement="torchvision")) == [
        "Dropout",
        "Linear",
        "ReLU",
        "Dropout",
        "Linear",
        "ReLU",
        "Linear",
    ]
    # non-overlapping pooling keeps every output size (paper §3.4)
    x = torch.randn(1, 3, 227, 227)
    assert AlexNet(pool="non-overlapping").eval()(x).shape == (1, 1000)


def test_fc7_features():
    model = AlexNet(num_classes=5).eval()
    x = torch.randn(2, 3, 227, 227)
    feats = model.fc7_features(x)
    assert feats.shape == (2, 4096) and (feats >= 0).all()
    with torch.no_grad():
        assert torch.allclose(model.classifier[-1](feats), model(x), atol=1e-5)


def test_registry():
    assert set(MODEL_NAMES) >= {
        "alexnet",
        "alexnet_ungrouped",
        "alexnet_torchvision",
        "zfnet",
        "zfnet_wide",
        "vgg16",
        "vgg19",
        "googlenet",
        "resnet18",
        "resnet50",
        "resnet152",
    }
    assert build_model("alexnet").variant == "paper"
    with pytest.raises(UserError, match="choose one of: alexnet"):
        build_model("alexnet_v2")
    with pytest.raises(UserError, match="unknown init"):
        build_model("alexnet", init="xavier")
    assert build_model("resnet18", num_classes=3)(torch.randn(1, 3, 64, 64)).shape == (1, 3)


def test_overfit_a_tiny_batch():
    """The paper's net can drive the loss on a tiny batch to ~0 (nothing blocks learning)."""
    torch.manual_seed(0)
    # 127 px keeps it quick; every layer is still there (pool5 is 2x2, then avg-pooled to 6x6)
    model = AlexNet(num_classes=4, init="kaiming", dropout=0.0, input_size=127)
    x, y = torch.randn(4, 3, 127, 127), torch.tensor([0, 1, 2, 3])
    opt = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    for _ in range(25):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    assert loss.item() < 0.05


def lrn_modules(model):
    return [m for m in model.features if isinstance(m, LocalResponseNorm)]


def meta_net(*args, **kwargs) -> AlexNet:
    """An AlexNet built on the meta device: its modules and config, without 60 M weights to draw."""
    with torch.device("meta"):
        return AlexNet(*args, **kwargs)


@pytest.mark.parametrize("channels", [96, 256])  # conv1's and conv2's kernel counts
def test_lrn_tower_scope_normalises_each_half_on_its_own(channels):
    torch.manual_seed(0)
    a = torch.relu(torch.randn(2, channels, 4, 4, dtype=torch.float64) * 60)
    norms = lrn_modules(meta_net(lrn_scope="tower"))
    (tower,) = {m.extra_repr() for m in norms}  # conv1's and conv2's LRN alike
    lrn = norms[0]
    torch_lrn = nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)  # the paper's alpha * n
    half = channels // 2
    expected = torch.cat([torch_lrn(a[:, :half]), torch_lrn(a[:, half:])], dim=1)
    assert "groups=2" in tower
    assert torch.allclose(lrn(a.clone()), expected, rtol=1e-12, atol=1e-12)  # the net's LRN works in place
    layer = lrn_modules(meta_net())[0]
    assert torch.allclose(layer(a.clone()), torch_lrn(a), rtol=1e-12, atol=1e-12)
    # the two scopes differ only next to the tower boundary (channels half-2 .. half+1)
    differs = (layer(a.clone()) - lrn(a.clone())).abs().amax(dim=(0, 2, 3)) > 1e-12
    assert differs.nonzero().flatten().tolist() == [half - 2, half - 1, half, half + 1]
    # and the analytic backward stays exact per tower
    x = a[:1, :, :1, :1].clone().requires_grad_()
    assert torch.autograd.gradcheck(lrn, (x,))


def test_lrn_caffe_convention_against_the_formula():
    """lrn_k=1, lrn_alpha_per_size=True is Caffe's b = a / (1 + (1e-4/5) * sum a^2)^0.75."""
    torch.manual_seed(0)
    a = torch.relu(torch.randn(2, 9, 3, 3, dtype=torch.float64) * 100)
    model = meta_net(lrn_k=1.0, lrn_alpha_per_size=True)
    assert model.config["lrn_k"] == 1.0 and model.config["lrn_alpha_per_size"] is True
    lrn = lrn_modules(model)[0]
    expected = torch.empty_like(a)
    for i in range(9):
        window = (a[:, max(0, i - 2) : min(8, i + 2) + 1] ** 2).sum(dim=1)
        expected[:, i] = a[:, i] / (1.0 + (1e-4 / 5) * window) ** 0.75
    assert torch.allclose(lrn(a.clone()), expected, rtol=1e-12, atol=1e-12)  # the net's LRN works in place
    assert torch.allclose(lrn(a.clone()), nn.LocalResponseNorm(5, 1e-4, 0.75, 1.0)(a), rtol=1e-12)
    assert torch.allclose(lrn_modules(meta_net(lrn_k=1.0))[0](a.clone()), lrn_naive(a, k=1.0), rtol=1e-12)
    # the paper's constants stay the default
    paper = lrn_modules(meta_net())[0]
    assert (paper.size, paper.alpha, paper.beta, paper.k, paper.groups) == (5, 1e-4, 0.75, 2.0, 1)


def test_lrn_switches_recorded_only_when_applied():
    assert {k: v for k, v in meta_net().config.items() if k.startswith("lrn")} == {
        "lrn": True,
        "lrn_scope": "layer",
        "lrn_k": 2.0,
        "lrn_alpha_per_size": False,
    }
    off = meta_net(lrn=False, lrn_scope="tower")
    assert not lrn_modules(off) and off.config["lrn"] is False
    assert not any(k.startswith("lrn_") for k in off.config)  # nothing recorded that was not applied
    tv = meta_net("torchvision")
    assert tv.config["lrn"] is False and not any(k.startswith("lrn_") for k in tv.config)
    rebuilt = meta_net(**{**meta_net(lrn_scope="tower", lrn_k=1.0).config})
    assert rebuilt.config == meta_net(lrn_scope="tower", lrn_k=1.0).config


@pytest.mark.parametrize(
    "kwargs", [{"lrn": True}, {"lrn_scope": "tower"}, {"lrn_k": 1.0}, {"lrn_alpha_per_size": True}]
)
def test_torchvision_variant_refuses_lrn_options(kwargs):
    with pytest.raises(UserError, match="torchvision variant has no LRN") as info:
        meta_net("torchvision", **kwargs)
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="unknown lrn_scope"):
        meta_net(lrn_scope="gpu")


def test_unusual_input_size_warns_once_with_the_map_size():
    from alexnet import model as model_module

    model_module._WARNED_SIZES.discard((131, 3, 2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        meta_net(input_size=131, num_classes=2)
        meta_net(input_size=131, num_classes=2)
        meta_net(input_size=227, num_classes=2)
        meta_net(input_size=224, num_classes=2)
    messages = [str(w.message) for w in caught]
    # 131 px: conv1 31, pool 15, conv2 15, pool 7, conv3-5 7, pool 3 -> 3x3
    assert len(messages) == 1 and "conv5's pooled map is 3x3" in messages[0], messages
    features = AlexNet(input_size=131, num_classes=2, init="default").eval().features
    assert features(torch.zeros(1, 3, 131, 131)).shape[-2:] == (3, 3)


def test_config_key_model_lrn_scope_reaches_the_net():
    from alexnet.config import load_config
    from alexnet.training.config import TrainConfig, model_kwargs

    config = load_config(TrainConfig, None, ["model.lrn_scope=tower"])
    kwargs = model_kwargs(config, 10)
    assert kwargs["lrn_scope"] == "tower"
    with torch.device("meta"):
        net = build_model(config.model.name, **kwargs)
    assert net.config["lrn_scope"] == "tower" and all(m.groups == 2 for m in lrn_modules(net))
    assert "lrn_scope" not in model_kwargs(load_config(TrainConfig, None, []), 10)  # default: the paper's
    with pytest.raises(UserError, match="torchvision variant has no LRN"):
        build_model("alexnet_torchvision", **model_kwargs(config, 10))


def test_lrn_under_bf16_autocast_is_within_bf16_rounding():
    """Sums and powers run in float32 and the output is rounded once to bf16 (input 4x96x27x27, 0-60)."""
    torch.manual_seed(0)
    x = (torch.rand(4, 96, 27, 27) * 60).bfloat16().requires_grad_()
    exact = lrn_naive(x.detach().double())  # the formula in float64 on the same bf16 inputs
    g = torch.randn(x.shape).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = LocalResponseNorm()(x)
    y.backward(g)
    assert y.dtype == torch.bfloat16 and x.grad.dtype == torch.bfloat16
    # round-to-nearest bf16 (8 significant bits) is within half an ulp, at most 2^-8 of the value;
    # bf16 arithmetic inside the LRN (as before) was off by 1.05 % of the largest output
    error = (y.double() - exact).abs()
    assert (error <= exact.abs() * 2**-8 * (1 + 1e-5)).all()
    assert error.max() <= 0.0025 * exact.max()
    a64 = x.detach().double().requires_grad_()
    (grad64,) = torch.autograd.grad(lrn_naive(a64), a64, g.double())
    assert ((x.grad.double() - grad64).abs() <= grad64.abs() * 2**-8 + 1e-3 * grad64.abs().max()).all()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # the inference path alike
        assert torch.equal(LocalResponseNorm()(x.detach()), y.detach())


def test_lrn_same_result_on_any_thread_count_and_at_once():
    """CPU blocks on worker threads, inline on one thread, or the whole tensor at once (the CUDA and
    torch.compile path) compute every element the same way."""
    from alexnet import lrn as lrn_module

    torch.manual_seed(0)
    a = torch.relu(torch.randn(3, 96, 27, 27) * 50)
    threads = torch.get_num_threads()
    pooled = LocalResponseNorm()(a)
    torch.set_num_threads(1)
    try:
        inline = LocalResponseNorm()(a)
    finally:
        torch.set_num_threads(threads)
    at_once = torch.empty_like(a)
    lrn_module._forward_block(a, at_once, 5, 1e-4, 0.75, 2.0, 1)
    assert torch.equal(pooled, inline) and torch.equal(pooled, at_once)
    assert torch.allclose(pooled, reference_lrn(a), rtol=1e-5, atol=1e-5)
    assert torch.get_num_threads() == threads  # the workers' single-threadedness stays in the workers


def test_onnx_preparation_refuses_a_per_tower_lrn():
    """torch.nn.LocalResponseNorm (what ONNX export swaps in) has no per-tower window: refused, not changed."""
    from alexnet.export import onnx_ready

    with pytest.raises(UserError, match="per-tower LRN"):
        onnx_ready(meta_net(lrn_scope="tower", num_classes=3), 227)


@pytest.mark.parametrize("name", ["zfnet", "zfnet_wide", "vgg19"])
def test_successors_forward_small_inputs_and_take_num_classes(name):
    """A real forward on a small image (the 224-px arithmetic is tested on the meta device in
    test_compare.py): logits of the asked size, a gradient for every parameter."""
    torch.manual_seed(0)
    net = build_model(name, num_classes=7).train()
    out = net(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_zfnet_inits_and_options():
    net = build_model("zfnet")
    conv1, fc8 = net.features[0], net.classifier[-1]
    assert conv1.weight.std().item() == pytest.approx(0.01, rel=0.05)  # "initialized to 10^-2" read as N(0, 0.01^2)
    assert conv1.bias.abs().sum() == 0 and fc8.bias.abs().sum() == 0  # "biases are set to 0"
    kaiming = build_model("zfnet", init="kaiming").features[0].weight
    assert kaiming.std().item() == pytest.approx(math.sqrt(2 / (3 * 7 * 7)), rel=0.05)
    assert [m.p for m in net.classifier if isinstance(m, nn.Dropout)] == [0.5, 0.5]
    with pytest.raises(UserError, match="unknown init"):
        build_model("zfnet", init="xavier")
    with pytest.raises(UserError, match="model zfnet"):
        build_model("zfnet", lrn=False)  # an AlexNet option: one line naming the model
