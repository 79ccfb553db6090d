"""REPRODUCTION.md: every figure and table of the paper beside ours, from results only.

Reads a results root (``<out>/figures``, ``<out>/tables``, ``<out>/runs``) and docs/deviations.md;
never trains or draws. For each paper item it gives the paper's result, our figure and table, and the
budget (steps or epochs, seeds, training images), hardware (config.json's device, threads and
environment) and wall time (config.json's wall_time_s, or the sum of metrics.jsonl's time_s) behind
ours. Anything absent is named as missing, with the command that makes it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from utils.paper import (
    FIGURE7_SEED,
    FIGURE7_TAU,
    ITEMS,
    LABELS,
    LEAST_SQUARES,
    MNIST_EPOCHS,
    MNIST_SEEDS,
    PAPER_COMPUTE,
    TABLE2_EPOCHS,
    TABLE2_RUNS,
    TABLE2_SEEDS,
    TABLE2_TAU,
    Item,
)
from utils.results import REPO_ROOT, atomic_write_bytes
from utils.runs import read_metrics, read_record

SEED_NOTE = ("What a seed fixes: the initial weights and the order of the training data, and with the "
             "torch backend also every pulse and noise draw (a rerun on the same machine repeats the "
             "run). What it does not fix: AIHWKit's runtime noise (pulses, read noise), which AIHWKit "
             "seeds from the clock, so two AIHWKit runs of one seed take different paths and can end "
             "apart, at chance or not.")
# the command that makes each item's runs and figures, by Item.source
MAKE = {
    **{f"least_squares:{script}": f"python {script}.py" for script in LEAST_SQUARES},
    "mnist:FCN": "python reproduce.py --only S4.1",
    "mnist:CNN": "python reproduce.py --only S4.2",
    "fig7": "python reproduce.py --only S4.1 (the seed-0 runs keep model.pt), then "
            "python S6-plot-distribution.py",
    "cifar": "python reproduce.py --only A12",
}
NOTES = {"mnist:FCN": (SEED_NOTE,)}  # paragraphs below an item's figure


# --- reading run folders ------------------------------------------------------------------------

def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _env_lines(configs: list[dict]) -> str:
    """Hardware and software of a set of config.json files, each distinct value once."""
    envs = [c.get("environment", {}) for c in configs]
    platforms = sorted({e.get("platform") or "?" for e in envs})
    devices = sorted({f"{c.get('device', 'cpu')}, {c['threads']} thread(s)" if "threads" in c
                      else "cpu, 1 thread(s)" for c in configs})
    versions = sorted({f"torch {e.get('torch')}, aihwkit {e.get('aihwkit')}" for e in envs})
    commits = sorted({(e.get("git_commit") or "?")[:8] for e in envs})
    return (f"{'; '.join(devices)} on {'; '.join(platforms)}; {'; '.join(versions)}; "
            f"code {', '.join(commits)}")


@dataclass
class Provenance:
    budget: str
    hardware: str
    wall: str
    runs: str
    missing: list[str]
    per_cell: str = ""  # how many runs back each cell of the item's table


def least_squares_provenance(root: Path, stem: str, where: Path) -> Provenance | None:
    def settings(folder: Path) -> dict:
        return read_record(folder / "config.json", missing_ok=True).get("config", {})

    folders = [p.parent for p in (root / "runs" / stem).glob("*/curves.json")
               # the report's figures are AIHWKit's; S2 --backend torch runs have their own
               if settings(p.parent).get("backend", "aihwkit") == "aihwkit"]
    if not folders:
        return None
    paper_steps = LEAST_SQUARES[stem].settings["steps"]
    # the run at the paper's budget, else the longest; ties by folder name. Never the files' times:
    # a fresh clone gives every file the same age, and the report must not depend on the clock
    newest = max(folders, key=lambda p: (settings(p).get("steps") == paper_steps,
                                         settings(p).get("steps") or 0, p.name))
    saved = read_record(newest / "config.json", missing_ok=True)
    config = saved.get("config", {})
    budget = (f"{config.get('steps', '?')} steps per run (the paper's protocol: {paper_steps}), "
              f"seed {config.get('seed', '?')}")
    if config.get("steps") != paper_steps:
        budget += " — a reduced budget, not comparable to the paper"
    others = f" ({len(folders) - 1} other run folder(s) with other settings)" if len(folders) > 1 else ""
    wall = saved.get("wall_time_s")
    return Provenance(budget, _env_lines([saved]), "?" if wall is None else duration(wall),
                      f"`{_rel(newest, where)}`{others}", [])


@dataclass
class TrainingRun:
    name: str
    config: dict
    metrics: list[dict]
    has_model: bool

    @property
    def epochs(self) -> int:
        return self.metrics[-1]["epoch"] if self.metrics else 0

    @property
    def seconds(self) -> float:
        return sum(m.get("time_s", 0) for m in self.metrics)


def _training_runs(folders: dict[str, Path]) -> tuple[list[TrainingRun], list[str]]:
    found, missing = [], []
    for name, folder in folders.items():
        metrics = read_metrics(folder / "metrics.jsonl", missing_ok=True)
        if not metrics:
            missing.append(name)
            continue
        found.append(TrainingRun(name, read_record(folder / "config.json", missing_ok=True), metrics,
                                 (folder / "model.pt").is_file()))
    return found, missing


def _training_provenance(runs: list[TrainingRun], missing: list[str], expected: int,
                         paper_epochs: int, extra: str = "") -> Provenance:
    epochs = sorted({r.epochs for r in runs})
    span = f"{epochs[0]}" if len(epochs) == 1 else f"{epochs[0]}–{epochs[-1]}"
    budget = f"{span} epoch(s) per run (the paper: {paper_epochs})"
    seeds = sorted({r.config.get("seed", 0) for r in runs})
    budget += f", seeds {', '.join(map(str, seeds))}"
    subsets = sorted({r.config.get("train_subset") or 0 for r in runs})
    if subsets != [0]:
        budget += ", training images: " + ", ".join(
            "all" if s == 0 else f"first {s:,}" for s in subsets)
    if epochs and (epochs[0] < paper_epochs or subsets != [0]):
        budget += " — a reduced budget, not comparable to the paper"
    budget += extra
    total = sum(r.seconds for r in runs)
    wall = f"{duration(total)} in all ({duration(total / len(runs))} per run on average)"
    return Provenance(budget, _env_lines([r.config for r in runs]), wall,
                      f"{len(runs)} of {expected}", missing)


def mnist_provenance(root: Path, network: str) -> Provenance | None:
    from utils.mnist_report import grid
    from utils.runs import run_folder, run_name

    folders = {f"MNIST-{network}/{run_name(s, t)}/seed{k}": run_folder(root, f"MNIST-{network}", s,
                                                                      t or 1.0, k)
               for k in MNIST_SEEDS for s, t in grid(network)}
    runs, missing = _training_runs(folders)
    if not runs:
        return None
    prov = _training_provenance(runs, missing, len(folders), MNIST_EPOCHS)
    prov.per_cell = runs_per_cell(runs, network)
    return prov


def runs_per_cell(runs: list[TrainingRun], network: str) -> str:
    """"3 in every cell", or each cell's count ("Digital SGD 3; Analog SGD τ=0.7 2, …")."""
    from utils.mnist_report import grid
    from utils.runs import run_name

    counts = {(s, t): sum(r.name.startswith(f"MNIST-{network}/{run_name(s, t or 1.0)}/")
                          for r in runs) for s, t in grid(network)}
    if len(set(counts.values())) == 1:
        return f"{next(iter(counts.values()))} in every cell"
    return "; ".join(f"{LABELS[s]}{'' if t is None else f' τ={t:g}'}: {n}"
                     for (s, t), n in counts.items())


