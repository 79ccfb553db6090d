"""Figure 5 and its table from MNIST run folders (written by utils.engine; never trains).

A run folder is ``<root>/runs/MNIST-<NET>/<name>/seed<k>/metrics.jsonl`` with one line per epoch.
Seeds of one (network, setting, τ) are aggregated as the authors' plot scripts do: per-epoch mean
and population std over seeds; the table value is the mean over the last 5 epochs of the per-epoch
mean, and its ± the mean over those epochs of the per-epoch std. Each run's own value (its mean over
the same last 5 epochs) gives the spread: min, max, and how many runs ended at chance (below
CHANCE_ACC).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.ticker import MaxNLocator
from mpl_toolkits.axes_grid1.inset_locator import inset_axes, mark_inset

from utils import cli, results
from utils.backend import from_args
from utils.paper import (
    ANALOG,
    CHANCE_ACC,
    FIGURE5,
    FIGURE5_PAPER,
    FIGURE5_RUNS,
    FIGURE5_TABLE,
    LABELS,
    MNIST_EPOCHS,
    MNIST_TAUS,
)
from utils.plotting import DIGITAL_COLOR, PALETTE, ema, plt, save_figure
from utils.runs import read_record, read_seeds, run_name

LAST = 5  # epochs averaged for the table
SHORT = 10  # runs with fewer epochs are drawn unsmoothed, without the zoom


def grid(network: str, taus: tuple[float, ...] | None = None) -> list[tuple[str, float | None]]:
    """The (setting, τ) runs of one Figure 5 panel."""
    taus = taus or MNIST_TAUS[network]
    return [("FP SGD", None)] + [(s, t) for s in ANALOG for t in taus]


@dataclass
class Curve:
    """Test accuracy (%) of one (network, setting, τ), aggregated over seeds."""

    seeds: list[str]
    epochs: np.ndarray  # 0 … E, the epochs every seed has finished
    mean: np.ndarray
    std: np.ndarray  # population std over seeds (0 for one seed)
    target_epochs: int | None = None  # the --epochs the runs were started with
    per_run: np.ndarray | None = None  # (seeds, epochs): every run's own curve
    diverged: dict[str, int] = field(default_factory=dict)  # seed -> the epoch it diverged in

    @property
    def outcome(self) -> str | None:
        """"diverged (epoch 3)" when every seed diverged, "2 of 3 seeds diverged" when some did."""
        if self.diverged and not self.seeds:
            return f"diverged (epoch {min(self.diverged.values())})"
        if self.diverged:
            return f"{len(self.diverged)} of {len(self.diverged) + len(self.seeds)} seeds diverged"
        return None

    @property
    def runs(self) -> int:
        return len(self.seeds)

    @property
    def last_epochs(self) -> int:
        return int(self.epochs[-1])

    def summary(self) -> tuple[float, float]:
        """(mean, ±) over the last LAST epochs (fewer if the run has fewer)."""
        tail = slice(-min(LAST, len(self.epochs) - 1), None) if len(self.epochs) > 1 else slice(None)
        return float(self.mean[tail].mean()), float(self.std[tail].mean())

    def final_per_run(self) -> np.ndarray:
        """Each run's final accuracy: its mean over the epochs summary() averages."""
        tail = slice(-min(LAST, len(self.epochs) - 1), None) if len(self.epochs) > 1 else slice(None)
        runs = self.per_run if self.per_run is not None else self.mean[None]
        return runs[:, tail].mean(1)

    def at_chance(self) -> int:
        """How many runs ended at chance (final accuracy below CHANCE_ACC)."""
        return int((self.final_per_run() < CHANCE_ACC).sum())


