"""Table 2 from the CIFAR-10 fine-tuning run folders (written by utils.finetune; never trains).

A run folder is ``<root>/runs/CIFAR10-finetune/<model>[/FFT]/<alg>/seed<k>/`` with metrics.jsonl
(one line per epoch) and config.json. Seeds are aggregated as for MNIST (utils.mnist_report; a
seed with fewer epochs than the others is left out, with a note): the table value is the mean over
the last 5 epochs of the per-epoch mean test accuracy over seeds, and its ± the mean over those
epochs of the per-epoch population std over seeds. The paper does not say which statistic its
Table 2 reports (no aggregation code was published).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils import results
from utils.finetune import EXPERIMENT, model_folder
from utils.mnist_report import LAST, Curve, format_pm
from utils.paper import LABELS, TABLE2, TABLE2_IMAGE_SIZE, TABLE2_PAPER, TABLE2_RUNS
from utils.runs import read_record, read_seeds


@dataclass
class Runs:
    """Every seed of one (model folder, fine-tuning mode, algorithm folder)."""

    model_dir: str  # "Resnet18", "Resnet18-scratch", "Resnet18-custom-<sha>"
    fft: bool
    alg: str  # the authors' name: "FP SGD", "Analog SGD-tau=0.8"
    curve: Curve
    config: dict  # config.json of the first seed

    @property
    def key(self) -> tuple[str, bool, str]:
        return self.model_dir, self.fft, self.alg


def _setting_tau(alg: str) -> tuple[str, float | None]:
    setting, _, tau = alg.partition("-tau=")
    try:
        return setting, float(tau) if tau else None
    except ValueError:
        return setting, None


def load_runs(root: Path) -> list[Runs]:
    """Every fine-tuning run under ``root/runs/CIFAR10-finetune`` that has finished epoch 0."""
    base = Path(root) / "runs" / EXPERIMENT
    grouped: dict[tuple[str, bool, str], dict[str, Path]] = {}
    for path in sorted(base.glob("**/seed*/metrics.jsonl")):
        parts = path.relative_to(base).parts[:-2]  # model[, FFT], alg
        if len(parts) == 3 and parts[1] == "FFT":
            key = (parts[0], True, parts[2])
        elif len(parts) == 2:
            key = (parts[0], False, parts[1])
        else:
            continue
        grouped.setdefault(key, {})[path.parent.name] = path.parent
    runs = []
    for (model_dir, fft, alg), seeds in grouped.items():
        name = "/".join([EXPERIMENT, model_dir, *(["FFT"] if fft else []), alg])
        per_seed, diverged = read_seeds(seeds, name)
        for seed, epoch in diverged.items():
            print(f"{name}/{seed}: diverged in epoch {epoch}, left out")
        if not per_seed:
            continue
        acc = np.array([[100 * m["test_acc"] for m in v] for v in per_seed.values()])
        epochs = np.array([m["epoch"] for m in next(iter(per_seed.values()))])
        config_path = seeds[next(iter(per_seed))] / "config.json"
        config = read_record(config_path, missing_ok=True)
        runs.append(Runs(model_dir, fft, alg, Curve(list(per_seed), epochs, acc.mean(0),
                                                    acc.std(0), per_run=acc), config))
    return runs


def _notes(runs: Runs) -> str:
    """What sets a run apart from the paper's protocol."""
    c, notes = runs.config, []
    weights = c.get("weights")
    if weights == "none":
        notes.append("weights: none (from scratch)")
    elif weights and weights != "imagenet":
        notes.append(f"weights: {weights}")
    if not runs.fft:
        notes.append("frozen backbone")
    if c.get("image_size", TABLE2_IMAGE_SIZE) != TABLE2_IMAGE_SIZE:
        notes.append(f"{c['image_size']} px images")
    if c.get("lr_groups_mode", "authors") != "authors":
        notes.append(f"lr groups: {c['lr_groups_mode']}")
    if c.get("data", {}).get("official") is False:
        notes.append("not the official CIFAR-10 files")
    return "; ".join(notes)


