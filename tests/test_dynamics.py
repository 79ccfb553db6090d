"""The paper's properties of the update rules, checked numerically (the paper)."""

from __future__ import annotations

import pytest
import torch

from utils.dynamics import AnalogSGDDynamic, NoisySGD, TikiTakaDynamic, analog_increment
from utils.least_squares import amplification_factor, make_problem, plateau, run_dynamic


def test_weights_stay_inside_the_bound_theorem_1():
    """‖W_0‖∞ ≤ τ and every ‖ΔW_k‖∞ ≤ τ  ⇒  ‖W_k‖∞ ≤ τ for all k, with no projection."""
    gen = torch.Generator().manual_seed(0)
    tau = 0.7
    w = (torch.rand(10_000, generator=gen) * 2 - 1) * tau
    w[:4] = torch.tensor([tau, -tau, tau, -tau])  # start on the bound itself
    for _ in range(200):
        delta = (torch.rand(10_000, generator=gen) * 2 - 1) * tau  # |Δ| up to τ
        delta[:4] = torch.tensor([tau, -tau, -tau, tau])
        analog_increment(w, delta, tau)
        assert w.abs().max().item() <= tau * (1 + 1e-6)


def test_steps_larger_than_tau_can_leave_the_box():
    """The bound of Theorem 1 needs |Δ| ≤ τ: a larger step overshoots (so the test above can fail)."""
    w = torch.tensor([0.0])
    analog_increment(w, torch.tensor([2.0]), tau=1.0)
    assert w.item() > 1.0


def test_saturation_and_fast_reset_lemma_1():
    """Steps away from 0 shrink by |1 − |w|/τ|, steps towards 0 grow by |1 + |w|/τ|."""
    tau, w0, step = 2.0, 1.5, 1e-3
    for sign in (+1, -1):
        w = torch.tensor([sign * w0])
        analog_increment(w, torch.tensor([sign * step]), tau)  # away from 0
        assert abs(w.item() - sign * w0) == pytest.approx(step * (1 - w0 / tau), rel=1e-4)
        w = torch.tensor([sign * w0])
        analog_increment(w, torch.tensor([-sign * step]), tau)  # towards 0
        assert abs(w.item() - sign * w0) == pytest.approx(step * (1 + w0 / tau), rel=1e-4)


def test_analog_gd_without_noise_reaches_the_optimum_theorem_9():
    problem = make_problem("S3.2")
    curve = run_dynamic(problem, lambda ps: AnalogSGDDynamic(ps, lr=0.1, tau=2.0, sigma=0.0),
                        steps=4000)
    assert curve["loss"][0] > 0.1
    assert curve["loss"][-1] < 1e-8


@pytest.fixture(scope="module")
def plateaus() -> dict:
    problem = make_problem("S3.2")
    runs = {"digital": lambda ps: NoisySGD(ps, lr=0.03, sigma=0.1)}
    for tau in (2.0, 5.0, 50.0):
        runs[f"analog/{tau}"] = lambda ps, tau=tau: AnalogSGDDynamic(ps, 0.03, tau, 0.1)
    # Tiki-Taka with the step sizes of S3.1 (effective step 0.03, memory 30 steps) at τ = 2
    mean_abs = 0.1 * (2 / torch.pi) ** 0.5
    runs["tiki-taka/2.0"] = lambda ps: TikiTakaDynamic(ps, 0.03 * mean_abs / 2.0,
                                                       2.0 / (30 * mean_abs), 2.0, 0.1)
    return {k: run_dynamic(problem, make, steps=2000) for k, make in runs.items()}


def test_noisy_analog_plateau_lies_above_digital_and_rises_as_tau_falls(plateaus):
    p = {k: plateau(v["loss"]) for k, v in plateaus.items()}
    assert p["analog/2.0"] > p["analog/5.0"] > p["analog/50.0"] > p["digital"] * 0.95
    assert p["analog/2.0"] > 2 * p["digital"]


def test_tiki_taka_plateau_lies_below_analog_sgd_at_small_tau(plateaus):
    p = {k: plateau(v["loss"]) for k, v in plateaus.items()}
    assert p["tiki-taka/2.0"] < 0.5 * p["analog/2.0"]
    assert p["tiki-taka/2.0"] < 1.5 * p["digital"]


def test_amplification_factor_grows_with_saturation():
    assert amplification_factor([0.0, 0.0], tau=1.0) == 0.0
    assert amplification_factor([0.5], tau=1.0) == pytest.approx(0.25 / 0.75)
    assert amplification_factor([0.9], tau=1.0) > amplification_factor([0.5], tau=1.0)


def test_tiki_taka_drift_is_of_order_alpha_beta():
    """At a critical point (∇f = 0, P = 0) the expected drift of W is −(α/τ)E|ε|W for Analog SGD
    (eq. 11) but of order αβ for Tiki-Taka (eq. 12)."""
    torch.manual_seed(0)
    tau, sigma, alpha, beta, w0 = 1.0, 0.1, 0.05, 0.01, 0.5
    n = 200_000

    def drift(make) -> float:
        p = torch.nn.Parameter(torch.full((n,), w0))
        opt = make([p])
        p.grad = torch.zeros(n)
        opt.step()
        return (p.detach() - w0).mean().item()

    analog = drift(lambda ps: AnalogSGDDynamic(ps, alpha, tau, sigma))
    tiki_taka = drift(lambda ps: TikiTakaDynamic(ps, alpha, beta, tau, sigma))
    mean_abs = sigma * (2 / torch.pi) ** 0.5
    assert analog == pytest.approx(-alpha / tau * mean_abs * w0, rel=0.05)
    assert abs(tiki_taka) < 5 * alpha * beta * mean_abs
    assert abs(tiki_taka) < 0.1 * abs(analog)


def test_tiki_taka_main_array_is_asymmetric_one_step():
    """One noiseless Tiki-Taka step from P = 0: P₁ = βg (P starts at its symmetric point), and the
    transfer W₁ = W₀ − αP₁ − (α/τ)|P₁| ⊙ W₀ moves a weight towards 0 further than away from it:
    from W₀ = ±0.5τ with the same downward step the steps differ by a factor (1 + 0.5)/(1 − 0.5)
    = 3. An ideal main array (W₁ = W₀ − αP₁) gives 1."""
    tau, alpha, beta, g = 2.0, 0.1, 0.05, 0.4
    w0 = torch.tensor([0.5 * tau, -0.5 * tau])
    p = torch.nn.Parameter(w0.clone())
    opt = TikiTakaDynamic([p], lr=alpha, beta=beta, tau=tau)
    p.grad = torch.full((2,), g)
    opt.step()
    p1 = beta * g
    expected = w0 - alpha * p1 - alpha / tau * abs(p1) * w0
    torch.testing.assert_close(opt.main_array(p), expected, rtol=1e-6, atol=0)
    steps = (p.detach() - w0).abs()
    assert float(steps[0] / steps[1]) == pytest.approx(3.0, rel=1e-3)


@pytest.mark.parametrize("make", [
    lambda ps: NoisySGD(ps, lr=-0.1),
    lambda ps: AnalogSGDDynamic(ps, lr=0.1, tau=0.0),
    lambda ps: AnalogSGDDynamic(ps, lr=0.1, tau=1.0, sigma=-1.0),
    lambda ps: TikiTakaDynamic(ps, lr=0.1, beta=0.1, tau=-1.0),
])
def test_invalid_hyper_parameters_are_rejected(make):
    with pytest.raises(ValueError):
        make([torch.nn.Parameter(torch.zeros(2))])
