"""The paper's discrete-time update rules as ``torch.optim.Optimizer`` s (pure PyTorch, any device).

Symbols follow the paper (the paper): ``tau`` (τ) is the device bound / asymmetry parameter of the
asymmetric linear device (ALD), ``sigma`` (σ) the std of the Gaussian noise added to every gradient
element, ``lr`` the step size α, ``beta`` (β) Tiki-Taka's auxiliary-array step size, ``gamma`` (γ) its
mixing factor. The symmetric point is 0.

- :class:`NoisySGD`            digital SGD, eq. 2:      W ← W − α(∇f + ε)
- :class:`AnalogSGDDynamic`   Analog SGD, eq. 3:       W ← W − α g̃ − (α/τ)|g̃| ⊙ W,   g̃ = ∇f + ε
- :class:`TikiTakaDynamic`    Tiki-Taka (TT-v1), §4:   P ← P + βg̃ − (β/τ)|g̃| ⊙ P,   W ← W − αP − (α/τ)|P| ⊙ W

Like the authors' emulation, every parameter (bias included) is treated as analog.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor
from torch.optim import Optimizer


def analog_increment(w: Tensor, delta: Tensor, tau: float) -> Tensor:
    """Apply the ALD's expected response to a requested change ``delta``, in place (paper eq. 8).

    ``w ← w + Δ − (|Δ|/τ) ⊙ w``: steps away from 0 shrink as |w| → τ (saturation), steps towards 0
    are amplified (fast reset). Returns ``w``.
    """
    return w.add_(delta - delta.abs() * w / tau)


def noisy_gradient(p: Tensor, sigma: float) -> Tensor:
    """∇f + ε with ε ~ N(0, σ²) i.i.d. per element (drawn from torch's global generator)."""
    if sigma == 0:
        return p.grad.clone()
    return p.grad + sigma * torch.randn_like(p)


def _check(name: str, value: float, positive: bool = False) -> None:
    if not (value > 0 if positive else value >= 0):
        raise ValueError(f"{name} must be {'>' if positive else '>='} 0, got {value}")


class _NoisyOptimizer(Optimizer):
    """Shared skeleton: evaluate the closure, then update every parameter that has a gradient."""

    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        self._update(p, group)
        return loss

    def _update(self, p: Tensor, group: dict) -> None:
        raise NotImplementedError


class NoisySGD(_NoisyOptimizer):
    """Digital SGD with injected Gaussian gradient noise: W ← W − α(∇f(W) + ε)."""

    def __init__(self, params: Iterable[Tensor], lr: float, sigma: float = 0.0) -> None:
        _check("lr", lr, positive=True)
        _check("sigma", sigma)
        super().__init__(params, dict(lr=lr, sigma=sigma))

    def _update(self, p: Tensor, group: dict) -> None:
        p.add_(noisy_gradient(p, group["sigma"]), alpha=-group["lr"])


class AnalogSGDDynamic(_NoisyOptimizer):
    """The Analog SGD dynamic (eq. 3): W ← W − α g̃ − (α/τ)|g̃| ⊙ W with g̃ = ∇f(W) + ε."""

    def __init__(self, params: Iterable[Tensor], lr: float, tau: float, sigma: float = 0.0) -> None:
        _check("lr", lr, positive=True)
        _check("tau", tau, positive=True)
        _check("sigma", sigma)
        super().__init__(params, dict(lr=lr, tau=tau, sigma=sigma))

    def _update(self, p: Tensor, group: dict) -> None:
        analog_increment(p, -group["lr"] * noisy_gradient(p, group["sigma"]), group["tau"])


class TikiTakaDynamic(_NoisyOptimizer):
    """The Tiki-Taka dynamic of the paper, with an auxiliary analog array P per parameter.

    The gradient is taken at what the model holds, W̄ = W + γP (γ = 0 in the paper, so W̄ = W); then
        P ← P + βg̃ − (β/τ)|g̃| ⊙ P              (gradient written onto P, every step)
        W ← W − αP − (α/τ)|P| ⊙ W              (transfer of P onto W, every ``transfer_every`` steps)
    and the parameter is set to the new W + γP. ``lr`` is α (transfer step), ``beta`` is β (P step).
    """

    def __init__(self, params: Iterable[Tensor], lr: float, beta: float, tau: float,
                 sigma: float = 0.0, gamma: float = 0.0, transfer_every: int = 1) -> None:
        _check("lr", lr, positive=True)
        _check("beta", beta, positive=True)
        _check("tau", tau, positive=True)
        _check("sigma", sigma)
        _check("gamma", gamma)
        if transfer_every < 1:
            raise ValueError(f"transfer_every must be >= 1, got {transfer_every}")
        super().__init__(params, dict(lr=lr, beta=beta, tau=tau, sigma=sigma, gamma=gamma,
                                      transfer_every=transfer_every))

    def _update(self, p: Tensor, group: dict) -> None:
        state = self.state[p]
        if not state:
            state["P"] = torch.zeros_like(p)
            state["W"] = p.detach().clone()
            state["step"] = 0
        P, W, tau = state["P"], state["W"], group["tau"]
        analog_increment(P, group["beta"] * noisy_gradient(p, group["sigma"]), tau)
        state["step"] += 1
        if state["step"] % group["transfer_every"] == 0:
            analog_increment(W, -group["lr"] * P, tau)
        p.copy_(W + group["gamma"] * P)

    def main_array(self, p: Tensor) -> Tensor:
        """The main array W of parameter ``p`` (``p`` itself before the first step)."""
        return self.state[p]["W"] if self.state[p] else p.detach()