def load_curve(root: Path, network: str, setting: str, tau: float | None,
               backend: str = "") -> Curve | None:
    """Aggregate every seed folder of one run; None if no seed has a metrics file. ``backend``
    is the experiment suffix of the torch backend's runs ("-torch", "-torch-pulse"; "": AIHWKit)."""
    name = f"MNIST-{network}{backend}/{run_name(setting, tau)}"
    folder = Path(root) / "runs" / name
    per_seed, diverged = read_seeds({p.parent.name: p.parent for p in
                                     sorted(folder.glob("seed*/metrics.jsonl"))}, name)
    if not per_seed and not diverged:
        return None
    if not per_seed:  # an outcome without a curve: drawn as nothing, tabled as diverged
        empty = np.zeros(0)
        return Curve([], empty, empty, empty, diverged=diverged)
    target = read_record(folder / next(iter(per_seed)) / "config.json", missing_ok=True).get("epochs")
    acc = np.array([[100 * m["test_acc"] for m in v] for v in per_seed.values()])
    epochs = np.array([m["epoch"] for m in next(iter(per_seed.values()))])
    return Curve(seeds=list(per_seed), epochs=epochs, mean=acc.mean(0), std=acc.std(0),
                 target_epochs=target, per_run=acc, diverged=diverged)


def load_panel(root: Path, network: str, taus: tuple[float, ...] | None = None, backend: str = ""
               ) -> tuple[dict[tuple[str, float | None], Curve], list[str]]:
    """The curves of one panel and the names of its missing runs."""
    curves, missing = {}, []
    for setting, tau in grid(network, taus):
        curve = load_curve(root, network, setting, tau, backend)
        if curve is None:
            missing.append(f"MNIST-{network}{backend}/{run_name(setting, tau)}")
        else:
            curves[(setting, tau)] = curve
    return curves, missing


def runs_label(curves: dict) -> str:
    """"3 runs per cell", or "1–3 runs per cell" where cells differ."""
    counts = sorted({c.runs for c in curves.values()})
    span = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    return f"{span} run{'s' if counts[-1] > 1 else ''} per cell"


