"""Short MNIST FCN runs with both backends, side by side: does the torch backend land inside the
seed-to-seed spread of AIHWKit?

    python benchmarks/fidelity_mnist.py [--subset 10000] [--epochs 1] [--seeds 0 1 2]
                                        [--tau 0.7] [--out results] [--work /tmp/fidelity]

For every --SETTING it trains S4.1-mnist-FCN.py on the first ``subset`` training images for
``epochs`` epochs, with AIHWKit (one run per seed) and with the torch backend in each update mode
(all seeds batched; with tensor operations only and with the C++ kernels), then
writes OUT/tables/backend_fidelity.{md,csv}: test accuracy per seed,
mean ± std, and whether each torch mean lies inside AIHWKit's [min − margin, max + margin] over
seeds (margin: one percentage point, for seeds that agree closely). The CSV holds numbers only
(runs, epochs, mean, std, min, max, one column per seed, inside as 1/0). Run folders go to --work.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from utils import results  # noqa: E402
from utils.analog_torch.native import kernels, set_native  # noqa: E402
from utils.analog_torch.presets import SETTINGS  # noqa: E402
from utils.backend import make_backend  # noqa: E402
from utils.mnist import experiment_name  # noqa: E402
from utils.runs import read_metrics, run_folder  # noqa: E402

MARGIN = 1.0  # percentage points around AIHWKit's range over seeds
# (backend, update mode, how): each torch mode with tensor operations only (--no-compile) and with
# the C++ kernels (the default on a CPU); the torch runs go to WORK/tensor and WORK/cpp
BACKENDS = (("aihwkit", "moment", ""),
            ("torch", "moment", "tensor operations"), ("torch", "moment", "C++"),
            ("torch", "pulse", "tensor operations"), ("torch", "pulse", "C++"))
FOLDER = {"": "", "tensor operations": "tensor", "C++": "cpp"}


def work(how: str, args) -> Path:
    return args.work / FOLDER[how]


def train(setting: str, backend: str, mode: str, how: str, args) -> None:
    cmd = [sys.executable, str(ROOT / "S4.1-mnist-FCN.py"), "--SETTING", setting, "--tau",
           str(args.tau), "--seed", *map(str, args.seeds), "--epochs", str(args.epochs),
           "--train-subset", str(args.subset), "--backend", backend, "--update-mode", mode,
           "--out", str(work(how, args)), "--data-root", str(args.data_root), "--threads", "1"]
    subprocess.run(cmd + (["--no-compile"] if how == "tensor operations" else []), check=True)


def accuracy(setting: str, backend: str, mode: str, how: str, seed: int, args) -> float:
    folder = run_folder(work(how, args), experiment_name("FCN", make_backend(backend, mode)),
                        setting, args.tau, seed)
    rows = read_metrics(folder / "metrics.jsonl")
    return 100 * rows[-1]["test_acc"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subset", type=int, default=10_000)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--tau", type=float, default=0.7)
    p.add_argument("--data-root", type=Path, default=ROOT / "data")
    p.add_argument("--work", type=Path, default=Path("/tmp/fidelity"))
    p.add_argument("--out", type=Path, default=ROOT / "results")
    args = p.parse_args()
    set_native(True)
    cpp = kernels() is not None  # else the C++ rows are left out
    rows, shown = [], []
    for setting in SETTINGS:
        accs = {}
        for backend, mode, how in BACKENDS:
            if setting == "FP SGD" and (mode == "pulse" or how == "tensor operations"):
                continue  # floating point has no pulses, and no C++ update
            if how == "C++" and not cpp:
                continue
            train(setting, backend, mode, how, args)
            accs[(backend, mode, how)] = [accuracy(setting, backend, mode, how, s, args)
                                          for s in args.seeds]
        ref = accs[("aihwkit", "moment", "")]
        low, high = min(ref) - MARGIN, max(ref) + MARGIN
        for (backend, mode, how), values in accs.items():
            mean = statistics.fmean(values)
            std = statistics.pstdev(values) if len(values) > 1 else 0.0
            label = ("AIHWKit" if backend == "aihwkit" else "torch" if setting == "FP SGD" else
                     f"torch ({mode}, {how})")  # FP SGD: a digital update, no mode
            # the CSV holds numbers (one column per seed, 1/0 for inside); the Markdown, text
            rows.append({"setting": setting, "backend": label, "runs": len(values),
                         "epochs": args.epochs, "mean": round(mean, 4), "std": round(std, 4),
                         "min": round(min(values), 4), "max": round(max(values), 4),
                         **{f"seed{s}": round(v, 4) for s, v in zip(args.seeds, values, strict=True)},
                         "inside": "" if backend == "aihwkit" else int(low <= mean <= high)})
            shown.append({"setting": setting, "backend": label,
                          "per seed": ", ".join(f"{v:.2f}" for v in values),
                          "mean ± std": f"{mean:.2f} ± {std:.2f}" if len(values) > 1 else f"{mean:.2f}",
                          "inside AIHWKit range": "—" if backend == "aihwkit" else
                          ("yes" if low <= mean <= high else "no")})
    header = ["# Torch backend vs AIHWKit: short MNIST FCN runs", "",
              f"Test accuracy (%) after {args.epochs} epoch(s) on the first {args.subset} training "
              f"images, τ = {args.tau} (analog settings), seeds {', '.join(map(str, args.seeds))}, "
              f"batch 10, lr 0.05, everything else as in Figure 5. 'inside': the torch mean lies in "
              f"[min − {MARGIN:g}, max + {MARGIN:g}] of AIHWKit's seeds. Written by "
              "benchmarks/fidelity_mnist.py.", ""]
    columns = ["setting", "backend", "per seed", "mean ± std", "inside AIHWKit range"]
    results.write_table(args.out, "backend_fidelity", header, rows, [], columns, md_rows=shown)
    print((args.out / "tables" / "backend_fidelity.md").read_text())


if __name__ == "__main__":
    main()