def fig7_provenance(root: Path) -> Provenance | None:
    from utils.runs import run_folder, run_name

    tau, seed = FIGURE7_TAU, FIGURE7_SEED
    folders = {f"MNIST-FCN/{run_name(s, t)}/seed{seed}": run_folder(root, "MNIST-FCN", s, t or 1.0,
                                                                    seed)
               for s, t in (("FP SGD", None), ("Analog SGD", tau), ("TT-v1", tau))}
    runs, missing = _training_runs(folders)
    missing += [f"{r.name}/model.pt" for r in runs if not r.has_model]
    if not runs:
        return None
    return _training_provenance(runs, missing, len(folders), MNIST_EPOCHS)


def cifar_provenance(root: Path) -> Provenance | None:
    from utils.finetune import run_folder

    folders = {}
    for model, setting, tau in TABLE2_RUNS:
        for seed in TABLE2_SEEDS:
            folder = run_folder(root, model, "imagenet", True, setting, tau or TABLE2_TAU, seed)
            folders[str(folder.relative_to(Path(root) / "runs"))] = folder
    runs, missing = _training_runs(folders)
    if not runs:
        return None
    sizes = sorted({r.config.get("image_size", "?") for r in runs})
    extra = f", {'/'.join(map(str, sizes))} px images (the paper: 224)"
    if any(r.config.get("data", {}).get("official") is False for r in runs):
        extra += ", not the official CIFAR-10 files (a subset)"
    return _training_provenance(runs, missing, len(folders), TABLE2_EPOCHS, extra)


def provenance(root: Path, source: str, where: Path) -> Provenance | None:
    """Budget, hardware and wall time behind one item (None: no run found)."""
    kind, _, arg = source.partition(":")
    if kind == "least_squares":
        return least_squares_provenance(root, arg, where)
    if kind == "mnist":
        return mnist_provenance(root, arg)
    if kind == "fig7":
        return fig7_provenance(root)
    return cifar_provenance(root)


# --- the document -------------------------------------------------------------------------------

def _rel(path: Path, start: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), Path(start).resolve())).as_posix()


