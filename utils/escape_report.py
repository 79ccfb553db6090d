"""The stuck-probability figure and table from run records (S4.3-plot-stuck.py; never trains).

Reads the Analog SGD runs of three sources: the torch-backend study and its ablation
(S4.3-stuck-probability.py) and AIHWKit's Figure 5 runs (S4.1-mnist-FCN.py, the cross-check). Every
budget some run at a τ has finished (80 epochs; the cross-check's first 20; a run still going) makes
a row of that τ per source, holding that source's runs with at least that many epochs, cut there:
the backends are compared at equal budgets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils import cli, results
from utils.backend import AIHWKIT, make_backend
from utils.cli import UserError
from utils.escape import (
    ABLATION,
    STUDY,
    escape_epoch,
    paper_outcome_probability,
    still_at_chance,
    wilson_interval,
)
from utils.mnist import experiment_name
from utils.paper import ESCAPE_ACC, FIGURE5_RUNS, FIGURE5_STUCK, MNIST_EPOCHS
from utils.runs import read_metrics, read_record

SETTING = "Analog SGD"
NAME = "stuck_probability"  # results/figures/<NAME>.{png,pdf}, results/tables/<NAME>.{md,csv}


@dataclass(frozen=True)
class Source:
    label: str
    experiment: str
    paper_config: bool  # the authors' Analog SGD (output scaling on): the paper's outcome applies
    style: str


PULSE = make_backend("torch", "pulse")  # the study's backend
SOURCES = (
    Source("torch (pulse)", experiment_name("FCN", PULSE, study=STUDY), True, "-"),
    Source("torch (pulse), no output scaling",
           experiment_name("FCN", PULSE, study=ABLATION), False, "--"),
    Source("AIHWKit", experiment_name("FCN", AIHWKIT), True, ":"),
)


@dataclass
class Run:
    folder: Path
    tau: float
    rows: list[dict]

    @property
    def epochs(self) -> int:
        return int(self.rows[-1]["epoch"])

    def last_scale(self) -> float | None:
        """The last layer's learned output scale at the last epoch (None: not recorded)."""
        return _last_layer_scale(self.rows[-1])


@dataclass
class Group:
    source: Source
    tau: float
    epochs: int
    runs: list[Run]

    @property
    def escapes(self) -> list[int | None]:
        return [escape_epoch(r.rows) for r in self.runs]


def read_run(folder: Path) -> Run:
    """One run's τ (config.json) and metrics.jsonl, checked: epochs 0 … E in order, finite test
    accuracies in [0, 1]. Anything else is a UserError naming the file."""
    config_path, metrics_path = folder / "config.json", folder / "metrics.jsonl"
    try:
        tau = float(read_record(config_path)["tau"])
        rows = read_metrics(metrics_path)
        epochs = [int(r["epoch"]) for r in rows]
        accs = [float(r["test_acc"]) for r in rows]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{folder}: unreadable run record ({type(err).__name__}: {err}); rerun "
                        "or delete that run") from None
    if not rows or epochs != list(range(len(rows))):
        raise UserError(f"{metrics_path}: epochs are not 0, 1, 2, … in order; rerun or delete "
                        "that run")
    if not all(math.isfinite(a) and 0 <= a <= 1 for a in accs) or not math.isfinite(tau):
        raise UserError(f"{metrics_path}: a test accuracy (or τ) is not a finite number in "
                        "[0, 1]; rerun or delete that run")
    return Run(folder, tau, rows)


def load_groups(root: Path) -> list[Group]:
    """The (source, τ, budget) groups of the Analog SGD runs under ``root``/runs: the budgets of a
    τ are the epochs its runs (of any source) have finished; a group holds its source's runs that
    reached the budget, cut there. Ordered by source, τ, then the longest budget first."""
    runs = {i: [read_run(m.parent) for m in sorted(
                (Path(root) / "runs" / source.experiment).glob(f"{SETTING}-tau=*/seed*/metrics.jsonl"))]
            for i, source in enumerate(SOURCES)}
    budgets: dict[float, set[int]] = {}
    for run in (r for rs in runs.values() for r in rs):
        budgets.setdefault(run.tau, set()).add(run.epochs)
    groups = []
    for i, source in enumerate(SOURCES):
        for tau in sorted({r.tau for r in runs[i]}):
            for budget in sorted(budgets[tau], reverse=True):
                cut = [Run(r.folder, tau, r.rows[:budget + 1]) for r in runs[i]
                       if r.tau == tau and r.epochs >= budget]
                if cut:
                    groups.append(Group(source, tau, budget, cut))
    return groups