def plot_panel(network: str, curves: dict, taus: tuple[float, ...], out: Path,
               smoothing: float = 0.8, backend: str = "") -> list[Path]:
    """Figure 5's panel: test accuracy against epoch, EMA-smoothed, every run thin and the mean over
    runs thick, with a zoom on the last epochs of the means. Runs shorter than SHORT epochs (reduced
    budgets) are drawn unsmoothed and without the zoom: an EMA over a handful of points mostly shows
    its own start-up."""
    fig, ax = plt.subplots(figsize=(4.6, 3.0))
    for key, curve in curves.items():
        if curve.outcome:
            print(f"{LABELS[key[0]]} τ={key[1]}: {curve.outcome}")
    curves = {k: c for k, c in curves.items() if c.seeds}  # every seed diverged: nothing to draw
    styles = {"Analog SGD": ("--", "o"), "TT-v1": ("-", "^"), "FP SGD": ("-.", "s")}
    last = max((c.epochs[-1] for c in curves.values()), default=0)
    short = last < SHORT
    if short:
        smoothing = 0.0
    inset = inset_axes(ax, width="40%", height="30%", loc="lower left",
                       bbox_to_anchor=(0.5, 0.2, 1, 1), bbox_transform=ax.transAxes)
    inset.set_visible(not short)
    zoom_values = []
    for (setting, tau), curve in curves.items():
        color = tau_color(tau, taus)
        ls, marker = styles[setting]
        if curve.per_run is not None and curve.runs > 1:
            for run in curve.per_run:
                ax.plot(curve.epochs, ema(run, smoothing), ls=ls, color=color, lw=0.6, alpha=0.45)
        y = ema(curve.mean, smoothing)
        every = max(1, len(y) // 16)
        ax.plot(curve.epochs, y, ls=ls, marker=marker, color=color, lw=1.8, ms=3, markevery=every)
        zoom = curve.epochs >= last - 3  # the zoom shows the last 4 epochs of the longest run
        inset.plot(curve.epochs[zoom], y[zoom], ls=ls, marker=marker, color=color, ms=3)
        if zoom.any() and y[-1] > 90:  # collapsed runs would flatten the zoom
            zoom_values.extend(y[zoom])
    if zoom_values and not short:
        lo, hi = min(zoom_values), max(zoom_values)
        pad = max(0.1, 0.1 * (hi - lo))
        inset.set_ylim(lo - pad, hi + pad)
        inset.set_xlim(max(last - 3, 0), last)
        mark_inset(ax, inset, loc1=2, loc2=1, fc="none", ec="0.6")
    inset.grid(True, alpha=0.3)
    inset.tick_params(labelsize=6)
    handles = [plt.Line2D([], [], color=tau_color(t, taus), lw=3, label=f"τ={t:g}") for t in taus]
    handles += [plt.Line2D([], [], color="0.4", ls=styles[s][0], marker=styles[s][1], ms=4,
                           label=LABELS[s]) for s in ANALOG]
    handles.append(plt.Line2D([], [], color=tau_color(None, taus), ls="-.", marker="s", ms=4,
                              label="Digital SGD"))
    handles.append(plt.Line2D([], [], color="0.4", lw=0.6, alpha=0.6, label="one run"))
    handles.append(plt.Line2D([], [], color="0.4", lw=1.8, label="mean of runs"))
    ax.legend(handles=handles, loc="lower left", bbox_to_anchor=(1, 0))
    budget = f"{last} epochs" + (f" (reduced; the paper: {MNIST_EPOCHS})" if last < MNIST_EPOCHS
                                 else "")
    notes = ", unsmoothed" if smoothing == 0 else f", EMA {smoothing:g}"
    engine = f", {backend.strip('-').replace('-', ' ')} backend" if backend else ""
    ax.set(xlabel="Epoch", ylabel="Test accuracy (%)")
    ax.set_title(f"MNIST {network}{engine}\n{runs_label(curves)}, {budget}{notes}", fontsize=9)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return save_figure(fig, out, FIGURE5[network] + backend.replace("-", "_"))


def tau_color(tau: float | None, taus: tuple[float, ...]) -> str:
    """A τ's colour in a panel (by its place in ``taus``); digital SGD's is DIGITAL_COLOR."""
    if tau is None:
        return DIGITAL_COLOR
    return PALETTE[taus.index(tau) if tau in taus else len(taus)]


def format_pm(mean: float, std: float, runs: int) -> str:
    """"98.01 ± 0.04"; a single run has no spread, so no "± 0.00"."""
    return f"{mean:.2f} ± {std:.2f}" if runs > 1 else f"{mean:.2f}"


def table_rows(root: Path, backend: str = "") -> tuple[list[dict], list[str]]:
    """One row per (network, setting, τ) of both panels, ours beside the paper's, in numbers (the
    CSV's columns; empty where a cell has no run)."""
    rows, missing = [], []
    for network in MNIST_TAUS:
        curves, gone = load_panel(root, network, backend=backend)
        missing += gone
        for setting, tau in grid(network):
            curve = curves.get((setting, tau))
            paper = FIGURE5_PAPER[(network, setting, tau)]
            row = {"network": network, "algorithm": LABELS[setting], "tau": "" if tau is None else tau,
                   "runs": 0, "epochs": "", "target_epochs": "", "mean": "", "std": "", "min": "",
                   "max": "", "at_chance": "", "diverged": 0, "paper_mean": paper[0],
                   "paper_std": paper[1], "paper_runs": FIGURE5_RUNS,
                   "paper_epochs": MNIST_EPOCHS}
            if curve is not None:
                row.update(diverged=len(curve.diverged))
            if curve is not None and curve.seeds:
                mean, std = curve.summary()
                final = curve.final_per_run()
                row.update(runs=curve.runs, epochs=curve.last_epochs,
                           target_epochs=curve.target_epochs or curve.last_epochs,
                           mean=round(mean, 4), std=round(std, 4), min=round(float(final.min()), 4),
                           max=round(float(final.max()), 4), at_chance=curve.at_chance())
            rows.append(row)
    return rows, missing


def display_row(row: dict) -> dict:
    """A table_rows row as the Markdown table shows it."""
    runs = row["runs"]
    shown = {"network": row["network"], "algorithm": row["algorithm"], "tau": f"{row['tau']:g}"
             if row["tau"] != "" else "", "runs": runs,
             "paper": format_pm(row["paper_mean"], row["paper_std"], row["paper_runs"])}
    if not runs:
        ours = f"{row['diverged']} diverged" if row["diverged"] else "missing"
        return {**shown, "epochs": "", "ours": ours, "range": "", "chance": ""}
    epochs = row["epochs"] if row["epochs"] >= row["target_epochs"] else \
        f"{row['epochs']} of {row['target_epochs']}"
    note = f" ({row['diverged']} more diverged, left out)" if row["diverged"] else ""
    return {**shown, "epochs": epochs, "ours": format_pm(row["mean"], row["std"], runs) + note,
            "range": f"{row['min']:.2f}–{row['max']:.2f}" if runs > 1 else "",
            "chance": f"{row['at_chance']} of {runs}"}


def write_table(root: Path, out: Path, backend: str = "") -> list[str]:
    """results/tables/mnist{backend}.{md,csv} (mnist.md, mnist_torch.md, …); returns the missing
    runs (also listed in the table)."""
    rows, missing = table_rows(root, backend)
    engine = f", {backend.strip('-').replace('-', ' ')} backend" if backend else ""
    header = [
        f"# Figure 5: MNIST test accuracy (%){engine}",
        "",
        f"Ours: mean over the last {LAST} epochs of the per-epoch mean over runs (seeds); ± is the mean "
        "over those epochs of the per-epoch population std over runs, as the authors' plot scripts "
        "compute it (no ± for a single run). `min–max`: the lowest and highest run, each run's value "
        "being its own mean over those epochs (the ± also holds the epoch-to-epoch noise, so it can "
        f"exceed half that range); `at chance`: runs whose value is below {CHANCE_ACC:g} % "
        "(MNIST's chance level is 10–11.35 %). `epochs`: how many epochs the runs trained (the paper: "
        f"{MNIST_EPOCHS}, {FIGURE5_RUNS} runs; '37 of 80': a run not finished yet); fewer epochs are "
        "a reduced budget, not comparable to the paper's number.",
        "",
    ]
    columns = ["network", "algorithm", "tau", "runs", "epochs", "ours", "range", "chance", "paper"]
    results.write_table(out, FIGURE5_TABLE + backend.replace("-", "_"), header, rows, missing, columns,
                        labels={"tau": "τ", "ours": "ours (mean ± std)", "range": "min–max",
                                "chance": "at chance", "paper": "paper (mean ± std)"},
                        md_rows=[display_row(r) for r in rows])
    return missing


def plot_main(network: str, doc: str | None, argv: list[str] | None = None) -> None:
    """The command line of S4.1-plot-FCN.py / S4.2-plot-CNN.py."""
    p = cli.make_parser(doc)
    p.add_argument("--runs", type=Path, default=cli.DEFAULT_OUT,
                   help="folder whose runs/ holds the training runs (default: %(default)s)")
    p.add_argument("--out", type=cli.out_dir, default=cli.DEFAULT_OUT,
                   help="figure to OUT/figures/, table to OUT/tables/ (default: %(default)s)")
    p.add_argument("--tau", type=cli.positive_float, nargs="+", default=list(MNIST_TAUS[network]),
                   help="τ of the analog runs to draw (default: %(default)s)")
    p.add_argument("--smoothing", type=cli.fraction, default=0.8,
                   help="EMA coefficient of the drawn curves, 0 = none (default: %(default)s)")
    cli.add_backend_flags(p, "whose runs to draw: AIHWKit's (MNIST-<NET>, default) or the torch "
                             "backend's (MNIST-<NET>-torch[-pulse]); the figure and table names "
                             "get the suffix _torch[_pulse]", compile_flag=False)
    args = p.parse_args(argv)
    try:
        draw(args, network)
    except cli.UserError as err:  # a damaged run record
        cli.fail(str(err))


def draw(args, network: str) -> None:
    """The figure and the table of parsed flags ``args``."""
    taus = tuple(args.tau)
    backend = from_args(args).suffix
    curves, missing = load_panel(args.runs, network, taus, backend)
    if not curves:
        cli.fail(f"no MNIST-{network}{backend} runs under {args.runs / 'runs'}; train them first "
                 f"(docs/results.md, Figure 5) or point --runs at their folder")
    for name in missing:
        print(f"missing run: {name} (not drawn)")
    plot_panel(network, curves, taus, args.out, args.smoothing, backend)
    write_table(args.runs, args.out, backend)
    print((Path(args.out) / "tables" / f"{FIGURE5_TABLE}{backend.replace('-', '_')}.md").read_text())
