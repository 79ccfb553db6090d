"""Training speed of the Table 2 fine-tuning: ResNet18 with its analog head, batch 128.

    python benchmarks/bench_resnet.py                  # CPU: 32 px, 3 steps per setting, 1 thread
    python benchmarks/bench_resnet.py --device cuda    # GPU: 224 px, bf16 autocast on and off

For each --optimizer setting, full training steps (forward, CrossEntropy, backward, AnalogSGD step
with the authors' lr groups) on random images of the chosen size, so the data pipeline is left
out: images per second, and the analog head's share of the step time (a head-only step on random
512-feature inputs of the same batch: forward, backward, pulsed update). On a GPU the backbone
runs in channels_last, with and without bf16 autocast (the ratio is autocast's speed-up); the head
is on the CPU with the PyPI AIHWKit and on the GPU with an AIHWKit built with CUDA, as in the
training script. ``--loader`` also measures the per-image pipeline (PIL resize to --image-size,
ToTensor, Normalize) with --workers processes, in images per second, which must keep up with the
steps. One full-size epoch is 50,000 training images plus 10,000 test images.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a file from anywhere
from utils.analog_torch.presets import SETTINGS  # noqa: E402
from utils.backend import make_backend  # noqa: E402
from utils.data.cifar10 import CifarImages, ImageLoader  # noqa: E402
from utils.finetune import DW_MIN_STATES, analog_sgd, lr_groups  # noqa: E402
from utils.models import build_resnet  # noqa: E402
from utils.paper import TABLE2_LR  # noqa: E402

TRAIN_IMAGES = 50_000


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_step(step, steps: int, warmup: int, device: torch.device) -> float:
    """Median wall time of ``steps`` calls of ``step()`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def bench_setting(setting: str, args: argparse.Namespace, device: torch.device,
                  head_device: torch.device, autocast: torch.dtype | None) -> dict:
    torch.manual_seed(0)
    backend = make_backend(args.backend)
    model = build_resnet("Resnet18", backend.rpu_config(setting, 0.8, dw_min=0.8 / DW_MIN_STATES),
                         backend)
    model.autocast_dtype, model.channels_last = autocast, device.type == "cuda"
    model.place(device, head_device).train()
    optimizer = analog_sgd(lr_groups(model, TABLE2_LR[setting]), TABLE2_LR[setting], backend)
    n = args.batch_size
    x = torch.randn(n, 3, args.image_size, args.image_size, device=device)
    y = torch.randint(0, 10, (n,), device=device)

    def full_step() -> None:
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    features = torch.randn(n, model.head.in_features, device=head_device)
    head_y = y.to(head_device)
    head_opt = analog_sgd(lr_groups(model, TABLE2_LR[setting]), TABLE2_LR[setting], backend)

    def head_step() -> None:
        head_opt.zero_grad()
        F.cross_entropy(model.head(features), head_y).backward()
        head_opt.step()

    full = seconds_per_step(full_step, args.steps, args.warmup, device)
    head = seconds_per_step(head_step, args.steps, args.warmup, head_device)
    return {"setting": setting, "autocast": str(autocast), "step_s": full,
            "images_per_s": n / full, "head_step_s": head, "head_share": head / full}


def bench_loader(args: argparse.Namespace, device: torch.device) -> dict:
    rng = np.random.default_rng(0)
    n = args.batch_size * max(4, 2 * args.workers)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    dataset = CifarImages(images, rng.integers(0, 10, n), args.image_size)
    loader = ImageLoader(dataset, args.batch_size, shuffle=True, workers=args.workers, device=device)
    start = time.perf_counter()
    count = sum(len(y) for _, y in loader)
    _sync(device)
    seconds = time.perf_counter() - start
    return {"workers": args.workers, "images_per_s": count / seconds,
            "epoch_s": TRAIN_IMAGES / (count / seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: cuda if torch sees a GPU (default: %(default)s)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="image side (default: 32 on the CPU, 224 on a GPU)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per case (default: 3 on the CPU, 20 on a GPU)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    parser.add_argument("--loader", action="store_true",
                        help="also time the per-image data pipeline (on by default on a GPU)")
    parser.add_argument("--workers", type=int, default=6)
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    parser.add_argument("--backend", choices=("aihwkit", "torch"), default="aihwkit",
                        help="the analog head's simulator; torch: moment-matched updates, fused "
                             "by torch.compile, head on the GPU (default: %(default)s)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gpu = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if gpu else "cpu")
    backend = make_backend(args.backend, compile=True)
    head_device = backend.head_device(device)
    backend.activate()
    args.image_size = args.image_size or (224 if gpu else 32)
    args.steps = args.steps or (20 if gpu else 3)
    if gpu:
        torch.backends.cudnn.benchmark = True
        args.warmup = max(args.warmup, 5)
    name = torch.cuda.get_device_name(device) if gpu else f"CPU, {args.threads} thread(s)"
    print(f"ResNet18 + analog head ({args.backend}), batch {args.batch_size}, {args.image_size} px, {name}; "
          f"head on {head_device}; median of {args.steps} steps")
    amps = [None]
    if gpu and torch.cuda.is_bf16_supported():
        amps = [None, torch.bfloat16]
    results: dict = {"device": name, "head_device": str(head_device), "image_size": args.image_size,
                     "batch_size": args.batch_size, "steps": []}
    for setting in args.settings:
        per_amp = {}
        for amp in amps:
            r = bench_setting(setting, args, device, head_device, amp)
            per_amp[amp] = r
            results["steps"].append(r)
            epoch_h = TRAIN_IMAGES / r["images_per_s"] / 3600
            print(f"{setting:10s} {'bf16 autocast' if amp else 'fp32':13s} "
                  f"{r['images_per_s']:8.1f} images/s ({1000 * r['step_s']:7.1f} ms/step), "
                  f"analog head {1000 * r['head_step_s']:6.1f} ms = {100 * r['head_share']:4.1f} % "
                  f"of the step; training epoch ≈ {epoch_h:.2f} h", flush=True)
        if len(per_amp) == 2:
            ratio = per_amp[torch.bfloat16]["images_per_s"] / per_amp[None]["images_per_s"]
            print(f"{'':10s} autocast speed-up ×{ratio:.2f}")
    if args.loader or gpu:
        r = bench_loader(args, device)
        results["loader"] = r
        print(f"data pipeline, {r['workers']} workers: {r['images_per_s']:.0f} images/s "
              f"(a training epoch's images in {r['epoch_s']:.0f} s)")
        best = max(s["images_per_s"] for s in results["steps"])
        print(f"pipeline / fastest step: ×{r['images_per_s'] / best:.2f} (below 1: the loader "
              "limits training; raise --workers)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