def table_rows(root: Path) -> tuple[list[dict], list[str]]:
    """The 9 runs of Table 2 (ours beside the paper's), then any other run found; and the names
    of the missing Table 2 runs."""
    found = {r.key: r for r in load_runs(root)}
    rows, missing = [], []

    def row(runs: Runs | None, model: str, setting: str, tau: float | None, paper: float | str,
            name: str) -> dict:
        out = {"model": model, "algorithm": LABELS.get(setting, setting),
               "tau": "" if tau is None else tau, "runs": 0, "epochs": "", "mean": "", "std": "",
               "min": "", "max": "", "paper_mean": paper, "notes": "", "run": name}
        if runs is not None:
            mean, std = runs.curve.summary()
            final = runs.curve.final_per_run()
            out.update(runs=runs.curve.runs, epochs=runs.curve.last_epochs, mean=round(mean, 4),
                       std=round(std, 4), min=round(float(final.min()), 4),
                       max=round(float(final.max()), 4), notes=_notes(runs))
        return out

    for model, setting, tau in TABLE2_RUNS:
        alg = setting if tau is None else f"{setting}-tau={tau}"
        key = (model_folder(model, "imagenet"), True, alg)
        name = f"{EXPERIMENT}/{model}/FFT/{alg}"
        if key not in found:
            missing.append(name)
        rows.append(row(found.pop(key, None), model, setting, tau, TABLE2_PAPER[(model, setting)],
                        name))
    for key in sorted(found, key=lambda k: (k[0], not k[1], k[2])):
        runs = found[key]
        setting, tau = _setting_tau(runs.alg)
        name = "/".join([EXPERIMENT, runs.model_dir, *(["FFT"] if runs.fft else []), runs.alg])
        rows.append(row(runs, runs.model_dir.split("-")[0], setting, tau, "", name))
    return rows, missing


def display_row(row: dict) -> dict:
    """A table_rows row as the Markdown table shows it (the CSV keeps the numbers)."""
    runs = row["runs"]
    shown = {**row, "tau": "" if row["tau"] == "" else f"{row['tau']:g}",
             "paper": "" if row["paper_mean"] == "" else f"{row['paper_mean']:.2f}"}
    if not runs:
        return {**shown, "ours": "missing", "range": ""}
    return {**shown, "ours": format_pm(row["mean"], row["std"], runs),
            "range": f"{row['min']:.2f}–{row['max']:.2f}" if runs > 1 else ""}


def write_table(root: Path, out: Path) -> tuple[list[Path], list[str]]:
    """``<out>/tables/cifar10_resnet.{md,csv}``; returns the files and the missing runs."""
    rows, missing = table_rows(root)
    header = [
        "# Table 2: CIFAR-10 test accuracy (%) of fine-tuned ResNets, only the classifier analog",
        "",
        f"Ours: mean over the last {LAST} epochs of the per-epoch mean test accuracy over seeds; ± is "
        "the mean over those epochs of the per-epoch population std over seeds (none for one seed), "
        "as for MNIST; `min–max`: the lowest and highest seed, each its own mean over those epochs. "
        "The paper does not say which statistic it reports (one number, 100 epochs). "
        "`epochs`: how many epochs the runs trained (the paper: 100); fewer epochs are reduced "
        "budgets, not comparable to the paper. Rows below the first nine are other runs found "
        "(their `notes` say how they differ from the paper's protocol).",
        "",
    ]
    columns = ["model", "algorithm", "tau", "runs", "epochs", "ours", "range", "paper", "notes"]
    paths = results.write_table(out, TABLE2, header, rows, missing, columns,
                                labels={"tau": "τ", "ours": "ours (mean ± std)", "range": "min–max"},
                                md_rows=[display_row(r) for r in rows])
    return paths, missing
