"""Overhead of our training loop (utils.engine.train_one_epoch over utils.data.mnist.TensorLoader) over bare
AIHWKit forward + backward + update on the same in-memory batches, and the time of one MNIST epoch.

    python benchmarks/bench_mnist_loop.py [--model fcn|cnn] [--steps 300] [--threads 1]

For each --SETTING: the same model (same seed) trains ``steps`` mini-batches once with a bare loop
and once with ours, alternately, ``repeats`` times; the minimum of each is compared (target: under
10 % overhead). It then extrapolates one full epoch (60,000 images at the authors' batch size) plus
one test pass over 10,000 images. Uses MNIST from --data-root if it is there, else a synthetic
stand-in (the cost per step hardly depends on the pixel values).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a file from anywhere
from utils.backend import AIHWKIT  # noqa: E402
from utils.data.mnist import TensorLoader, find_files, load_mnist, write_synthetic_mnist  # noqa: E402
from utils.engine import EVAL_BATCH, evaluate, train_one_epoch  # noqa: E402
from utils.models import build_network  # noqa: E402
from utils.paper import MNIST_BATCH_SIZE  # noqa: E402
from utils.rpu_configs import SETTINGS, rpu_config  # noqa: E402

MODELS = {"fcn": ("FCN", MNIST_BATCH_SIZE["FCN"]), "cnn": ("CNN", MNIST_BATCH_SIZE["CNN"])}
TRAIN_IMAGES, TEST_IMAGES = 60_000, 10_000


def bare_loop(model, optimizer, batches) -> None:
    for x, y in batches:
        optimizer.zero_grad()
        F.nll_loss(model(x), y).backward()
        optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=MODELS, default="fcn")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-root", type=Path, default=Path("data"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from aihwkit.optim import AnalogSGD

    network, batch_size = MODELS[args.model]
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data_root
        if find_files(root) is None:
            root = Path(tmp)
            write_synthetic_mnist(root, n_train=args.steps * batch_size, n_test=TEST_IMAGES)
        data = load_mnist(root, download=False)
    loader = TensorLoader(data.train.head(args.steps * batch_size), batch_size, shuffle=True)
    batches = list(loader)
    print(f"{args.model.upper()}, batch {batch_size}, {args.steps} steps, {args.threads} thread(s)")
    for setting in SETTINGS:
        config = rpu_config(setting, 0.78)
        times: dict[str, list[float]] = {"bare": [], "ours": []}
        for _ in range(args.repeats):
            for kind in times:
                torch.manual_seed(0)
                model = build_network(network, [config], AIHWKIT)
                optimizer = AnalogSGD(model.parameters(), lr=0.05)
                start = time.perf_counter()
                if kind == "bare":
                    bare_loop(model, optimizer, batches)
                else:
                    train_one_epoch(model, optimizer, [loader], F.nll_loss, "bench")
                times[kind].append(time.perf_counter() - start)
        bare, ours = min(times["bare"]), min(times["ours"])
        start = time.perf_counter()
        evaluate(model, TensorLoader(data.test, EVAL_BATCH, shuffle=False), F.nll_loss)
        test_s = (time.perf_counter() - start) * TEST_IMAGES / len(data.test)
        step_ms = 1000 * ours / args.steps
        epoch_s = step_ms / 1000 * TRAIN_IMAGES / batch_size + test_s
        print(f"{setting:10s} bare {1000 * bare / args.steps:6.2f} ms/step, ours {step_ms:6.2f} "
              f"ms/step, overhead {100 * (ours / bare - 1):+5.1f} %; epoch ≈ {epoch_s:6.1f} s "
              f"(test pass {test_s:.1f} s), 80 epochs ≈ {80 * epoch_s / 3600:.1f} h", flush=True)


if __name__ == "__main__":
    main()
