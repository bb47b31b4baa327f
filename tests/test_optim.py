"""The paper's update rule against the formula, and the schedules at their milestones."""

import math

import pytest
import torch

from alexnet.training.optim import PaperSGD, Schedule, build_optimizer


def _grads(step: int, shapes):
    g = torch.Generator().manual_seed(1000 + step)
    return [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]


def _run(opt_factory, lrs, shapes=((3, 4), (5,))):
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=g, dtype=torch.float64, requires_grad=True) for s in shapes]
    opt = opt_factory(params)
    history = []
    for step, lr in enumerate(lrs):
        for group in opt.param_groups:
            group["lr"] = lr
        for p, grad in zip(params, _grads(step, shapes)):
            p.grad = grad.clone()
        opt.step()
        history.append([p.detach().clone() for p in params])
    return history


def _formula(lrs, m=0.9, wd=5e-4, shapes=((3, 4), (5,))):
    """The paper §5 by hand: v <- m v - wd lr w - lr g; w <- w + v."""
    g = torch.Generator().manual_seed(0)
    w = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    v = [torch.zeros_like(x) for x in w]
    history = []
    for step, lr in enumerate(lrs):
        for i, grad in enumerate(_grads(step, shapes)):
            v[i] = m * v[i] - wd * lr * w[i] - lr * grad
            w[i] = w[i] + v[i]
        history.append([x.clone() for x in w])
    return history


LRS = [0.01] * 4 + [0.001] * 4  # a drop by 10 after step 4, as the plateau schedule does


def test_paper_sgd_matches_the_formula_step_by_step_across_an_lr_change():
    ours = _run(lambda p: PaperSGD(p, lr=0.01, momentum=0.9, weight_decay=5e-4), LRS)
    oracle = _formula(LRS)
    for step, (a, b) in enumerate(zip(ours, oracle)):
        for x, y in zip(a, b):
            assert torch.allclose(x, y, rtol=0, atol=1e-12), f"step {step}"


@pytest.mark.parametrize("name", ["paper", "sgd"])
@pytest.mark.parametrize("decay_biases", [True, False])
def test_decay_biases_switch_matches_the_hand_computed_update(name, decay_biases):
    """A weight (3, 4) and a bias (5,): with decay_biases=False only the weight decays."""
    m, wd, lr = 0.9, 0.05, 0.1  # a large wd, so that a decayed bias is far from an undecayed one
    shapes = ((3, 4), (5,))
    ours = _run(
        lambda p: build_optimizer(name, p, lr=lr, momentum=m, weight_decay=wd, decay_biases=decay_biases),
        [lr] * 3,
        shapes,
    )
    g = torch.Generator().manual_seed(0)
    w = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    v = [torch.zeros_like(x) for x in w]
    decays = [wd, wd if decay_biases else 0.0]
    for step in range(3):  # the paper's rule by hand (lr constant, so torch's SGD takes the same path)
        for i, grad in enumerate(_grads(step, shapes)):
            v[i] = m * v[i] - decays[i] * lr * w[i] - lr * grad
            w[i] = w[i] + v[i]
        for x, y in zip(ours[step], w):
            assert torch.allclose(x, y, rtol=0, atol=1e-12), f"step {step}"
    undecayed = _run(lambda p: build_optimizer(name, p, lr=lr, momentum=m, weight_decay=0.0), [lr] * 3, shapes)
    assert torch.equal(ours[-1][1], undecayed[-1][1]) != decay_biases  # the bias: decayed or not


def test_torch_sgd_equals_the_paper_rule_only_while_lr_is_constant():
    paper = _run(lambda p: PaperSGD(p, lr=0.01, momentum=0.9, weight_decay=5e-4), LRS)
    torch_sgd = _run(lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9, weight_decay=5e-4), LRS)
    for step in range(4):  # constant lr: v = -lr * buf, the same trajectory
        for x, y in zip(paper[step], torch_sgd[step]):
            assert torch.allclose(x, y, rtol=0, atol=1e-12), f"step {step}"
    # after the drop torch rescales the whole buffer by the new lr; the paper's velocity keeps the old steps
    diff = max((x - y).abs().max().item() for x, y in zip(paper[4], torch_sgd[4]))
    assert diff > 1e-5


def test_paper_sgd_state_dict_resumes_exactly():
    shapes = ((3, 4), (5,))
    full = _run(lambda p: PaperSGD(p, lr=0.01), LRS)[-1]
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=g, dtype=torch.float64, requires_grad=True) for s in shapes]
    opt = PaperSGD(params, lr=0.01)

    def steps(opt, params, indices):
        for step in indices:
            for group in opt.param_groups:
                group["lr"] = LRS[step]
            for p, grad in zip(params, _grads(step, shapes)):
                p.grad = grad.clone()
            opt.step()

    steps(opt, params, range(5))
    resumed = [p.detach().clone().requires_grad_() for p in params]
    opt2 = PaperSGD(resumed, lr=0.5)
    opt2.load_state_dict(opt.state_dict())
    steps(opt2, resumed, range(5, len(LRS)))
    for x, y in zip(resumed, full):
        assert torch.equal(x.detach(), y)


@pytest.mark.parametrize(
    "errors, drop_epochs",
    [
        ([0.9, 0.8, 0.7, 0.6], []),  # always improving
        ([0.9, 0.9, 0.9, 0.9, 0.9], [3]),  # patience 3: 3 epochs without improvement after the first
        ([0.9] + [0.95] * 12, [3, 6, 9]),  # at most 3 drops
        ([0.9, 0.8, 0.85, 0.85, 0.85, 0.7, 0.75], [4]),  # a bad streak resets on improvement
    ],
)
def test_plateau_drops_at_the_right_epochs(errors, drop_epochs):
    s = Schedule("plateau", 0.01, epochs=100, steps_per_epoch=10, patience=3, max_drops=3)
    dropped = [e for e, err in enumerate(errors) if s.epoch_end(e, err)]
    assert dropped == drop_epochs
    assert s.lr_at(10 * len(errors)) == pytest.approx(0.01 * 0.1 ** len(drop_epochs))


def test_plateau_state_dict_resumes():
    s = Schedule("plateau", 0.01, epochs=10, steps_per_epoch=5, patience=2)
    for e, err in enumerate([0.5, 0.6, 0.6]):
        s.epoch_end(e, err)
    t = Schedule("plateau", 0.01, epochs=10, steps_per_epoch=5, patience=2)
    t.load_state_dict(s.state_dict())
    assert t.lr_at(20) == s.lr_at(20) == pytest.approx(0.001)


def test_step_schedule_milestones_and_warmup():
    s = Schedule("step", 0.1, epochs=10, steps_per_epoch=4, milestones=[3, 6], warmup_epochs=1)
    # warm-up: linear over the first epoch's 4 steps
    assert [s.lr_at(i) for i in range(4)] == pytest.approx([0.025, 0.05, 0.075, 0.1])
    per_epoch = [s.lr_at(4 * e) for e in range(1, 9)]
    assert per_epoch == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.01, 0.001, 0.001, 0.001])


def test_cosine_schedule():
    s = Schedule("cosine", 0.1, epochs=4, steps_per_epoch=10, min_lr=0.0)
    assert s.lr_at(0) == pytest.approx(0.1)
    assert s.lr_at(20) == pytest.approx(0.05)
    assert s.lr_at(40) == pytest.approx(0.0, abs=1e-12)
    assert s.lr_at(10) == pytest.approx(0.05 * (1 + math.cos(math.pi / 4)))
