"""Figure 7: weight values and device saturation of the trained MNIST FCN (checks Assumption 4).

Reads the final FCN checkpoints (model.pt) at τ = 0.7 of digital SGD, Analog SGD and Tiki-Taka, made by

    python S4.1-mnist-FCN.py --SETTING "FP SGD" --save-checkpoint
    python S4.1-mnist-FCN.py --SETTING "Analog SGD" --tau 0.7 --save-checkpoint
    python S4.1-mnist-FCN.py --SETTING "TT-v1" --tau 0.7 --save-checkpoint

rebuilds each model with the configuration it was trained with, and draws (400 bins, densities):
left, every analog weight as the layer applies it (learned output scales included); right, the
saturation of every device, w/b_max for w ≥ 0 and w/b_min otherwise, from the raw tile weights and
each device's own bounds (for Tiki-Taka: its main array C). Writes
results/figures/fig7_weight_distribution.{png,pdf} and results/tables/fig7_saturation.md.

    python S6-plot-distribution.py

With ``--backend torch [--update-mode pulse]`` it reads the torch backend's runs instead (trained
with the same flags plus ``--backend torch``; runs/MNIST-FCN-torch[-pulse]/) and writes
fig7_weight_distribution_torch[_pulse] and fig7_saturation_torch[_pulse].md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from utils import cli
from utils.backend import Backend, from_args
from utils.mnist import experiment_name
from utils.models import build_network
from utils.paper import FIGURE7, FIGURE7_SEED, FIGURE7_TABLE, FIGURE7_TAU, LABELS, SETTINGS
from utils.plotting import LINESTYLES, PALETTE, plt, save_figure
from utils.results import atomic_write_bytes
from utils.runs import run_folder


def parse_args(argv: list[str] | None = None):
    p = cli.make_parser(__doc__)
    p.add_argument("--runs", type=Path, default=cli.DEFAULT_OUT,
                   help="folder whose runs/ holds the training runs (default: %(default)s)")
    p.add_argument("--out", type=cli.out_dir, default=cli.DEFAULT_OUT,
                   help="figure to OUT/figures/, table to OUT/tables/ (default: %(default)s)")
    p.add_argument("--tau", type=cli.positive_float, default=FIGURE7_TAU,
                   help="τ of the analog checkpoints (default: %(default)s)")
    p.add_argument("--seed", type=int, default=FIGURE7_SEED,
                   help="seed of the runs to read (default: %(default)s)")
    cli.add_backend_flags(p, "whose runs to read: AIHWKit's (runs/MNIST-FCN, default) or the torch "
                          "backend's (runs/MNIST-FCN-torch[-pulse]); the outputs of torch get the "
                          "suffix _torch[_pulse]", compile_flag=False)
    return p.parse_args(argv)


def load_fcn(path: Path, setting: str, args, backend: Backend):
    """The FCN of a checkpoint, rebuilt with its configuration on ``backend``."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        model = build_network("FCN", [backend.rpu_config(setting, args.tau)], backend, [args.seed])
        backend.load_state(model, ckpt["model_state_dict"])
    except cli.UserError as err:  # AIHWKit missing (utils.rpu_configs)
        cli.fail(str(err))
    except Exception as err:  # noqa: BLE001 - any unreadable checkpoint is reported the same way
        cli.fail(f"{path}: not a readable FCN checkpoint of {setting} ({type(err).__name__}); "
                 "retrain it with --save-checkpoint")
    return model


def saturation(model, setting: str, backend: Backend) -> np.ndarray:
    """|w| relative to the bound it moves towards, per device, from the raw tile weights (for
    Tiki-Taka: its main array C)."""
    sat = np.concatenate([torch.where(w >= 0, w / upper, w / lower).flatten().numpy()
                          for w, upper, lower in backend.device_states(model, setting)])
    if sat.max() > 1 + 1e-5:
        cli.fail(f"{setting}: a weight lies beyond its device bound (saturation {sat.max():.3f})")
    return sat


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    backend = from_args(args)
    experiment = experiment_name("FCN", backend)
    suffix = backend.suffix.replace("-", "_")
    paths = {s: run_folder(args.runs, experiment, s, args.tau, args.seed) / "model.pt" for s in SETTINGS}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        cli.fail(f"missing checkpoint(s): {', '.join(missing)}; make them with S4.1-mnist-FCN.py "
                 f"--save-checkpoint{backend.flags} (see the docstring)")
    models = {s: load_fcn(p, s, args, backend) for s, p in paths.items()}
    fig, (ax_w, ax_s) = plt.subplots(1, 2, figsize=(8.0, 3.0), gridspec_kw={"wspace": 0.3})
    engine = f", {suffix.strip('_').replace('_', ' ')} backend" if suffix else ""
    lines = ["# Figure 7: saturation of the trained FCN's devices" + engine, "",
             f"τ = {args.tau:g}, seed {args.seed}. Saturation = |w| / the bound it moves towards, "
             "per device (Assumption 4's W_max/τ is the max).", "",
             "| algorithm | weights | mean saturation | 99th percentile | max | max \\|W\\| |",
             "|---|---|---|---|---|---|"]
    values = {s: backend.weight_values(m) for s, m in models.items()}
    # bins over every weight, and a log density, so that the tails of each distribution show
    edge = max(float(np.abs(v).max()) for v in values.values())
    bins = np.linspace(-edge, edge, 241)
    for i, (setting, model) in enumerate(models.items()):
        label = LABELS[setting] + ("" if setting == "FP SGD" else f", τ={args.tau:g}")
        line = {"color": PALETTE[i], "ls": LINESTYLES[i], "histtype": "step", "density": True,
                "lw": 1.2, "label": label}
        ax_w.hist(values[setting], bins=bins, **line)
        if setting == "FP SGD":
            continue
        sat = saturation(model, setting, backend)
        ax_s.hist(sat, bins=200, range=(0, 1), **line)
        lines.append(f"| {LABELS[setting]} | {sat.size} | {sat.mean():.3f} | "
                     f"{np.percentile(sat, 99):.3f} | {sat.max():.3f} | "
                     f"{np.abs(values[setting]).max():.3f} |")
    ax_w.set(xlim=(-edge, edge), yscale="log", xlabel="Weight value", ylabel="Density (log)",
             title=f"Weights of the trained FCN (seed {args.seed})")
    ax_s.set(xlim=(0, 1), yscale="log", xlabel="Saturation |w| / bound", ylabel="Density (log)",
             title=f"Device saturation, τ={args.tau:g}")
    for ax in (ax_w, ax_s):
        ax.legend(fontsize=7)
    save_figure(fig, args.out, FIGURE7 + suffix)
    table = "\n".join(lines) + "\n"
    atomic_write_bytes(Path(args.out) / "tables" / f"{FIGURE7_TABLE}{suffix}.md", table.encode())
    print(table)


if __name__ == "__main__":
    main()
