"""The synthetic least-squares problems of Figures 1, 3 and 4 and their run loops.

f(W) = ½‖A(W − W*)‖²-type objectives (as in the authors' code): A is N×d Gaussian (N = 100 rows),
x* Gaussian, labels y = A x* + b* (noiseless), model ``Linear(d, 1)`` with a bias, full-batch
gradients. f* = 0, so the recorded value is f(W_k) − f*. As in the authors' code the recorded value is
the training loss divided by d.

Three kinds of run share one loop shape (record f(W_k), then one step, K steps, K + 1 records):
- :func:`run_dynamic`: an ``nn.Linear`` trained by one of the optimizers of :mod:`utils.dynamics`;
- :func:`run_aihwkit`: an ``AnalogLinear`` trained by AIHWKit's ``AnalogSGD`` (pulsed updates), or
  the same by the torch backend (utils.analog_torch).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from utils.backend import AIHWKIT, Backend, from_args
from utils.paper import DATA_SEED, RUN_SEED

ROWS = 100


@dataclass(frozen=True)
class ProblemSpec:
    """One synthetic problem. ``loss`` is "mse" (mean over rows) or "half_mse" (MSE/2)."""

    d: int
    x_scale: float
    a_scale: float
    bias: float
    loss: str


PROBLEMS = {  # the authors' settings
    "S1": ProblemSpec(d=40, x_scale=0.45, a_scale=1.0, bias=0.0, loss="mse"),
    "S2": ProblemSpec(d=40, x_scale=0.3, a_scale=0.5, bias=0.0, loss="half_mse"),
    "S3.2": ProblemSpec(d=50, x_scale=0.5, a_scale=1.0, bias=0.0, loss="half_mse"),
    "S3.3": ProblemSpec(d=50, x_scale=0.5, a_scale=1.0, bias=0.1, loss="mse"),
}


@dataclass(frozen=True)
class Problem:
    spec: ProblemSpec
    A: Tensor       # (N, d) inputs
    y: Tensor       # (N, 1) labels
    x_star: Tensor  # (d,) optimal weights; the optimal bias is spec.bias

    @property
    def d(self) -> int:
        return self.spec.d

    @property
    def loss_factor(self) -> float:
        return 0.5 if self.spec.loss == "half_mse" else 1.0

    def train_loss(self, pred: Tensor) -> Tensor:
        """The loss that is back-propagated: MSE or MSE/2 over all rows (full batch)."""
        return self.loss_factor * torch.mean((pred - self.y) ** 2)

    def objective(self, weight: Tensor, bias: Tensor) -> float:
        """Recorded value f(W) − f*: the exact (noise-free) training loss divided by d."""
        with torch.no_grad():
            pred = self.A @ weight.reshape(-1, 1) + bias.reshape(1, -1)
            return self.train_loss(pred).item() / self.d

    def gradient_norm_sq(self, weight: Tensor, bias: Tensor) -> float:
        """‖∇f(W)‖² of the training loss over weight and bias (the quantity of Theorem 2)."""
        with torch.no_grad():
            r = self.A @ weight.reshape(-1, 1) + bias.reshape(1, -1) - self.y
            scale = 2 * self.loss_factor / self.A.shape[0]
            g_w = scale * (self.A.T @ r)
            g_b = scale * r.sum()
            return (g_w.square().sum() + g_b.square()).item()

    def mean_singular_value(self) -> float:
        return torch.linalg.svdvals(self.A).mean().item()

    def matched_weight_noise(self, sigma: float) -> float:
        """Weight-noise std whose gradient noise has, summed over the d weights, the variance dσ²
        of the dynamic's injected noise.

        With ADDITIVE_CONSTANT weight noise of std s, row n's output gets s‖a_n‖ξ_n. The loss
        c·mean_n (y_n − b_n)² back-propagates d_n = (2c/N)(y_n − b_n), so the weight gradient
        Σ_n d_n a_n carries the noise ε = (2c/N)s Σ_n ‖a_n‖ξ_n a_n with E‖ε‖² = (2cs/N)² Σ_n ‖a_n‖⁴.
        Setting this to dσ² gives s = σ N √d / (2c √(Σ_n ‖a_n‖⁴)).
        """
        n = self.A.shape[0]
        fourth = self.A.square().sum(dim=1).square().sum().item()
        return sigma * n * math.sqrt(self.d) / (2 * self.loss_factor * math.sqrt(fourth))


def make_problem(name: str, seed: int = DATA_SEED, rows: int = ROWS) -> Problem:
    """Draw problem ``name`` ("S1", "S2", "S3.2", "S3.3"): x* first, then A, as the authors do."""
    spec = PROBLEMS[name]
    gen = torch.Generator().manual_seed(seed)
    x_star = spec.x_scale * torch.randn(spec.d, generator=gen)
    A = spec.a_scale * torch.randn(rows, spec.d, generator=gen)
    y = (A @ x_star + spec.bias).reshape(-1, 1)
    return Problem(spec=spec, A=A, y=y, x_star=x_star)


def _curve_record(problem: Problem, weight: Tensor, bias: Tensor, rec: dict[str, list]) -> None:
    rec["loss"].append(problem.objective(weight, bias))
    rec["grad_norm_sq"].append(problem.gradient_norm_sq(weight, bias))
    rec["w_inf"].append(max(weight.abs().max().item(), bias.abs().max().item()))


def _diverged(rec: dict) -> bool:
    """Whether the record just taken is not finite; if so the curve ends before it, and
    ``diverged_step`` names the step k whose f(W_k) was not finite (records are strict JSON)."""
    last = [values[-1] for values in rec.values()]
    if all(math.isfinite(v) for v in last):
        return False
    rec["diverged_step"] = len(rec["loss"]) - 1
    for values in rec.values():
        if isinstance(values, list):
            values.pop()
    print(f"diverged at step {rec['diverged_step']}: f(W) became non-finite; the curve stops there")
    return True


def diverged_note(curve: dict) -> str:
    """" (diverged at step k)" for the label of a curve that diverged, else ""."""
    step = curve.get("diverged_step")
    return "" if step is None else f" (diverged at step {step})"


def run_dynamic(problem: Problem, make_optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer],
                steps: int, seed: int = RUN_SEED, init: float = 0.0) -> dict[str, list[float]]:
    """Train ``Linear(d, 1)`` (weights and bias filled with ``init``) for ``steps`` full-batch steps.

    Returns per-iteration lists (K + 1 entries, W_0 … W_K): ``loss`` f(W_k) − f*, ``grad_norm_sq``
    ‖∇f(W_k)‖² and ``w_inf`` ‖W_k‖_∞ over weights and bias (all analog in the dynamics).
    """
    torch.manual_seed(seed)
    model = nn.Linear(problem.d, 1)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(init)
    optimizer = make_optimizer(list(model.parameters()))
    rec: dict[str, list] = {"loss": [], "grad_norm_sq": [], "w_inf": []}
    for _ in range(steps):
        _curve_record(problem, model.weight, model.bias, rec)
        if _diverged(rec):
            return rec
        optimizer.zero_grad()
        problem.train_loss(model(problem.A)).backward()
        optimizer.step()
    _curve_record(problem, model.weight, model.bias, rec)
    _diverged(rec)
    return rec


def run_aihwkit(problem: Problem, rpu_config, lr: float, steps: int, seed: int = RUN_SEED,
                init_weight: Tensor | float | None = 0.0, init_bias: float = 0.0,
                noisy_record: bool = False, backend: Backend = AIHWKIT) -> dict[str, list[float]]:
    """Analog SGD simulated by ``backend`` (AIHWKit by default): its analog linear layer (d -> 1,
    digital bias; ``rpu_config`` one of its configs) and its AnalogSGD(lr).

    ``init_weight``: a constant or a (d,) tensor written to the tile with ``set_weights`` (which clips
    to the device bounds), or None to keep the layer's random default init. Records as
    :func:`run_dynamic`, from the tile's exact weights; with ``noisy_record`` also ``loss_noisy_read``,
    the loss measured through one more noisy analog forward (how the authors' S1 records it).
    """
    torch.manual_seed(seed)
    given = (None if init_weight is None else
             torch.as_tensor(init_weight, dtype=torch.float32).expand(problem.d).reshape(1, -1))
    model = backend.linear(problem.d, 1, rpu_config)
    w0 = backend.linear_weights(model)[0] if given is None else given
    backend.set_linear_weights(model, w0.clone(), torch.full((1,), float(init_bias)))
    optimizer = backend.least_squares_optimizer(model, lr)

    def weights() -> tuple[Tensor, Tensor]:
        return backend.linear_weights(model)
    rec: dict[str, list] = {"loss": [], "grad_norm_sq": [], "w_inf": []}
    if noisy_record:
        rec["loss_noisy_read"] = []

    def record() -> None:
        weight, bias = weights()
        _curve_record(problem, weight, bias, rec)
        if noisy_record:
            with torch.no_grad():
                rec["loss_noisy_read"].append(problem.train_loss(model(problem.A)).item() / problem.d)

    for _ in range(steps):
        record()
        if _diverged(rec):
            return rec
        optimizer.zero_grad()
        problem.train_loss(model(problem.A)).backward()
        optimizer.step()
    record()
    _diverged(rec)
    return rec


@dataclass(frozen=True)
class PulsedSimulator:
    """The simulator of a least-squares script's pulsed curves (--backend): ``backend`` runs them,
    ``config`` builds its RPU config (utils.rpu_configs.least_squares_config's signature), ``label``
    names it in titles and tables, ``suffix`` is appended to figure and table names, ``ignore``
    lists the flags left out of the run folder's name."""

    backend: Backend
    config: Callable
    label: str
    suffix: str
    ignore: tuple[str, ...]


def add_backend_flags(parser) -> None:
    """--backend and --update-mode of the least-squares scripts."""
    from utils.cli import add_backend_flags as add_flags

    add_flags(parser, "simulator of the pulsed (analog) curves: AIHWKit (default) or the torch "
                      "backend (utils/analog_torch); figure and table names get the suffix _torch",
              compile_flag=False)


def pulsed_simulator(args) -> PulsedSimulator:
    """The :class:`PulsedSimulator` of a script's parsed --backend / --update-mode."""
    from utils.cli import UserError, fail

    backend = from_args(args)
    try:
        backend.require()
    except UserError as err:  # these scripts have no other UserError to report
        fail(str(err))
    return PulsedSimulator(backend, backend.least_squares_config, backend.label,
                           backend.least_squares_suffix, backend.least_squares_ignore)


def amplification_factor(w_inf: list[float], tau: float) -> float:
    """S_K of Theorem 2: the mean over k of (‖W_k‖²_∞/τ²) / (1 − ‖W_k‖²_∞/τ²)."""
    ratios = torch.tensor(w_inf, dtype=torch.float64).square() / tau**2
    return (ratios / (1 - ratios)).mean().item()


def plateau(values: list[float], tail: float = 0.2) -> float:
    """Mean of the last ``tail`` fraction of a curve: its error plateau."""
    n = max(1, int(len(values) * tail))
    return sum(values[-n:]) / n
