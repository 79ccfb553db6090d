"""Figure 1: digital SGD versus Analog SGD on a least-squares problem, for several step sizes α.

Digital SGD (with injected Gaussian gradient noise) gets more accurate as α shrinks; Analog SGD,
simulated by AIHWKit on a soft-bounds device with bounds ±τ, levels off at an error floor that a
smaller α does not remove.

    python S1-SGD-diff-lr.py     # ≈ 30 s on a laptop CPU; writes results/figures/fig1_sgd_vs_lr.{png,pdf}

Problem (as in the authors' code): d = 40, 100 rows, x* = 0.45·N(0, 1), A ~ N(0, 1), MSE loss, zero init,
recorded value MSE/d. Device: dw_min 1e-4, no variations, τ = 3; IO with additive weight noise of std σ
on every read; desired_bl 800. Digital SGD adds N(0, σ²) to every gradient element.
Panels: left, learning error (mean of the last 20 records) against α; right, the EMA(0.9)-smoothed curves.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import torch
from matplotlib.lines import Line2D
from matplotlib.ticker import NullFormatter
from tqdm import tqdm

from utils import cli
from utils.dynamics import NoisySGD
from utils.least_squares import (
    add_backend_flags,
    diverged_note,
    make_problem,
    pulsed_simulator,
    run_aihwkit,
    run_dynamic,
)
from utils.paper import DATA_SEED, LEAST_SQUARES, RUN_SEED
from utils.plotting import LINESTYLES, PALETTE, ema, save_figure
from utils.runs import RunFolder

PAPER = LEAST_SQUARES["S1-SGD-diff-lr"]  # the authors' settings
FIGURE, DEFAULTS = PAPER.figure, PAPER.settings


def parse_args(argv: list[str] | None = None):
    p = cli.make_parser(__doc__)
    p.add_argument("--lr", type=cli.positive_float, nargs="+", default=list(DEFAULTS["lr"]),
                   help="step sizes α (default: %(default)s)")
    p.add_argument("--steps", type=cli.positive_int, default=DEFAULTS["steps"],
                   help="gradient steps per run (default: %(default)s)")
    p.add_argument("--tau", type=cli.positive_float, default=DEFAULTS["tau"],
                   help="device bound τ: weights live in [-τ, τ] (default: %(default)s)")
    p.add_argument("--sigma", type=cli.nonneg_float, default=DEFAULTS["sigma"],
                   help="gradient-noise std (digital) = weight-noise std (AIHWKit) "
                        "(default: 0.01/sqrt(40) = %(default).4g)")
    p.add_argument("--record", choices=["noisy-read", "exact"], default="noisy-read",
                   help="how the Analog SGD error is measured in the figure: through one more noisy "
                        "analog forward pass, as the authors do (default), or from the exact tile "
                        "weights; both are saved")
    cli.add_pulse_flags(p, DEFAULTS["desired_bl"], DEFAULTS["dw_min"])
    cli.add_output_flags(p, seed=RUN_SEED, data_seed=DATA_SEED)
    add_backend_flags(p)
    return p.parse_args(argv)


def compute(args) -> dict:
    problem = make_problem("S1", seed=args.data_seed)
    rpu = pulsed_simulator(args).config(args.tau, args.dw_min, args.sigma, args.desired_bl)
    curves = {}
    for lr in tqdm(args.lr, desc="S1 runs (analog + digital per α)"):
        curves[f"analog/{lr}"] = run_aihwkit(problem, rpu, lr, args.steps, seed=args.seed,
                                             noisy_record=True, backend=pulsed_simulator(args).backend)
        curves[f"digital/{lr}"] = run_dynamic(
            problem, lambda ps, lr=lr: NoisySGD(ps, lr=lr, sigma=args.sigma), args.steps,
            seed=args.seed)
    return curves


def learning_error(curve: list[float], last: int) -> float:
    return sum(curve[-last:]) / len(curve[-last:])


def plot(args, curves: dict) -> None:
    analog_key = "loss_noisy_read" if args.record == "noisy-read" else "loss"
    series = {"Digital SGD": ("digital", "loss", "*"), "Analog SGD": ("analog", analog_key, "o")}
    fig, (ax_err, ax_conv) = plt.subplots(1, 2, figsize=(8.2, 2.9), gridspec_kw={"wspace": 0.3})
    for i, (name, (kind, key, marker)) in enumerate(series.items()):
        errors = [math.nan if diverged_note(curves[f"{kind}/{lr}"])  # no error: not drawn
                  else learning_error(curves[f"{kind}/{lr}"][key], PAPER.plot["last"]) for lr in args.lr]
        ax_err.plot(args.lr, errors, label=name, color="k", ls=LINESTYLES[i], marker=marker)
        print(f"{name:12s} learning error: " + ", ".join(
            f"α={lr:g}: " + ("diverged" if math.isnan(e) else f"{e:.3e}")
            for lr, e in zip(args.lr, errors, strict=True)))
    ax_err.set(xscale="log", yscale="log", xlabel="Step size α", ylabel="Learning error")
    ax_err.set_xticks(args.lr, [f"{lr:g}" for lr in args.lr])
    ax_err.xaxis.set_minor_formatter(NullFormatter())
    ax_err.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)  # off the data
    ax_err.grid(True, which="both", alpha=0.3)

    for i, lr in enumerate(args.lr):
        for kind, key, marker in series.values():
            y = ema(curves[f"{kind}/{lr}"][key], 0.9)
            ax_conv.plot(y, color=PALETTE[i], ls=LINESTYLES[i], marker=marker,
                         markevery=max(1, args.steps // 8))
    handles = [Line2D([], [], color=PALETTE[i], ls=LINESTYLES[i], lw=2, label=f"α={lr:g}" + "".join(
        f"\n{kind}{diverged_note(curves[f'{kind}/{lr}'])}" for kind in ("analog", "digital")
        if diverged_note(curves[f"{kind}/{lr}"]))) for i, lr in enumerate(args.lr)]
    handles += [Line2D([], [], color="k", ls="", marker=m, label=n) for n, (_, _, m) in series.items()]
    ax_conv.legend(handles=handles, loc="lower left", bbox_to_anchor=(1, 0))
    ax_conv.set(yscale="log", xlabel="Iteration k", ylabel="f(W_k) − f*")
    ax_conv.grid(True, which="both", alpha=0.3)
    sim = pulsed_simulator(args)
    fig.suptitle(f"Digital vs Analog SGD ({sim.label}), τ={args.tau:g}, σ={args.sigma:.2g}, "
                 f"{args.steps} steps; analog error: {args.record}", fontsize=8)
    save_figure(fig, args.out, FIGURE + sim.suffix)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    run = RunFolder.from_args(args, PAPER.script,
                              ignore=("record", *pulsed_simulator(args).ignore))
    plot(args, run.run_or_load(lambda: compute(args), args.force))


if __name__ == "__main__":
    main()
