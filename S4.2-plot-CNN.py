"""Figure 5 (CNN panel) and the MNIST table, from the run folders of S4.2-mnist-CNN.py.

Reads results/runs/MNIST-CNN/<run>/seed*/metrics.jsonl, draws test accuracy against epoch
(EMA 0.8; every run thin, the mean over seeds thick; a zoom on the last epochs) and writes
results/figures/fig5_mnist_cnn.{png,pdf} and results/tables/mnist.{md,csv} (both networks; per cell
the runs, mean ± std, min–max and runs at chance, beside the paper's). Missing runs are named.

    python S4.2-plot-CNN.py
"""

from utils.mnist_report import plot_main

if __name__ == "__main__":
    plot_main("CNN", __doc__)
