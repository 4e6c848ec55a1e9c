"""The plain-torch FGSM / PGD engine: against ART (the peer library), against hand-derived
answers on linear models, and its guarantees (budget, range, modes, flags, batching, no host sync)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from audit.errors import InputError, SpecError
from audit.subjects.classifier import InputSpaceModel
from audit.stats import wilson_interval
from probes.robustness.art_backend import art_fgsm, art_pgd
from probes.robustness.attacks import (
    NotDifferentiableError,
    check_labels,
    eval_mode,
    fgsm,
    looks_like_probabilities,
    perturbation_norms,
    pgd,
    run_batched,
)
from tests.robustness_support import ArgmaxOneHot, Quantised, digits_data, trained_digits_net

R = (0.0, 1.0)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    # Normalisation inside, a conv layer: the path a real image classifier takes.
    # A random conv front (identity-ish 1x1 back to one channel) before the trained MLP.
    front = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 1, 1))
    return InputSpaceModel(nn.Sequential(front, trained_digits_net()), input_range=R, mean=0.3, std=0.4)


@pytest.fixture(scope="module")
def digits():
    _, _, x, y = digits_data()
    return x[:64], y[:64]


# -- ART agreement (issue item 4) -------------------------------------------------------------------
@pytest.mark.parametrize("targeted", [False, True])
def test_fgsm_is_identical_to_art(model, digits, targeted):
    x, y = digits
    t = (y + 3) % 10 if targeted else y
    ours = fgsm(model, x, t, 0.1, targeted=targeted)
    ref = art_fgsm(model, x, t, 0.1, num_classes=10, targeted=targeted)
    assert torch.equal(ours.x_adv, ref.x_adv)
    assert torch.equal(ours.success, ref.success)


@pytest.mark.parametrize("targeted", [False, True])
def test_pgd_without_random_start_is_identical_to_art_linf(model, digits, targeted):
    x, y = digits
    t = (y + 3) % 10 if targeted else y
    ours = pgd(model, x, t, 0.08, steps=7, eps_step=0.02, random_start=False, targeted=targeted)
    ref = art_pgd(model, x, t, 0.08, steps=7, eps_step=0.02, random_start=False, num_classes=10, targeted=targeted)
    assert torch.equal(ours.x_adv, ref.x_adv)
    assert torch.equal(ours.success, ref.success)


def test_l2_fgsm_and_pgd_match_art_to_float_rounding(model, digits):
    x, y = digits
    torch.testing.assert_close(fgsm(model, x, y, 1.0, norm="l2").x_adv,
                               art_fgsm(model, x, y, 1.0, norm="l2", num_classes=10).x_adv, rtol=0, atol=1e-6)
    ours = pgd(model, x, y, 1.0, norm="l2", steps=5, eps_step=0.3, random_start=False)
    ref = art_pgd(model, x, y, 1.0, norm="l2", steps=5, eps_step=0.3, random_start=False, num_classes=10)
    # ART projects in float64 then casts; we stay in float32: the same point up to rounding.
    torch.testing.assert_close(ours.x_adv, ref.x_adv, rtol=0, atol=1e-5)
    assert torch.equal(ours.success, ref.success)


@pytest.mark.parametrize("norm,eps", [("linf", 0.06), ("l2", 0.8)])
def test_pgd_with_random_start_agrees_with_art_within_the_interval(norm, eps):
    _, _, x, y = digits_data()
    net = InputSpaceModel(trained_digits_net(), input_range=R)
    n = 240
    x, y = x[:n], y[:n]
    ours = pgd(net, x, y, eps, norm=norm, steps=6, restarts=2, generator=torch.Generator().manual_seed(1))
    ref = art_pgd(net, x, y, eps, norm=norm, steps=6, restarts=2, num_classes=10, seed=1, batch_size=n)
    k_ours, k_ref = int((~ours.success).sum()), int((~ref.success).sum())
    assert 0.1 < k_ours / n < 0.9, "the budget is chosen so that robust accuracy is informative"
    iv_ours, iv_ref = wilson_interval(k_ours, n), wilson_interval(k_ref, n)
    assert iv_ours.contains(k_ref / n) and iv_ref.contains(k_ours / n)


# -- hand-derived answers ---------------------------------------------------------------------------
def _linear(w: torch.Tensor, b: torch.Tensor) -> nn.Linear:
    lin = nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(b)
    return lin


def test_fgsm_on_a_linear_model_moves_along_the_sign_of_the_weight_difference():
    # Two classes, logits W x + b: d CE / dx = (p1 - 1[y=1]) (w1 - w0), so the step is eps * sign(w_other - w_y).
    w = torch.tensor([[1.0, -2.0, 0.5, 0.0], [-1.0, 1.0, -0.5, 3.0]])
    lin = _linear(w, torch.zeros(2))
    x = torch.full((2, 4), 0.5)
    y = torch.tensor([0, 1])
    res = fgsm(lin, x, y, 0.1, input_range=R)
    expected = x + 0.1 * torch.stack([torch.sign(w[1] - w[0]), torch.sign(w[0] - w[1])])
    assert torch.equal(res.x_adv, expected)


def test_pgd_reaches_the_analytic_worst_case_margin_of_a_linear_model():
    # For a linear binary model the worst L-inf margin is m - eps * ||w_y - w_other||_1 and
    # the worst L2 margin is m - eps * ||w_y - w_other||_2 (no clipping active in mid-range inputs).
    torch.manual_seed(0)
    w = torch.randn(2, 16)
    lin = _linear(w, torch.zeros(2))
    x = torch.full((5, 16), 0.5) + 0.01 * torch.randn(5, 16)
    y = torch.zeros(5, dtype=torch.long)
    diff = w[0] - w[1]
    margin = x @ diff
    for norm, eps, dual in (("linf", 0.05, diff.abs().sum()), ("l2", 0.2, diff.norm())):
        res = pgd(lin, x, y, eps, norm=norm, steps=20, random_start=False, input_range=R)
        got = res.x_adv @ diff
        torch.testing.assert_close(got, margin - eps * dual, rtol=0, atol=1e-4)


# -- guarantees -------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.5)])
def test_adversarial_examples_stay_in_budget_and_range(model, digits, norm, eps):
    x, y = digits
    res = pgd(model, x, y, eps, norm=norm, steps=5, restarts=2, generator=torch.Generator().manual_seed(0))
    assert float(perturbation_norms(res.x_adv - x, norm).max()) <= eps * (1 + 1e-5)
    assert float(res.x_adv.min()) >= 0.0 and float(res.x_adv.max()) <= 1.0
    assert res.logits.shape == (64, 10) and res.success.shape == (64,)


def test_restarts_only_add_successes(model, digits):
    x, y = digits
    one = pgd(model, x, y, 0.05, steps=3, restarts=1, generator=torch.Generator().manual_seed(5))
    three = pgd(model, x, y, 0.05, steps=3, restarts=3, generator=torch.Generator().manual_seed(5))
    assert bool((three.success | ~one.success).all())  # success(1 restart) implies success(3)
    assert int(three.success.sum()) >= int(one.success.sum())


def test_targeted_attack_reaches_the_target_more_than_untargeted_does(model, digits):
    x, y = digits
    t = (y + 1) % 10
    tg = pgd(model, x, t, 0.2, steps=10, targeted=True, random_start=False)
    assert torch.equal(tg.success, tg.logits.argmax(1) == t)
    assert float(tg.success.float().mean()) > 0.5


def test_train_eval_mode_is_restored_and_the_attack_runs_in_eval_mode(digits):
    x, y = digits
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Dropout(0.5), nn.Linear(32, 10)).train()
    net[2].eval()  # a submodule's own flag must come back as it was, too
    a = fgsm(net, x, y, 0.1, input_range=R)
    b = fgsm(net, x, y, 0.1, input_range=R)
    assert torch.equal(a.x_adv, b.x_adv), "dropout active: the attack did not run in eval mode"
    assert net.training and net[1].training and not net[2].training
    with eval_mode(net):
        assert not net.training
    assert net.training and not net[2].training


def test_zero_and_nonfinite_gradients_are_flagged(digits):
    x, y = digits
    masked = fgsm(Quantised(trained_digits_net()), x, y, 0.05, input_range=R)
    assert bool(masked.zero_grad.all()) and torch.equal(masked.x_adv, x)  # nothing moved

    class SqrtNet(nn.Module):  # d sqrt(x)/dx is infinite at 0: digits have many 0 pixels
        def __init__(self):
            super().__init__()
            self.net = trained_digits_net()

        def forward(self, x):
            return self.net(torch.sqrt(x))

    flagged = pgd(SqrtNet(), x, y, 0.05, steps=2, random_start=False, input_range=R)
    assert bool(flagged.nonfinite_grad.all())
    assert bool(torch.isfinite(flagged.x_adv).all())
    ok = pgd(InputSpaceModel(trained_digits_net(), input_range=R), x, y, 0.05, steps=2)
    assert not bool(ok.zero_grad.any()) and not bool(ok.nonfinite_grad.any())


def test_bf16_autocast_screening_roughly_agrees_with_fp32(model, digits):
    x, y = digits
    a = pgd(model, x, y, 0.08, steps=5, random_start=False)
    b = pgd(model, x, y, 0.08, steps=5, random_start=False, autocast=torch.bfloat16)
    assert b.logits.dtype == torch.float32
    assert abs(float(a.success.float().mean()) - float(b.success.float().mean())) < 0.15


def test_run_batched_backs_off_on_out_of_memory_and_gives_the_same_result(model, digits):
    x, y = digits
    sizes = []

    def flaky(m, xb, yb, **kw):
        sizes.append(xb.shape[0])
        if xb.shape[0] > 8:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return fgsm(m, xb, yb, **kw)

    res = run_batched(flaky, model, x, y, batch_size=32, eps=0.1)
    assert sizes[:3] == [32, 16, 8] and max(sizes[3:]) == 8
    assert torch.equal(res.x_adv, fgsm(model, x, y, 0.1).x_adv)


def test_no_host_synchronisation_inside_the_step_loop(model, digits, monkeypatch):
    # Count the calls that copy device values to the host; they must not grow with the steps.
    x, y = digits
    counts = {"n": 0}
    for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__"):
        orig = getattr(torch.Tensor, name)

        def counted(self, *a, _orig=orig, **k):
            counts["n"] += 1
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    per_run = []
    for steps in (1, 12):
        counts["n"] = 0
        pgd(model, x, y, 0.05, steps=steps, restarts=2, generator=torch.Generator().manual_seed(0))
        per_run.append(counts["n"])
    assert per_run[0] == per_run[1], per_run


@pytest.mark.gpu
def test_pgd_on_cuda_syncs_the_same_for_1_and_20_steps():
    torch.cuda.set_sync_debug_mode("warn")
    try:
        model = InputSpaceModel(trained_digits_net(), input_range=R).cuda()
        _, _, x, y = digits_data()
        import warnings

        counts = []
        for steps in (1, 20):
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                pgd(model, x.cuda(), y.cuda(), 0.05, steps=steps, generator=torch.Generator().manual_seed(0))
            counts.append(len(w))
        assert counts[0] == counts[1]
    finally:
        torch.cuda.set_sync_debug_mode("default")


# -- bad input (issue item 9) -----------------------------------------------------------------------
def test_eps_outside_the_input_range_is_a_spec_error(model, digits):
    x, y = digits
    with pytest.raises(SpecError, match=r"eps=1.5 is outside the input range.*\[0, 1\]"):
        pgd(model, x, y, 1.5)
    with pytest.raises(SpecError, match="eps=-0.1"):
        fgsm(model, x, y, -0.1)
    with pytest.raises(SpecError, match="eps=9.0 is outside.*l2 budget must be in \\[0, 8\\]"):
        fgsm(model, x, y, 9.0, norm="l2")


def test_inputs_outside_the_declared_range_are_an_input_error(model, digits):
    x, y = digits
    with pytest.raises(InputError, match=r"lie in \[0, 255\], outside the declared input range \[0, 1\]"):
        pgd(model, x * 255, y, 0.1)
    with pytest.raises(InputError, match="NaN"):
        fgsm(model, torch.full_like(x, float("nan")), y, 0.1)


def test_labels_outside_the_classes_are_an_input_error():
    with pytest.raises(InputError, match=r"range over \[0, 12\] but the classifier has 10 classes"):
        check_labels(torch.tensor([0, 3, 12]), 10)
    with pytest.raises(InputError, match="integer tensor of class indices"):
        check_labels(torch.tensor([0.5, 1.0]), 10)


def test_a_model_that_is_not_differentiable_is_a_clear_error(digits):
    x, y = digits
    with pytest.raises(NotDifferentiableError, match="do not depend differentiably on its input"):
        fgsm(ArgmaxOneHot(trained_digits_net()), x, y, 0.1, input_range=R)

    class Detached(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = trained_digits_net()

        def forward(self, x):
            return self.net(x.detach())  # the output still has a gradient (weights), the input has none

    with pytest.raises(NotDifferentiableError, match="detached inside the model"):
        pgd(Detached(), x, y, 0.1, input_range=R)


def test_probabilities_are_recognised():
    z = torch.randn(16, 10)
    assert looks_like_probabilities(torch.softmax(z, 1))
    assert not looks_like_probabilities(z)
    assert not looks_like_probabilities(torch.log_softmax(z, 1))
