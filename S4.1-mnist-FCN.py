"""Figure 5, FCN panel: MNIST on the 784-256-128-10 sigmoid network with its weights on analog
tiles, trained by FP SGD (ideal digital tiles), Analog SGD or Tiki-Taka v1 on soft-bounds devices
with weights bounded by ±τ (as in the authors' code).

    python S4.1-mnist-FCN.py --SETTING="Analog SGD" --tau=0.78

writes results/runs/MNIST-FCN/Analog SGD-tau=0.78/seed0/ (config.json, metrics.jsonl, checkpoint.pt,
TensorBoard events). Rerunning the command resumes an interrupted run or skips a finished one.
docs/results.md lists the runs of the figure; S4.1-plot-FCN.py draws it. MNIST is fetched into --data-root
on first use (see utils/data/mnist.py).
"""

from utils.mnist import mnist_main
from utils.paper import MNIST_BATCH_SIZE

BATCH_SIZE = MNIST_BATCH_SIZE["FCN"]  # the authors' value: 6,000 steps per epoch

if __name__ == "__main__":
    mnist_main(__doc__, "FCN", BATCH_SIZE)
