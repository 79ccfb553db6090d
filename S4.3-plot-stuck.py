"""The stuck-probability figure and table (beyond the paper), from the runs of
S4.3-stuck-probability.py (torch backend, and its --no-out-scaling ablation) and of
S4.1-mnist-FCN.py (AIHWKit, the cross-check).

Reads results/runs/{MNIST-FCN-escape-torch-pulse, MNIST-FCN-escape-no-out-scaling-torch-pulse,
MNIST-FCN}/Analog SGD-tau=<τ>/seed*/ and writes results/figures/stuck_probability.{png,pdf} (the
fraction of runs still at chance against epoch, one curve per τ, backend and budget; the last layer's
learned output scale) and results/tables/stuck_probability.{md,csv} (per row: runs, the fraction
stuck at the last epoch with its 95 % Wilson interval, and the probability of the paper's outcome).
A run left chance at the first epoch with test accuracy > 50 % (utils/escape.py;
docs/escape_study.md).

    python S4.3-plot-stuck.py
"""

from utils.escape_report import plot_main

if __name__ == "__main__":
    plot_main(__doc__)
