"""The update rules of utils/dynamics.py on hand-made cases, one step at a time.

Each expected value is the paper's equation evaluated by hand; the Gaussian gradient noise is
replaced by a constant where its scale is checked. These tests are the mutation campaign's runner
for utils/dynamics.py (mutmut_config.py, docs/testing.md), so they must be fast.
"""

from __future__ import annotations

import pytest
import torch

from utils import dynamics
from utils.dynamics import AnalogSGDDynamic, NoisySGD, TikiTakaDynamic, analog_increment


@pytest.fixture
def unit_noise(monkeypatch):
    """Every Gaussian draw ε at 2, so that a step adds exactly 2σ to the gradient (a draw of 1
    would not tell σ·ε from σ/ε)."""
    monkeypatch.setattr(dynamics.torch, "randn_like", lambda t: torch.full_like(t, 2.0))


def param(*values: float, grad: tuple[float, ...] | None = None) -> torch.nn.Parameter:
    p = torch.nn.Parameter(torch.tensor(values, dtype=torch.float64))
    if grad is not None:
        p.grad = torch.tensor(grad, dtype=torch.float64)
    return p


def test_analog_increment_by_hand():
    """w ← w + Δ − |Δ|·w/τ: from w = 0.5 at τ = 2, Δ = +0.1 gives 0.575, Δ = −0.1 gives 0.375."""
    w = torch.tensor([0.5, 0.5], dtype=torch.float64)
    out = analog_increment(w, torch.tensor([0.1, -0.1], dtype=torch.float64), 2.0)
    assert out is w  # in place
    torch.testing.assert_close(w, torch.tensor([0.575, 0.375], dtype=torch.float64))


def test_noisy_gradient_adds_sigma_times_the_draw(unit_noise):
    p = param(0.0, 0.0, grad=(0.5, -1.0))
    torch.testing.assert_close(dynamics.noisy_gradient(p, 0.3),
                               torch.tensor([1.1, -0.4], dtype=torch.float64))
    torch.testing.assert_close(dynamics.noisy_gradient(p, 1.0),
                               torch.tensor([2.5, 1.0], dtype=torch.float64))
    g = dynamics.noisy_gradient(p, 0.0)
    torch.testing.assert_close(g, p.grad)
    assert g is not p.grad  # a copy: the rules may change it without touching the gradient


def test_noisy_sgd_step_by_hand(unit_noise):
    """W ← W − α(∇f + σε) = 1 − 0.1·(2 + 0.5·2) = 0.7; by default σ = 0: 1 − 0.1·2 = 0.8."""
    p = param(1.0, grad=(2.0,))
    NoisySGD([p], lr=0.1, sigma=0.5).step()
    assert float(p.detach()) == pytest.approx(0.7)
    p = param(1.0, grad=(2.0,))
    NoisySGD([p], lr=0.1).step()
    assert float(p.detach()) == pytest.approx(0.8)


def test_analog_sgd_step_by_hand(unit_noise):
    """W ← W − αg̃ − (α/τ)|g̃|·W with g̃ = 2 + 0.5·2 = 3, α = 0.1, τ = 2, W = 1:
    1 − 0.3 − 0.15 = 0.55; W = −1: −1 − 0.3 + 0.15 = −1.15. Default σ = 0: g̃ = 2."""
    p = param(1.0, -1.0, grad=(2.0, 2.0))
    AnalogSGDDynamic([p], lr=0.1, tau=2.0, sigma=0.5).step()
    torch.testing.assert_close(p.detach(), torch.tensor([0.55, -1.15], dtype=torch.float64))
    p = param(1.0, grad=(2.0,))
    AnalogSGDDynamic([p], lr=0.1, tau=2.0).step()
    assert float(p.detach()) == pytest.approx(1 - 0.2 - 0.1)


def test_a_parameter_without_gradient_is_left_alone():
    p, q = param(1.0, grad=(2.0,)), param(1.0)
    AnalogSGDDynamic([p, q], lr=0.1, tau=2.0).step()
    assert float(q.detach()) == 1.0 and float(p.detach()) != 1.0


def test_step_evaluates_the_closure_with_gradients_and_returns_its_loss():
    p = param(1.0)

    def closure() -> torch.Tensor:
        p.grad = None
        loss = (p * p).sum()  # ∇ = 2W = 2
        loss.backward()
        return loss

    with torch.no_grad():
        loss = NoisySGD([p], lr=0.1).step(closure)
    assert float(loss.detach()) == 1.0
    assert float(p.detach()) == pytest.approx(0.8)
    assert NoisySGD([p], lr=0.1).step() is None