def _shown(path: Path) -> str:
    """``path`` relative to the repository root when inside it, else absolute."""
    path = Path(path).resolve()
    return (path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path).as_posix()


DEVIATIONS = REPO_ROOT / "docs" / "deviations.md"


def deviations(source: Path) -> str | None:
    """The "Deviations" section of ``source`` (its text up to the next heading of the same level)."""
    try:
        text = Path(source).read_text()
    except OSError:
        return None
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines)
                  if re.match(r"#+ .*Deviations", line)), None)
    if start is None:
        return None
    level = len(lines[start]) - len(lines[start].lstrip("#"))
    end = next((i for i in range(start + 1, len(lines))
                if re.match(rf"#{{1,{level}}} ", lines[i])), len(lines))
    return "\n".join(lines[start + 1:end]).strip()


def _table(path: Path) -> str:
    """A table file without its own top heading (kept as a bold caption)."""
    lines = path.read_text().strip().splitlines()
    if lines and lines[0].startswith("# "):
        lines[0] = f"**{lines[0][2:].strip()}**"
    return "\n".join(lines)


def section(item: Item, root: Path, where: Path, missing: dict[str, list[str]]) -> list[str]:
    """One paper item: the paper beside ours, our tables, the provenance; records what is missing
    under the item's short name."""
    out, gone = [f"## {item.title}", ""], missing.setdefault(item.title.split(":")[0], [])
    figures = [(name, root / "figures" / f"{name}.png") for name in item.figures]
    ours = []
    for name, path in figures:
        if path.is_file():
            ours.append(f"![{name}]({_rel(path, where)})")
        else:
            ours.append(f"**missing:** `{_rel(path, where)}`")
            gone.append(f"figure {path.name}")
    if figures:
        out += ["| The paper | Ours |", "|---|---|", f"| {item.paper} | {'<br>'.join(ours)} |", ""]
    else:
        out += [f"**The paper:** {item.paper}", ""]
    notes = NOTES.get(item.source, ())
    out += [*notes, ""] if notes else []
    for name in item.tables:
        path = root / "tables" / name
        if path.is_file():
            out += [_table(path), ""]
        else:
            out += [f"**missing:** table `{_rel(path, where)}`", ""]
            gone.append(f"table {name}")
    prov = provenance(root, item.source, where)
    if prov is None:
        out += [f"**missing:** no run behind this item under `{_rel(root / 'runs', where)}`; "
                f"make it with `{MAKE[item.source]}`.", ""]
        gone.append("its runs")
        return out
    out += [f"- Budget: {prov.budget}", f"- Hardware: {prov.hardware}",
            f"- Wall time: {prov.wall}", f"- Runs: {prov.runs}"]
    if prov.per_cell:
        out.append(f"- Runs per cell: {prov.per_cell}")
    if prov.missing:
        out.append(f"- **Missing runs** ({len(prov.missing)}): "
                   + ", ".join(f"`{m}`" for m in prov.missing) + f" (make them with `{MAKE[item.source]}`)")
        gone.append(f"{len(prov.missing)} of its runs")
    if any(not (root / "figures" / f"{n}.png").is_file() for n in item.figures):
        out.append(f"- Draw the figure with `{MAKE[item.source]}`")
    return out + [""]


def render(root: Path, where: Path, source: Path = DEVIATIONS) -> tuple[str, list[str]]:
    """The report's text for results root ``root`` placed in folder ``where``, and what is missing."""
    root, gone, body = Path(root), {}, []
    for item in ITEMS:
        body += section(item, root, where, gone)
    devs, shown = deviations(source), _rel(source, where)
    body += [f"## Deviations from the authors' code (copied from {shown})", ""]
    if devs is None:
        body += [f"**missing:** no \"Deviations\" section in `{shown}`", ""]
        gone[shown] = ["its Deviations section"]
    else:
        body += [devs, ""]
    missing = [f"{name} ({', '.join(what)})" for name, what in gone.items() if what]
    head = [
        "# Reproduction report",
        "",
        "Wu, Gokmen, Rasch, Chen, *Towards Exact Gradient-based Training on Analog In-memory "
        "Computing*, NeurIPS 2024: each figure and table of the paper beside ours. Generated by "
        f"`python reproduce.py --report --out {_shown(root)}` from the figures, tables and "
        f"run folders under `{_shown(root)}` only; budgets, hardware and wall times are read "
        f"from each run's config.json and metrics.jsonl. {PAPER_COMPUTE}",
        "",
    ]
    if missing:
        head += ["**Missing** (named in the sections below): " + "; ".join(missing) + ".", ""]
    else:
        head += ["Every figure, table and run of the paper is present.", ""]
    return "\n".join(head + body).rstrip() + "\n", missing


def write_report(root: Path, path: Path, source: Path = DEVIATIONS) -> list[str]:
    """Write the report for results root ``root`` to ``path``; returns what is missing."""
    path = Path(path)
    text, missing = render(root, path.parent, source)
    atomic_write_bytes(path, text.encode())
    return missing
