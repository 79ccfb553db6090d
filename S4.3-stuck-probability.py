"""Beyond the paper (Figure 5, FCN panel): how likely Analog SGD is to stay at chance, per τ.

Trains the FCN of S4.1 (784-256-128-10, sigmoids, batch 10, lr 0.05 divided by 10 every 35
epochs, 80 epochs) by Analog SGD at τ ∈ {0.6, 0.7, 0.74, 0.78, 0.8, 0.9, 1.0}, seeds 0 … 11, all
84 runs as one batched model of the torch backend with exact pulse trains, and records per epoch,
beside the test accuracy, each layer's learned output scale and how close its devices sit to their
bounds (utils/escape.py). The ablation trains the same runs without the learnable output scale:

    python S4.3-stuck-probability.py                             # the study, one CPU thread
    python S4.3-stuck-probability.py --tau 0.7 --no-out-scaling  # the ablation
    python S4.3-stuck-probability.py --CUDA 0                    # the study on a GPU

writes results/runs/MNIST-FCN-escape-torch-pulse/Analog SGD-tau=<τ>/seed<k>/ (the ablation:
MNIST-FCN-escape-no-out-scaling-torch-pulse/), each with config.json, metrics.jsonl (one line per
epoch, the tiles' state under "probe") and checkpoint.pt; rerunning resumes or skips finished runs.
S4.3-plot-stuck.py draws the fraction of runs still at chance and writes the table;
docs/escape_study.md has the threshold, the AIHWKit cross-check and the cost.
"""

from utils.escape import stuck_main
from utils.paper import MNIST_BATCH_SIZE

BATCH_SIZE = MNIST_BATCH_SIZE["FCN"]  # as S4.1 (the authors' value)

if __name__ == "__main__":
    stuck_main(__doc__, BATCH_SIZE)
