"""Figure 4 (middle): the Analog SGD error grows with the noise variance σ².

Analog SGD simulated by AIHWKit on the soft-bounds device (τ = 2), with additive weight noise of
variance σ² ∈ {1e-3, 1e-2, 1e-1, 1} on every read.

    python S3.2-ablation-sigma.py     # ≈ 5 s; writes results/figures/fig4b_ablation_sigma.{png,pdf}

Problem (as in the authors' code): d = 50, 100 rows, x* = 0.5·N(0, 1), A ~ N(0, 1), loss MSE/2, α = 0.1,
200 iterations, dw_min 1e-4, desired_bl 5000, weight-noise std √σ² (no correction factor).
Initialisation: the authors' script zeroes only the bias, so the tile keeps AnalogLinear's random
default init U(±1/√50) (--init authors, the default); --init zero starts every weight at 0.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import torch
from tqdm import tqdm

from utils import cli
from utils.least_squares import (
    add_backend_flags,
    diverged_note,
    make_problem,
    plateau,
    pulsed_simulator,
    run_aihwkit,
)
from utils.paper import DATA_SEED, LEAST_SQUARES, RUN_SEED
from utils.plotting import ema, save_figure, style
from utils.runs import RunFolder

PAPER = LEAST_SQUARES["S3.2-ablation-sigma"]  # the authors' settings
FIGURE, DEFAULTS = PAPER.figure, PAPER.settings


def parse_args(argv: list[str] | None = None):
    p = cli.make_parser(__doc__)
    p.add_argument("--sigma2", type=cli.nonneg_float, nargs="+", default=list(DEFAULTS["sigma2"]),
                   help="weight-noise variances σ², one curve each (default: %(default)s)")
    p.add_argument("--lr", type=cli.positive_float, default=DEFAULTS["lr"],
                   help="step size α (default: %(default)s)")
    p.add_argument("--tau", type=cli.positive_float, default=DEFAULTS["tau"],
                   help="device bound τ (default: %(default)s)")
    p.add_argument("--steps", type=cli.positive_int, default=DEFAULTS["steps"],
                   help="gradient steps per run (default: %(default)s)")
    p.add_argument("--init", choices=["authors", "zero"], default=DEFAULTS["init"],
                   help="tile weights at the start: AnalogLinear's random default (authors) or 0")
    cli.add_pulse_flags(p, DEFAULTS["desired_bl"], DEFAULTS["dw_min"])
    cli.add_output_flags(p, seed=RUN_SEED, data_seed=DATA_SEED)
    add_backend_flags(p)
    return p.parse_args(argv)


def compute(args) -> dict:
    problem = make_problem("S3.2", seed=args.data_seed)
    curves = {}
    for var in tqdm(args.sigma2, desc="S3.2 runs (one per σ²)"):
        rpu = pulsed_simulator(args).config(args.tau, args.dw_min, math.sqrt(var),
                                            args.desired_bl, subtract_symmetry_point=True)
        curves[str(var)] = run_aihwkit(problem, rpu, args.lr, args.steps, seed=args.seed,
                                       init_weight=None if args.init == "authors" else 0.0,
                                       backend=pulsed_simulator(args).backend)
    return curves


def plot(args, curves: dict) -> None:
    fig, ax = plt.subplots(figsize=(3.9, 2.8))
    for i, var in enumerate(args.sigma2):
        loss = curves[str(var)]["loss"]
        print(f"σ²={var:g}: plateau (last 20 %) {plateau(loss):.3e}")
        ax.plot(ema(loss, PAPER.plot["ema"]), **style(i), markevery=max(1, args.steps // 8),
                label=f"σ²={var:g}" + diverged_note(curves[str(var)]))
    ax.legend(loc="lower left", bbox_to_anchor=(1, 0))
    ax.set(yscale="log", xlabel="Number of gradient computations k", ylabel="f(W_k) − f*",
           title=f"Analog SGD ({pulsed_simulator(args).label}), τ={args.tau:g}, init {args.init}")
    ax.grid(True, which="both", alpha=0.3)
    save_figure(fig, args.out, FIGURE + pulsed_simulator(args).suffix)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    run = RunFolder.from_args(args, PAPER.script, ignore=pulsed_simulator(args).ignore)
    plot(args, run.run_or_load(lambda: compute(args), args.force))


if __name__ == "__main__":
    main()
