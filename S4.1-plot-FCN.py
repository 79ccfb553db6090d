"""Figure 5 (FCN panel) and the MNIST table, from the run folders of S4.1-mnist-FCN.py.

Reads results/runs/MNIST-FCN/<run>/seed*/metrics.jsonl, draws test accuracy against epoch
(EMA 0.8; every run thin, the mean over seeds thick; a zoom on the last epochs) and writes
results/figures/fig5_mnist_fcn.{png,pdf} and results/tables/mnist.{md,csv} (both networks; per cell
the runs, mean ± std, min–max and runs at chance, beside the paper's). Missing runs are named.

    python S4.1-plot-FCN.py
"""

from utils.mnist_report import plot_main

if __name__ == "__main__":
    plot_main("FCN", __doc__)
