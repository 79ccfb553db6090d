"""Figure 5, FCN panel: MNIST on the 784-256-128-10 sigmoid network with its weights on analog
tiles, trained by FP SGD (ideal digital tiles), Analog SGD or Tiki-Taka v1 on soft-bounds devices
with weights bounded by ±τ (EXPERIMENTS.md §7.1, §7.2).

    python S4.1-mnist-FCN.py --SETTING="Analog SGD" --tau=0.78

writes results/runs/MNIST-FCN/Analog SGD-tau=0.78/seed0/ (config.json, metrics.jsonl, checkpoint.pt,
TensorBoard events). Rerunning the command resumes an interrupted run or skips a finished one.
README lists the runs of the figure; S4.1-plot-FCN.py draws it. MNIST is fetched into --data-root
on first use (see utils/data.py).
"""

from utils.cli import UserError, add_training_flags, fail, make_parser
from utils.engine import train_mnist
from utils.models import build_fcn

BATCH_SIZE = 10  # the authors' value: 6,000 steps per epoch


def main(argv: list[str] | None = None) -> None:
    parser = make_parser(__doc__)
    add_training_flags(parser, batch_size=BATCH_SIZE)
    train_mnist(parser.parse_args(argv), "MNIST-FCN", build_fcn)


if __name__ == "__main__":
    try:
        main()
    except UserError as err:
        fail(str(err))