def _median(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.median(values)) if values else None


def table_row(group: Group) -> dict:
    """The numbers of one group (CSV: numbers, None where not applicable)."""
    escapes, n = group.escapes, len(group.runs)
    stuck = sum(e is None for e in escapes)
    lo, hi = wilson_interval(stuck, n)
    p = stuck / n
    applies = group.source.paper_config and group.epochs == MNIST_EPOCHS
    outcome = FIGURE5_STUCK.get(round(group.tau, 6)) if applies else None
    prob = ends = None
    if outcome is not None:
        prob = paper_outcome_probability(group.tau, p)
        ends = sorted((paper_outcome_probability(group.tau, lo),
                       paper_outcome_probability(group.tau, hi)))
    return {
        "backend": group.source.label, "tau": group.tau, "epochs": group.epochs, "runs": n,
        "stuck": stuck, "stuck_frac": p, "stuck_lo": lo, "stuck_hi": hi,
        "escape_epoch_median": _median([e for e in escapes if e is not None]),
        "ended_at_chance": sum(r.rows[-1]["test_acc"] <= ESCAPE_ACC for r in group.runs),
        "out_scale_stuck": _median([r.last_scale() for r, e in zip(group.runs, escapes, strict=True)
                                    if e is None]),
        "out_scale_escaped": _median([r.last_scale() for r, e in zip(group.runs, escapes,
                                                                      strict=True) if e is not None]),
        "paper_stuck_of_3": outcome,
        "paper_outcome_prob": prob,
        "paper_outcome_prob_lo": None if ends is None else ends[0],
        "paper_outcome_prob_hi": None if ends is None else ends[1],
    }


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "–" if value is None else format(value, spec)


def markdown_row(row: dict) -> dict:
    outcome = row["paper_stuck_of_3"]
    return {
        "backend": row["backend"], "tau": f"{row['tau']:g}", "epochs": row["epochs"],
        "runs": row["runs"],
        "stuck": f"{row['stuck']}/{row['runs']} = {row['stuck_frac']:.2f} "
                 f"[{row['stuck_lo']:.2f}, {row['stuck_hi']:.2f}]",
        "escape": _fmt(row["escape_epoch_median"], "g"),
        "ended": row["ended_at_chance"],
        "scale": f"{_fmt(row['out_scale_stuck'])} / {_fmt(row['out_scale_escaped'])}",
        "paper": "–" if outcome is None else f"{outcome} of {FIGURE5_RUNS} stuck",
        "prob": "–" if outcome is None else
                f"{row['paper_outcome_prob']:.3f} [{row['paper_outcome_prob_lo']:.3f}, "
                f"{row['paper_outcome_prob_hi']:.3f}]",
    }


def write_table(groups: list[Group], out: Path) -> list[Path]:
    rows = [table_row(g) for g in groups]
    header = [
        "# Analog SGD on the MNIST FCN: the probability of staying at chance",
        "",
        f"A run left chance at the first epoch with test accuracy > {100 * ESCAPE_ACC:.0f} %; "
        "`stuck`: runs that had not by their last epoch, with the 95 % Wilson interval of the "
        "fraction. `left chance`: median epoch over the runs that did. `ended ≤ 50 %`: runs whose "
        "last epoch is at or below the threshold (more than `stuck`: a run fell back). `output "
        "scale`: the last layer's learned output gain at the last epoch, median over the stuck / "
        "escaped runs (– : none, or not recorded). `paper`: the outcome of the paper's three runs; "
        "`P(paper)`: its probability if each run is stuck with the measured fraction p (p³ for 3 of "
        "3 stuck, (1 − p)³ for none), in brackets at the interval's ends; given for the authors' "
        f"configuration at their budget ({MNIST_EPOCHS} epochs) only. Rows differ by backend and by "
        "budget: a row of `epochs` E holds the runs that reached E, cut there; "
        "docs/escape_study.md.",
        "",
    ]
    columns = ["backend", "tau", "epochs", "runs", "stuck", "escape", "ended", "scale", "paper",
               "prob"]
    labels = {"tau": "τ", "stuck": "stuck (95 % Wilson)", "escape": "left chance (median epoch)",
              "ended": "ended ≤ 50 %", "scale": "output scale, stuck / escaped",
              "prob": "P(paper)"}
    return results.write_table(out, NAME, header, rows, [], columns, labels=labels,
                               md_rows=[markdown_row(r) for r in rows])


