"""Figure 3: the Analog SGD dynamic (eq. 3) tracks AIHWKit's pulsed simulation; digital SGD does not.

For each τ: the digital SGD dynamic (eq. 2), the Analog SGD dynamic (eq. 3) and Analog SGD simulated by
AIHWKit on the soft-bounds device with bounds ±τ, on the same least-squares problem.

    python S2-dynamic-verification.py     # ≈ 1 min; writes results/figures/fig3_dynamic_vs_aihwkit.{png,pdf}
                                          # and results/tables/fig3_tracking.md

Problem (as in the authors' code): d = 40, 100 rows, x* = 0.3·N(0, 1), A = N(0, 1)/2, loss MSE/2, zero init,
α = 0.03, gradient noise σ = 0.1. AIHWKit: dw_min = τ/300, desired_bl 5000, no device variations.

AIHWKit has no injected gradient noise: its noise comes from additive weight noise on every read. How
large to make it (--noise-match) decides how well the two agree:
  authors   w_noise = σ / mean singular value of A, the authors' ad-hoc factor (default, for fidelity);
  variance  w_noise chosen so the weight-gradient noise has the dynamic's total variance dσ²
            (derived from the forward-noise model, see utils.least_squares.Problem.matched_weight_noise).
Both simulations are always run; the figure shows the one chosen. The tracking number per τ is the
ratio of the AIHWKit error plateau to the dynamic's (mean of the last 20 % of iterations; 1 = perfect).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch
from tqdm import tqdm

from utils import cli
from utils.dynamics import AnalogSGDDynamic, NoisySGD
from utils.least_squares import (
    add_backend_flags,
    diverged_note,
    make_problem,
    plateau,
    pulsed_simulator,
    run_aihwkit,
    run_dynamic,
)
from utils.paper import DATA_SEED, LEAST_SQUARES, RUN_SEED
from utils.plotting import ema, save_figure
from utils.results import atomic_write_bytes
from utils.runs import RunFolder

PAPER = LEAST_SQUARES["S2-dynamic-verification"]  # the authors' settings
FIGURE, DEFAULTS = PAPER.figure, PAPER.settings
NOISE_MATCHES = ("authors", "variance")


def parse_args(argv: list[str] | None = None):
    p = cli.make_parser(__doc__)
    p.add_argument("--tau", type=cli.positive_float, nargs="+", default=list(DEFAULTS["tau"]),
                   help="device bounds τ, one panel each (default: %(default)s)")
    p.add_argument("--lr", type=cli.positive_float, default=DEFAULTS["lr"],
                   help="step size α (default: %(default)s)")
    p.add_argument("--sigma", type=cli.nonneg_float, default=DEFAULTS["sigma"],
                   help="std σ of the dynamics' gradient noise (default: %(default)s)")
    p.add_argument("--steps", type=cli.positive_int, default=DEFAULTS["steps"],
                   help="gradient steps per run (default: %(default)s)")
    p.add_argument("--states", type=cli.positive_float, default=DEFAULTS["states"],
                   help="dw_min = τ/STATES, i.e. 2·STATES pulses span [-τ, τ] (default: %(default)s)")
    p.add_argument("--noise-match", choices=NOISE_MATCHES, default="authors",
                   help="AIHWKit weight-noise level drawn in the figure (see above; default: "
                        "%(default)s)")
    cli.add_pulse_flags(p, DEFAULTS["desired_bl"])
    cli.add_output_flags(p, seed=RUN_SEED, data_seed=DATA_SEED)
    add_backend_flags(p)
    return p.parse_args(argv)


def weight_noise(problem, sigma: float) -> dict[str, float]:
    return {"authors": sigma / problem.mean_singular_value(),
            "variance": problem.matched_weight_noise(sigma)}


def compute(args) -> dict:
    problem = make_problem("S2", seed=args.data_seed)
    w_noise = weight_noise(problem, args.sigma)
    curves = {}
    least_squares_config = pulsed_simulator(args).config
    for tau in tqdm(args.tau, desc="S2 runs (4 per τ)"):
        curves[f"{tau}/digital"] = run_dynamic(
            problem, lambda ps: NoisySGD(ps, lr=args.lr, sigma=args.sigma), args.steps, args.seed)
        curves[f"{tau}/dynamic"] = run_dynamic(
            problem, lambda ps, tau=tau: AnalogSGDDynamic(ps, lr=args.lr, tau=tau, sigma=args.sigma),
            args.steps, args.seed)
        for match in NOISE_MATCHES:
            rpu = least_squares_config(tau, tau / args.states, w_noise[match], args.desired_bl,
                                       subtract_symmetry_point=True)
            curves[f"{tau}/aihwkit-{match}"] = run_aihwkit(problem, rpu, args.lr, args.steps,
                                                           seed=args.seed,
                                                           backend=pulsed_simulator(args).backend)
    return {"curves": curves, "w_noise": w_noise}


def tracking_table(args, results: dict) -> str:
    curves, w_noise = results["curves"], results["w_noise"]
    name = pulsed_simulator(args).label
    lines = [
        f"# Figure 3: how closely the pulsed simulation ({name}) tracks the Analog SGD dynamic",
        "",
        f"Plateau = mean f(W_k) − f* over the last 20 % of {args.steps} iterations; ratio = pulsed "
        f"plateau / dynamic plateau (1 = perfect tracking). α = {args.lr:g}, σ = {args.sigma:g}, "
        f"dw_min = τ/{args.states:g}, desired_bl = {args.desired_bl}, seed {args.seed}. "
        f"Weight noise: authors {w_noise['authors']:.4g}, variance-matched "
        f"{w_noise['variance']:.4g}.",
        "",
        f"| τ | digital SGD | Analog SGD dynamic | {name} (authors' noise) | ratio | "
        f"{name} (variance-matched) | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for tau in args.tau:
        p = {k: plateau(curves[f"{tau}/{k}"]["loss"])
             for k in ("digital", "dynamic", "aihwkit-authors", "aihwkit-variance")}
        lines.append(
            f"| {tau:g} | {p['digital']:.3e} | {p['dynamic']:.3e} | {p['aihwkit-authors']:.3e} | "
            f"{p['aihwkit-authors'] / p['dynamic']:.2f} | {p['aihwkit-variance']:.3e} | "
            f"{p['aihwkit-variance'] / p['dynamic']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(args, results: dict) -> None:
    curves = results["curves"]
    fig, axes = plt.subplots(1, len(args.tau), figsize=(2.6 * len(args.tau), 2.3), squeeze=False,
                             sharey=True)
    styles = [("digital", "SGD dynamic", "o"), ("dynamic", "Analog SGD dynamic", "x"),
              (f"aihwkit-{args.noise_match}", f"Analog SGD ({pulsed_simulator(args).label})", "d")]
    for ax, tau in zip(axes[0], args.tau, strict=True):
        for i, (key, label, marker) in enumerate(styles):
            ax.plot(ema(curves[f"{tau}/{key}"]["loss"], PAPER.plot["ema"]), color=f"C{i}",
                    marker=marker, markevery=max(1, args.steps // 5), ms=5,
                    label=label + diverged_note(curves[f"{tau}/{key}"]))
        ax.set(yscale="log", title=f"τ={tau:g}", xlabel="Iteration k")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("f(W_k) − f*")
    axes[0][0].legend(loc="upper left", bbox_to_anchor=(0, -0.3), ncol=3)
    fig.suptitle(f"{pulsed_simulator(args).label} weight noise: {args.noise_match}", fontsize=8,
                 y=1.04)
    save_figure(fig, args.out, FIGURE + pulsed_simulator(args).suffix)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    run = RunFolder.from_args(args, PAPER.script,
                              ignore=("noise_match", *pulsed_simulator(args).ignore))
    results = run.run_or_load(lambda: compute(args), args.force)
    table = tracking_table(args, results)
    print(table)
    atomic_write_bytes(run.path / "tracking.md", table.encode())
    atomic_write_bytes(args.out / "tables" / f"{PAPER.table}{pulsed_simulator(args).suffix}.md",
                       table.encode())
    plot(args, results)


if __name__ == "__main__":
    main()