def test_tiki_taka_steps_by_hand(unit_noise):
    """β = 0.5, α = 0.2, τ = 2, σ = 0.5 (g̃ = g + 1), γ = 0.25, transfer every 2nd step; W₀ = 1.
    Step 1 (g = 1, g̃ = 2): P = 0 + 0.5·2 − (0.5/2)·2·0 = 1; no transfer: W = 1, the model
    holds W + γP = 1.25. Step 2 (g = 0, g̃ = 1): P = 1 + 0.5 − 0.25·1·1 = 1.25; transfer:
    W = 1 − 0.2·1.25 − (0.2/2)·1.25·1 = 0.625; the model holds 0.625 + 0.3125 = 0.9375."""
    p = param(1.0)
    opt = TikiTakaDynamic([p], lr=0.2, beta=0.5, tau=2.0, sigma=0.5, gamma=0.25,
                          transfer_every=2)
    assert float(opt.main_array(p)) == 1.0  # before the first step: p itself
    p.grad = torch.tensor([1.0], dtype=torch.float64)
    opt.step()
    assert float(opt.state[p]["P"]) == pytest.approx(1.0)
    assert float(opt.main_array(p)) == pytest.approx(1.0)
    assert float(p.detach()) == pytest.approx(1.25)
    p.grad = torch.tensor([0.0], dtype=torch.float64)
    opt.step()
    assert float(opt.state[p]["P"]) == pytest.approx(1.25)
    assert float(opt.main_array(p)) == pytest.approx(0.625)
    assert float(p.detach()) == pytest.approx(0.9375)


def test_tiki_taka_defaults_transfer_every_step_without_noise_or_mixing():
    """σ = 0, γ = 0, transfer every step: P = 0.5·2 = 1, W = 1 − 0.2 − 0.1 = 0.7 = the model."""
    p = param(1.0, grad=(2.0,))
    opt = TikiTakaDynamic([p], lr=0.2, beta=0.5, tau=2.0)
    opt.step()
    assert float(opt.main_array(p)) == pytest.approx(0.7)
    assert float(p.detach()) == pytest.approx(0.7)


@pytest.mark.parametrize("name, make", [
    ("lr", lambda ps: NoisySGD(ps, lr=0.0)),
    ("sigma", lambda ps: NoisySGD(ps, lr=0.1, sigma=-0.1)),
    ("lr", lambda ps: AnalogSGDDynamic(ps, lr=0.0, tau=1.0)),
    ("tau", lambda ps: AnalogSGDDynamic(ps, lr=0.1, tau=0.0)),
    ("sigma", lambda ps: AnalogSGDDynamic(ps, lr=0.1, tau=1.0, sigma=-0.1)),
    ("lr", lambda ps: TikiTakaDynamic(ps, lr=0.0, beta=0.1, tau=1.0)),
    ("beta", lambda ps: TikiTakaDynamic(ps, lr=0.1, beta=0.0, tau=1.0)),
    ("tau", lambda ps: TikiTakaDynamic(ps, lr=0.1, beta=0.1, tau=0.0)),
    ("sigma", lambda ps: TikiTakaDynamic(ps, lr=0.1, beta=0.1, tau=1.0, sigma=-0.1)),
    ("gamma", lambda ps: TikiTakaDynamic(ps, lr=0.1, beta=0.1, tau=1.0, gamma=-0.1)),
    ("transfer_every", lambda ps: TikiTakaDynamic(ps, lr=0.1, beta=0.1, tau=1.0,
                                                  transfer_every=0)),
])
def test_out_of_range_hyper_parameters_are_rejected_by_name(name, make):
    with pytest.raises(ValueError, match=f"^{name} must be"):
        make([param(0.0)])


def test_boundary_hyper_parameters_are_accepted():
    """σ = 0, γ = 0 and transfer every step are valid (positive lr, β, τ)."""
    NoisySGD([param(0.0)], lr=1e-9, sigma=0.0)
    AnalogSGDDynamic([param(0.0)], lr=1e-9, tau=1e-9, sigma=0.0)
    TikiTakaDynamic([param(0.0)], lr=1e-9, beta=1e-9, tau=1e-9, sigma=0.0, gamma=0.0,
                    transfer_every=1)
