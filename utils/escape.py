"""Analog SGD's failure on the MNIST FCN as a probability (S4.3, beyond the paper).

On the FCN, Analog SGD either trains normally or stays at chance (every image classed "1", 11.35 %),
and which of the two happens is random. This module holds the study's definitions, in one place:

- :data:`ESCAPE_ACC` (utils.paper, beside the report's CHANCE_ACC): a run *left chance* at the first
  epoch whose test accuracy exceeds 50 %; a run that has not left chance by its last epoch is
  *stuck* (docs/escape_study.md).
- :func:`probe_tiles`: what each run records per epoch beside its accuracy, to find the mechanism:
  per analog layer k (1 = input layer) its learned output scale ``out_scale_k`` (the digital gain of
  AIHWKit's ``learn_out_scaling``, mean over the layer's tiles; absent when scaling is off), and the
  devices' fill ``fill_k`` (mean of |w| / the bound the weight's sign moves it toward, per device:
  1 = at the bound; τ up to each device's ±30 % spread) and ``sat_k`` (the fraction of devices with
  fill ≥ 1 − :data:`SATURATION`).
- :func:`wilson_interval`, :func:`escape_epoch`, :func:`still_at_chance`: the statistics.
- :func:`stuck_main`: the command line of S4.3-stuck-probability.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from utils.paper import ESCAPE_ACC, FIGURE5_RUNS, FIGURE5_STUCK

SATURATION = 0.05  # a device within 5 % of its bound counts as saturated
TAUS = (0.6, 0.7, 0.74, 0.78, 0.8, 0.9, 1.0)  # the study's τ grid
RUNS_PER_TAU = 12  # seeds 0 … 11
STUDY = "escape"  # the experiment folder: runs/MNIST-FCN-escape-torch-pulse/
ABLATION = "escape-no-out-scaling"  # --no-out-scaling: runs/MNIST-FCN-escape-no-out-scaling-torch-pulse/
Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile


def escape_epoch(rows: Sequence[dict]) -> int | None:
    """The first epoch whose test accuracy exceeds :data:`ESCAPE_ACC` (rows of metrics.jsonl), or
    None: the run never left chance."""
    for row in rows:
        if row["test_acc"] > ESCAPE_ACC:
            return int(row["epoch"])
    return None


def still_at_chance(escapes: Sequence[int | None], epochs: int) -> np.ndarray:
    """(epochs + 1,): at each epoch 0 … epochs, the fraction of runs that have not left chance yet."""
    grid = np.arange(epochs + 1)
    stuck = np.array([np.full(grid.shape, True) if e is None else grid < e for e in escapes])
    return stuck.mean(axis=0)


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion k / n (95 % at the default z)."""
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # at k = 0 (k = n) the bound is 0 (1) exactly; the formula leaves a rounding error there
    return (0.0 if k == 0 else centre - half), (1.0 if k == n else centre + half)


def paper_outcome_probability(tau: float, p: float) -> float | None:
    """The probability, if each run is stuck with probability ``p``, of the paper's outcome at τ
    (3 of 3 stuck at 0.7: p³; none of 3 at 0.78 and 0.8: (1 − p)³); None at other τ."""
    stuck = FIGURE5_STUCK.get(round(tau, 6))
    if stuck is None:
        return None
    return math.comb(FIGURE5_RUNS, stuck) * p ** stuck * (1 - p) ** (FIGURE5_RUNS - stuck)


# --- the per-epoch probe of a batched torch-backend model ---------------------------------------------

def probe_tiles(model) -> list[dict[str, float]]:
    """Per run of a batched model (utils.analog_torch.nn): ``out_scale_k``, ``fill_k`` and
    ``sat_k`` of every analog layer k (see the module docstring). Computed where the model lives
    (CPU or GPU); only the R·3·layers numbers come back."""
    import torch
    from torch import nn

    from utils.analog_torch.nn import analog_layers

    columns: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for k, layer in enumerate(analog_layers(model), start=1):
            scaling = layer.out_scaling
            if scaling is not None:
                gains = list(scaling) if isinstance(scaling, nn.ParameterList) else [scaling]
                columns[f"out_scale_{k}"] = torch.stack(
                    [g.reshape(layer.runs) for g in gains]).mean(dim=0)
            fill = _fill(list(layer.analog_tiles()), layer.runs)
            if fill is not None:
                columns[f"fill_{k}"] = fill.mean(dim=1)
                columns[f"sat_{k}"] = (fill >= 1 - SATURATION).double().mean(dim=1)
    values = {name: column.double().cpu().tolist() for name, column in columns.items()}
    runs = len(next(iter(values.values()))) if values else 0
    return [{name: v[r] for name, v in values.items()} for r in range(runs)]


def _fill(tiles, runs: int):
    """(R, devices): |w| over the bound its sign moves it toward, per device of the tiles' visible
    arrays (Tiki-Taka: the slow array C); None for ideal (FP) tiles."""
    import torch

    parts = []
    for tile in tiles:
        array = {"single": "array", "transfer": "slow"}.get(tile.kind)
        if array is None:
            return None
        devices = getattr(tile, array)
        w = devices.weight
        bound = torch.where(w >= 0, devices.max_bound, -devices.min_bound)
        parts.append((w.abs() / bound).reshape(runs, -1))
    return torch.cat(parts, dim=1)


# --- S4.3-stuck-probability.py ------------------------------------------------------------------------

def stuck_main(doc: str | None, batch_size: int, argv: list[str] | None = None) -> None:
    """The command line of S4.3-stuck-probability.py: S4.1's flags with the study's defaults
    (Analog SGD, torch backend, pulse updates, τ grid, 12 seeds), plus --no-out-scaling."""
    from utils.backend import make_backend
    from utils.cli import UserError, add_training_flags, fail, make_parser
    from utils.mnist import train_mnist

    parser = make_parser(doc)
    add_training_flags(parser, batch_size=batch_size, settings=("Analog SGD",))
    parser.add_argument("--no-out-scaling", action="store_true",
                        help="the ablation: tiles without the learnable digital output gain "
                             "(AIHWKit's learn_out_scaling, on in the authors' Analog SGD); runs go "
                             f"to OUT/runs/MNIST-FCN-{ABLATION}-torch-pulse/")
    parser.set_defaults(backend="torch", update_mode="pulse", tau=list(TAUS),
                        seed=list(range(RUNS_PER_TAU)))
    args = parser.parse_args(argv)
    if not make_backend(args.backend).batched:
        fail("the study trains with --backend torch (its runs are batched and record the tiles' "
             "state per epoch); for the AIHWKit cross-check run S4.1-mnist-FCN.py "
             "(docs/escape_study.md)", prog=parser.prog)
    try:
        train_mnist(args, "FCN", study=ABLATION if args.no_out_scaling else STUDY,
                    out_scaling=not args.no_out_scaling, probe=probe_tiles)
    except UserError as err:
        fail(str(err), prog=parser.prog)