def plot(groups: list[Group], out: Path) -> list[Path]:
    """(a) the fraction of runs still at chance against epoch, one curve per group (but those
    that only cut a longer group's runs shorter); (b) the last
    layer's learned output scale, median over the runs stuck at the end (solid) and over those that
    left chance (dash-dot), for the groups that recorded it."""
    from matplotlib.ticker import MaxNLocator

    from utils.plotting import plt, save_figure

    taus = sorted({g.tau for g in groups})
    cmap = plt.get_cmap("viridis")
    color = {t: cmap(i / max(1, len(taus) - 1) * 0.9) for i, t in enumerate(taus)}
    longest = max(g.epochs for g in groups)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(9.2, 3.2))
    for g in groups:
        if any(h.source == g.source and h.tau == g.tau and h.epochs > g.epochs
               and len(h.runs) == len(g.runs) for h in groups):
            continue  # the same runs, cut shorter: the longer curve shows them
        frac = still_at_chance(g.escapes, g.epochs)
        short = g.epochs < longest  # a shorter budget: its curve ends in a dot
        ax.step(np.arange(g.epochs + 1), frac, where="post", ls=g.source.style,
                color=color[g.tau], marker="o", markevery=[g.epochs] if short else [], ms=4,
                label=f"τ={g.tau:g}, {g.source.label}, {len(g.runs)} runs"
                + (f", {g.epochs} epoch{'s' * (g.epochs != 1)}" if short else ""))
        for stuck, ls in ((True, "-"), (False, "-.")):
            runs = [r for r, e in zip(g.runs, g.escapes, strict=True) if (e is None) == stuck]
            scales = [[_last_layer_scale(row) for row in r.rows] for r in runs]
            if scales and all(s is not None for seq in scales for s in seq):
                bx.plot(np.arange(g.epochs + 1), np.median(np.array(scales, float), axis=0),
                        ls=ls, color=color[g.tau], lw=1)
    ax.set(xlabel="Epoch", ylabel="Fraction of runs still at chance", ylim=(-0.03, 1.03),
           title=f"Analog SGD, MNIST FCN: not yet > {100 * ESCAPE_ACC:.0f} %")
    bx.set(xlabel="Epoch", ylabel="Last layer's output scale (median)",
           title="solid: stuck at the end; dash-dot: left chance")
    for axis in (ax, bx):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(2.25, 1), fontsize=7)
    return save_figure(fig, out, NAME)


def _last_layer_scale(row: dict) -> float | None:
    """``out_scale_k`` of the highest layer k in one metrics line (None: not recorded)."""
    probe = row.get("probe") or {}
    keys = sorted((k for k in probe if k.startswith("out_scale_")), key=lambda k: int(k[10:]))
    return float(probe[keys[-1]]) if keys else None


def plot_main(doc: str | None, argv: list[str] | None = None) -> None:
    """The command line of S4.3-plot-stuck.py."""
    p = cli.make_parser(doc)
    p.add_argument("--runs", type=Path, default=cli.DEFAULT_OUT,
                   help="folder whose runs/ holds the training runs (default: %(default)s)")
    p.add_argument("--out", type=cli.out_dir, default=cli.DEFAULT_OUT,
                   help="figure to OUT/figures/, table to OUT/tables/ (default: %(default)s)")
    args = p.parse_args(argv)
    try:
        groups = load_groups(args.runs)
    except UserError as err:
        cli.fail(str(err), prog=p.prog)
    if not groups:
        names = ", ".join(s.experiment for s in SOURCES)
        cli.fail(f"no {SETTING} runs under {args.runs / 'runs'} ({names}); train them first "
                 "(docs/escape_study.md) or point --runs at their folder", prog=p.prog)
    plot(groups, args.out)
    write_table(groups, args.out)
    print((Path(args.out) / "tables" / f"{NAME}.md").read_text())
