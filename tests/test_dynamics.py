"""The paper's properties of the update rules, checked numerically (the paper)."""

from __future__ import annotations

import math

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


def test_noisy_gradient_adds_noise_of_std_sigma():
    """σ = 0 returns the gradient itself; σ = 1 and σ = 0.3 add noise of that std (10⁵ draws:
    the std within 2 %, > 9 standard errors of the estimate)."""
    from utils.dynamics import noisy_gradient

    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.zeros(100_000))
    p.grad = torch.full((100_000,), 0.5)
    assert torch.equal(noisy_gradient(p, 0.0), p.grad)
    for sigma in (1.0, 0.3):
        noise = noisy_gradient(p, sigma) - 0.5
        assert float(noise.std()) == pytest.approx(sigma, rel=0.02)
        assert abs(float(noise.mean())) < 5 * sigma / 100_000 ** 0.5


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


# --- the paper's claims on a small budget (600 full-batch steps of S3.2 at step size 0.1) ---------

SMALL = dict(steps=600, lr=0.1, tau=2.0, sigma=0.1)


def _tiki_taka(tau: float, sigma: float, lr: float):
    """Tiki-Taka with effective step ``lr`` and a memory of 30 steps on P (as S3.1)."""
    mean_abs = sigma * (2 / torch.pi) ** 0.5
    return lambda ps: TikiTakaDynamic(ps, lr * mean_abs / tau, tau / (30 * mean_abs), tau, sigma)


@pytest.fixture(scope="module")
def small_runs() -> dict:
    problem = make_problem("S3.2")
    steps, lr, tau, sigma = SMALL["steps"], SMALL["lr"], SMALL["tau"], SMALL["sigma"]
    runs = {"digital": (lambda ps: NoisySGD(ps, lr=lr, sigma=sigma), 0.0)}
    for s in (0.03, 0.3):  # σ ablation of Analog SGD (σ = 0.1 is the init run at 0 below)
        runs[f"analog/sigma={s}"] = (lambda ps, s=s: AnalogSGDDynamic(ps, lr, tau, s), 0.0)
    for init in (0.0, 1.0, -1.0):  # initialisation ablation: W₀ = init everywhere
        runs[f"analog/init={init}"] = (lambda ps: AnalogSGDDynamic(ps, lr, tau, sigma), init)
    for t in (1.5, 5.0):  # Tiki-Taka across τ
        runs[f"tiki-taka/{t}"] = (_tiki_taka(t, sigma, lr), 0.0)
    return {k: run_dynamic(problem, make, steps=steps, init=init)
            for k, (make, init) in runs.items()}


def test_sigma_ablation_plateau_grows_with_sigma2_figure_4b(small_runs):
    """Analog SGD's plateau rises with the noise σ²: σ = 0.03, 0.1, 0.3 each at least 2× above the
    previous (digital SGD's noise floor alone scales as σ²)."""
    p = [plateau(small_runs[k]["loss"]) for k in
         ("analog/sigma=0.03", "analog/init=0.0", "analog/sigma=0.3")]
    assert p[1] > 2 * p[0] and p[2] > 2 * p[1], p


def test_initialisation_ablation_ends_at_one_level_figure_4c(small_runs):
    """Analog SGD started from W₀ = 0, +τ/2 and −τ/2 (weights and bias) ends on one plateau: the
    three plateaus within 15 % of each other, although the starts differ by far more."""
    starts = [small_runs[f"analog/init={i}"]["loss"][0] for i in (0.0, 1.0, -1.0)]
    ends = [plateau(small_runs[f"analog/init={i}"]["loss"]) for i in (0.0, 1.0, -1.0)]
    assert max(starts) > 3 * min(starts)
    assert max(ends) < 1.15 * min(ends), ends


def test_tiki_taka_stays_near_digital_across_tau_figure_4a(small_runs):
    """Tiki-Taka's plateau stays within 1.5× digital SGD's at τ = 1.5 and 5, while Analog SGD's at
    τ = 2 lies above both."""
    digital = plateau(small_runs["digital"]["loss"])
    for tau in (1.5, 5.0):
        assert plateau(small_runs[f"tiki-taka/{tau}"]["loss"]) < 1.5 * digital, tau
    assert plateau(small_runs["analog/init=0.0"]["loss"]) > 1.5 * digital


def test_theorem_2_bound_holds_with_its_step_size(small_runs):
    """Theorem 2: with α = √((f(W₀) − f*)/(σ²LK)) ≤ 1/L, the mean of ‖∇f(W_k)‖² over K steps is at
    most 4√((f(W₀) − f*)σ²L/K)/(1 − W_max²/τ²) + 4σ²S_K, σ² the total gradient-noise variance
    (σ² per element over d + 1 parameters), L the largest Hessian eigenvalue of the train loss."""
    problem = make_problem("S3.2")
    tau, sigma, steps = SMALL["tau"], SMALL["sigma"], SMALL["steps"]
    ones = torch.ones(problem.A.shape[0], 1)
    design = torch.cat([problem.A, ones], 1)
    hessian = 2 * problem.loss_factor / problem.A.shape[0] * design.T @ design
    L = float(torch.linalg.eigvalsh(hessian).max())
    f0 = float(problem.train_loss(torch.zeros_like(problem.y)))  # W₀ = 0; f* = 0 (exact fit)
    noise = sigma ** 2 * (problem.d + 1)
    alpha = math.sqrt(f0 / (noise * L * steps))
    assert alpha <= 1 / L  # where the theorem applies
    curve = run_dynamic(problem, lambda ps: AnalogSGDDynamic(ps, alpha, tau, sigma), steps=steps)
    w_max = max(curve["w_inf"])
    assert w_max < tau
    lhs = sum(curve["grad_norm_sq"][:steps]) / steps
    rhs = (4 * math.sqrt(f0 * noise * L / steps) / (1 - w_max ** 2 / tau ** 2)
           + 4 * noise * amplification_factor(curve["w_inf"], tau))
    assert lhs <= rhs, (lhs, rhs)
