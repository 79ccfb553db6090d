"""Figure 5, CNN panel: MNIST on the LeNet-style CNN (two 5x5 convolutions, two fully connected
layers, tanh) with every weight on analog tiles, trained by FP SGD (ideal digital tiles), Analog
SGD or Tiki-Taka v1 on soft-bounds devices with weights bounded by ±τ (EXPERIMENTS.md §7.1, §7.3).

    python S4.2-mnist-CNN.py --SETTING="TT-v1" --tau=0.7

writes results/runs/MNIST-CNN/TT-v1-tau=0.7/seed0/ (config.json, metrics.jsonl, checkpoint.pt,
TensorBoard events). Rerunning the command resumes an interrupted run or skips a finished one.
README lists the runs of the figure; S4.2-plot-CNN.py draws it. MNIST is fetched into --data-root
on first use (see utils/data.py).
"""

from utils.cli import UserError, add_training_flags, fail, make_parser
from utils.engine import train_mnist
from utils.models import build_cnn

BATCH_SIZE = 8  # the authors' value: 7,500 steps per epoch


def main(argv: list[str] | None = None) -> None:
    parser = make_parser(__doc__)
    add_training_flags(parser, batch_size=BATCH_SIZE)
    train_mnist(parser.parse_args(argv), "MNIST-CNN", build_cnn)


if __name__ == "__main__":
    try:
        main()
    except UserError as err:
        fail(str(err))
