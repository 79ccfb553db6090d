"""One pulsed update, repeated: the torch backend's per-device mean and variance, and the
correlations between devices, against AIHWKit's (the numbers of README's "Fidelity, measured").

    python benchmarks/update_statistics.py [--repeats 8000]

Each repeat starts from the same weights and applies one update of 4 (mean / variance) or 10
(correlations) MNIST-like samples, with AIHWKit's device parameters copied into the torch backend
(``repeated_update`` of tests/test_torch_backend.py). Prints, for each update mode (with tensor
operations and with the C++ kernels):

* the relative difference (norm over the elements) of the mean and of the variance of ΔW, and
  the same between two halves of AIHWKit's repeats (its sampling noise);
* the mean correlation of two devices of one row (which share that row's pulse train) and of one
  column, for small errors (about half a pulse per device) and large ones;
* the relative difference of the off-diagonal covariances of ΔW.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from test_torch_backend import VARIANTS, rel, repeated_update  # noqa: E402

MODES = list(VARIANTS)  # each mode with tensor operations and with the C++ kernels


def line_correlations(dw: torch.Tensor) -> tuple[float, float]:
    """Mean correlation over the pairs of devices of one row, and of one column."""
    corr = torch.corrcoef(dw.reshape(dw.shape[0], -1).T)
    out_size, in_size = dw.shape[1:]
    idx = torch.arange(out_size * in_size).view(out_size, in_size)
    upper = torch.triu(torch.ones(in_size, in_size, dtype=torch.bool), 1)
    row = torch.cat([corr[idx[i]][:, idx[i]][upper] for i in range(out_size)])
    upper = torch.triu(torch.ones(out_size, out_size, dtype=torch.bool), 1)
    col = torch.cat([corr[idx[:, j]][:, idx[:, j]][upper] for j in range(in_size)])
    return float(row.nanmean()), float(col.nanmean())


def off_diagonal_covariance(dw: torch.Tensor) -> torch.Tensor:
    cov = torch.cov(dw.reshape(dw.shape[0], -1).T)
    return cov[~torch.eye(cov.shape[0], dtype=torch.bool)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=8000, help="repeats per update (default: 8000)")
    args = p.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 9, generator=g) * (torch.rand(4, 9, generator=g) > 0.3)
    x[:, [2, 6]] = 0  # two lines without input: skipped
    d = torch.randn(4, 6, generator=g) * 0.2
    half = args.repeats // 2
    print("mean and variance of ΔW, relative difference to AIHWKit:")
    theirs, all_ours = repeated_update(MODES, args.repeats, x, d, lr=0.05)
    for mode, ours in zip(MODES, all_ours, strict=True):
        print(f"  {mode:10s}: mean {100 * rel(ours.mean(0), theirs.mean(0)):.1f} %, variance "
              f"{100 * rel(ours.var(0), theirs.var(0)):.1f} %   (AIHWKit halves: mean "
              f"{100 * rel(theirs[:half].mean(0), theirs[half:].mean(0)):.1f} %, variance "
              f"{100 * rel(theirs[:half].var(0), theirs[half:].var(0)):.1f} %)", flush=True)
    print("correlation of two devices of one row / one column:")
    for label, scale in (("small errors", 0.01), ("large errors", 0.2)):
        x = torch.rand(10, 12, generator=g) * (torch.rand(10, 12, generator=g) > 0.5)
        d = torch.randn(10, 8, generator=g) * scale
        theirs, all_ours = repeated_update(MODES, args.repeats, x, d, lr=0.05)
        names = ["AIHWKit", *(f"torch {mode}" for mode in MODES)]
        for name, dw in zip(names, [theirs, *all_ours], strict=True):
            row, col = line_correlations(dw)
            pulses = float((dw.mean(0).abs() / 1e-3).mean())
            print(f"  {label}, {name:16s}: row {row:+.3f}, column {col:+.3f}   "
                  f"(mean |ΔW| {pulses:.2f} dw_min)", flush=True)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 9, generator=g) * (torch.rand(4, 9, generator=g) > 0.3)
    d = torch.randn(4, 6, generator=g) * 0.1
    print("off-diagonal covariances of ΔW, relative difference to AIHWKit:")
    theirs, all_ours = repeated_update(MODES, args.repeats, x, d, lr=0.05)
    ref = off_diagonal_covariance(theirs)
    halves = rel(off_diagonal_covariance(theirs[:half]), off_diagonal_covariance(theirs[half:]))
    for mode, ours in zip(MODES, all_ours, strict=True):
        print(f"  {mode:10s}: {rel(off_diagonal_covariance(ours), ref):.2f}   (AIHWKit halves: "
              f"{halves:.2f})", flush=True)


if __name__ == "__main__":
    main()
