"""Figure 5, CNN panel: MNIST on the LeNet-style CNN (two 5x5 convolutions, two fully connected
layers, tanh) with every weight on analog tiles, trained by FP SGD (ideal digital tiles), Analog
SGD or Tiki-Taka v1 on soft-bounds devices with weights bounded by ±τ (as in the authors' code).

    python S4.2-mnist-CNN.py --SETTING="TT-v1" --tau=0.7

writes results/runs/MNIST-CNN/TT-v1-tau=0.7/seed0/ (config.json, metrics.jsonl, checkpoint.pt,
TensorBoard events). Rerunning the command resumes an interrupted run or skips a finished one.
docs/results.md lists the runs of the figure; S4.2-plot-CNN.py draws it. MNIST is fetched into --data-root
on first use (see utils/data/mnist.py).
"""

from utils.mnist import mnist_main
from utils.paper import MNIST_BATCH_SIZE

BATCH_SIZE = MNIST_BATCH_SIZE["CNN"]  # the authors' value: 7,500 steps per epoch

if __name__ == "__main__":
    mnist_main(__doc__, "CNN", BATCH_SIZE)
