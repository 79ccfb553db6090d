"""Figure 4 (left): the Analog SGD error floor shrinks as τ grows; Tiki-Taka has none.

Analog SGD (dynamic, eq. 3) for τ ∈ {2, 3, 5, 10, 20, 50} beside digital SGD, with the asymptotic
floor 4σ²S_K of Theorem 2 computed from each run's own weights, and the Tiki-Taka dynamic at the same τ.

    python S3.1-ablation-tau.py     # ≈ 1 min; writes results/figures/fig4a_ablation_tau.{png,pdf}
                                    # and results/tables/fig4a_ablation_tau.md

The authors' S3.1 script duplicates S2; this one is ours. Problem: the S3.2 problem
(d = 50, 100 rows, x* = 0.5·N(0, 1), A ~ N(0, 1), loss MSE/2, zero init), α = 0.03, gradient noise
σ = 0.1 per element (so E‖ε‖² = σ²·51 over weights and bias, the σ² of Theorem 2).

Panels: left, f(W_k) − f* (EMA 0.8); right, ‖∇f(W_k)‖² with the floor 4σ²S_K (dashed), where
S_K = mean_k (‖W_k‖²_∞/τ²)/(1 − ‖W_k‖²_∞/τ²) over the second half of the run.

Tiki-Taka step sizes. P tracks (τ/E|ε|)∇f (the tracking lemma, the paper), so W moves by
≈ α·τ/E|ε| times the gradient. We set α = η·E|ε|/τ so that this effective step equals Analog SGD's
(η = α_SGD), and β = τ/(m·E|ε|) so that P forgets in about m steps; E|ε| = σ√(2/π).
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import torch
from tqdm import tqdm

from utils import cli
from utils.dynamics import AnalogSGDDynamic, NoisySGD, TikiTakaDynamic
from utils.least_squares import (
    amplification_factor,
    diverged_note,
    make_problem,
    plateau,
    run_dynamic,
)
from utils.paper import DATA_SEED, LEAST_SQUARES, RUN_SEED
from utils.plotting import MARKERS, PALETTE, ema, save_figure
from utils.results import atomic_write_bytes
from utils.runs import RunFolder

PAPER = LEAST_SQUARES["S3.1-ablation-tau"]  # our settings (the authors' S3.1 copies S2)
FIGURE, DEFAULTS = PAPER.figure, PAPER.settings
EMA = PAPER.plot["ema"]


def parse_args(argv: list[str] | None = None):
    p = cli.make_parser(__doc__)
    p.add_argument("--tau", type=cli.positive_float, nargs="+", default=list(DEFAULTS["tau"]),
                   help="device bounds τ (default: %(default)s)")
    p.add_argument("--lr", type=cli.positive_float, default=DEFAULTS["lr"],
                   help="step size α of digital and Analog SGD, and Tiki-Taka's effective step η "
                        "(default: %(default)s)")
    p.add_argument("--sigma", type=cli.positive_float, default=DEFAULTS["sigma"],
                   help="gradient-noise std σ per element (default: %(default)s)")
    p.add_argument("--steps", type=cli.positive_int, default=DEFAULTS["steps"],
                   help="gradient steps per run (default: %(default)s)")
    p.add_argument("--tt-memory", type=cli.positive_float, default=DEFAULTS["tt_memory"],
                   help="m: Tiki-Taka's P forgets in about m steps, β = τ/(m·E|ε|) "
                        "(default: %(default)s)")
    cli.add_output_flags(p, seed=RUN_SEED, data_seed=DATA_SEED)
    return p.parse_args(argv)


def tiki_taka_steps(tau: float, lr: float, sigma: float, memory: float) -> tuple[float, float]:
    """(α, β) of the Tiki-Taka dynamic for effective step ``lr`` and memory ``memory`` steps."""
    mean_abs_noise = sigma * math.sqrt(2 / math.pi)
    return lr * mean_abs_noise / tau, tau / (memory * mean_abs_noise)


def compute(args) -> dict:
    problem = make_problem("S3.2", seed=args.data_seed)
    curves = {"digital": run_dynamic(problem, lambda ps: NoisySGD(ps, args.lr, args.sigma),
                                     args.steps, args.seed)}
    for tau in tqdm(args.tau, desc="S3.1 runs (Analog SGD + Tiki-Taka per τ)"):
        curves[f"{tau}/analog"] = run_dynamic(
            problem, lambda ps, tau=tau: AnalogSGDDynamic(ps, args.lr, tau, args.sigma),
            args.steps, args.seed)
        alpha, beta = tiki_taka_steps(tau, args.lr, args.sigma, args.tt_memory)
        curves[f"{tau}/tiki-taka"] = run_dynamic(
            problem, lambda ps, tau=tau, a=alpha, b=beta: TikiTakaDynamic(ps, a, b, tau, args.sigma),
            args.steps, args.seed)
    return curves


def summary(args, curves: dict) -> tuple[list[dict], str]:
    total_var = args.sigma**2 * (make_problem("S3.2", seed=args.data_seed).d + 1)
    rows = []
    for tau in args.tau:
        analog = curves[f"{tau}/analog"]
        s_k = amplification_factor(analog["w_inf"][len(analog["w_inf"]) // 2:], tau)
        alpha, beta = tiki_taka_steps(tau, args.lr, args.sigma, args.tt_memory)
        rows.append(dict(tau=tau, analog=plateau(analog["loss"]),
                         tiki_taka=plateau(curves[f"{tau}/tiki-taka"]["loss"]),
                         grad_sq=plateau(analog["grad_norm_sq"]), s_k=s_k,
                         floor=4 * total_var * s_k, w_max=max(analog["w_inf"]) / tau,
                         tt_alpha=alpha, tt_beta=beta))
    digital = plateau(curves["digital"]["loss"])
    lines = [
        "# Figure 4 (left): error floor against τ",
        "",
        f"Plateau = mean over the last 20 % of {args.steps} iterations. α = {args.lr:g}, "
        f"σ = {args.sigma:g} per element (σ² = {total_var:.3g} in Theorem 2), seed {args.seed}. "
        f"Digital SGD plateau: {digital:.3e}.",
        "",
        "| τ | Analog SGD f − f* | Tiki-Taka f − f* | Analog SGD ‖∇f‖² | 4σ²S_K | max ‖W‖_∞/τ | "
        "TT α | TT β |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['tau']:g} | {r['analog']:.3e} | {r['tiki_taka']:.3e} | {r['grad_sq']:.3e} | "
              f"{r['floor']:.3e} | {r['w_max']:.2f} | {r['tt_alpha']:.3g} | {r['tt_beta']:.3g} |"
              for r in rows]
    return rows, "\n".join(lines) + "\n"


def plot(args, curves: dict, rows: list[dict]) -> None:
    fig, (ax_f, ax_g) = plt.subplots(1, 2, figsize=(8.4, 3.0), gridspec_kw={"wspace": 0.3})
    ax_f.plot(ema(curves["digital"]["loss"], EMA), color="k", ls="-.",
              label="Digital SGD" + diverged_note(curves["digital"]))
    ax_g.plot(ema(curves["digital"]["grad_norm_sq"], EMA), color="k", ls="-.")
    for i, (tau, row) in enumerate(zip(args.tau, rows, strict=True)):
        # colour and marker name τ (markers keep τ apart in grey); the line style names the algorithm
        marks = {"color": PALETTE[i], "marker": MARKERS[i], "markevery": max(1, args.steps // 6),
                 "ms": 4}
        ax_f.plot(ema(curves[f"{tau}/analog"]["loss"], EMA), ls="--",
                  label=f"τ={tau:g}" + diverged_note(curves[f"{tau}/analog"]), **marks)
        ax_f.plot(ema(curves[f"{tau}/tiki-taka"]["loss"], EMA), ls="-", lw=0.8, **marks)
        ax_g.plot(ema(curves[f"{tau}/analog"]["grad_norm_sq"], EMA), ls="--", **marks)
        ax_g.axhline(row["floor"], color=PALETTE[i], ls=":", lw=1.2)
    ax_f.plot([], [], color="gray", ls="--", label="Analog SGD")
    ax_f.plot([], [], color="gray", lw=0.8, label="Tiki-Taka")
    ax_f.legend(loc="upper right", ncol=2, fontsize=7)
    ax_f.set(yscale="log", xlabel="Number of gradient computations k", ylabel="f(W_k) − f*")
    ax_g.plot([], [], color="gray", ls=":", label="floor 4σ²S_K (Thm 2)")
    ax_g.legend(loc="upper right", fontsize=7)
    ax_g.set(yscale="log", xlabel="Number of gradient computations k",
             ylabel="‖∇f(W_k)‖² (Analog SGD)")
    for ax in (ax_f, ax_g):
        ax.grid(True, which="both", alpha=0.3)
    save_figure(fig, args.out, FIGURE)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    run = RunFolder.from_args(args, PAPER.script)
    curves = run.run_or_load(lambda: compute(args), args.force)
    rows, table = summary(args, curves)
    print(table)
    atomic_write_bytes(run.path / "summary.md", table.encode())
    atomic_write_bytes(args.out / "tables" / f"{PAPER.table}.md", table.encode())
    plot(args, curves, rows)


if __name__ == "__main__":
    main()
