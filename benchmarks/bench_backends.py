"""Time per training step and per MNIST epoch: AIHWKit (CPU) against the torch backend (each update
mode, one run and R runs batched), on the same mini-batches, in one process.

    python benchmarks/bench_backends.py [--model fcn|cnn] [--setting "Analog SGD"] [--steps 200]
                                        [--runs 9 [21 ...]] [--threads 1] [--device cpu|cuda]
                                        [--data-root data] [--no-aihwkit] [--out results/tables]

Each variant trains the same network ``steps`` mini-batches (after ``warmup`` steps, which also
absorb torch.compile's one-off compilation), ``repeats`` times alternately; the minimum per step
is kept. "per run" divides a batched step by R. The epoch column extrapolates 60,000 training
images at the authors' batch size (FCN 10, CNN 8). Writes a Markdown table (``--out``) with the
ratios to AIHWKit, the machine and the settings. The mini-batches are real MNIST training images
when MNIST is in ``--data-root`` (the torch backend skips the input lines that are zero in a whole
mini-batch, so its cost depends on the images; AIHWKit's hardly does), else uniform random images,
which the title then says (no line is ever zero: the torch backend's slowest case). On a CPU the
torch variants use the C++ kernels (utils/analog_torch/native.py) unless --no-compile; the
"tensor operations only" variants run the pulse mode without them, to show what they gain.

Two reference rows show what a step costs before any analog work (one run, not with --no-aihwkit
or --no-compile): "digital torch" trains the same network with nn.Linear / nn.Conv2d layers and
torch.optim.SGD, and "torch, no analog work" runs the torch backend's whole step (its layers,
autograd function and optimizer) with every kernel replaced by a stand-in that does no analog
work: a plain matrix product for the IO pass, nothing for the update. No torch-backend variant
of one run can be faster than that row.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a file from anywhere
from utils.analog_torch import native  # noqa: E402
from utils.analog_torch import nn as tnn  # noqa: E402
from utils.analog_torch.native import kernels, set_native  # noqa: E402
from utils.analog_torch.presets import SETTINGS  # noqa: E402
from utils.analog_torch.tile import set_compile  # noqa: E402
from utils.backend import AIHWKIT, TorchBackend  # noqa: E402
from utils.models import NETWORKS, build_network  # noqa: E402

BATCH = {"fcn": 10, "cnn": 8}
TRAIN_IMAGES = 60_000
TAU = 0.7


def images(root: Path, count: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """``count`` training images and labels: MNIST's first ones if it is in ``root``, else
    uniform random ones. Also says which."""
    from utils.data.mnist import find_files, load_mnist

    if find_files(root) is not None:
        train = load_mnist(root, download=False).train
        reps = -(-count // len(train))
        return (train.images.repeat(reps, 1, 1, 1)[:count],
                train.labels.repeat(reps)[:count], "MNIST training images")
    g = torch.Generator().manual_seed(0)
    return (torch.rand(count, 1, 28, 28, generator=g), torch.randint(0, 10, (count,), generator=g),
            f"uniform random images (no MNIST in {root})")


def batches(x: torch.Tensor, y: torch.Tensor, model: str, runs: int, steps: int,
            device: torch.device):
    """``steps`` mini-batches of R runs × the model's batch size, consecutive images."""
    n = BATCH[model] * runs
    return [(x[i * n:(i + 1) * n].to(device), y[i * n:(i + 1) * n].to(device))
            for i in range(steps)]


def aihwkit_variant(model: str, setting: str):
    from aihwkit.optim import AnalogSGD

    torch.manual_seed(0)
    net = build_network(model.upper(), [AIHWKIT.rpu_config(setting, TAU)], AIHWKIT)
    opt = AnalogSGD(net.parameters(), lr=0.05)

    def step(x, y):
        opt.zero_grad()
        F.nll_loss(net(x), y).backward()
        opt.step()
    return step


def torch_variant(model: str, setting: str, mode: str, runs: int, device: torch.device):
    backend = TorchBackend(mode)
    net = build_network(model.upper(), [backend.rpu_config(setting, TAU)] * runs, backend,
                        list(range(runs))).to(device)
    opt = tnn.AnalogSGD(net.parameters(), lr=0.05)

    def step(x, y):
        opt.zero_grad()
        tnn.batched_loss(net(x), y, runs).backward()
        opt.step()
    return step


def digital_variant(model: str):
    """The same network with digital layers and plain SGD: the step's cost without analog tiles."""
    torch.manual_seed(0)
    net = NETWORKS[model.upper()]()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)

    def step(x, y):
        opt.zero_grad()
        F.nll_loss(net(x), y).backward()
        opt.step()
    return step


class NoAnalogWork:
    """Stands in for the C++ kernels (the "torch, no analog work" row): the IO pass is a plain
    matrix product (no DAC, noise, ADC or bound management), no output is saturated, and the
    updates do nothing. Everything around the kernels runs as usual."""

    @staticmethod
    def io_pass(wt, x, *settings):
        return torch.matmul(x, wt)

    @staticmethod
    def saturated(y, threshold):
        return None

    @staticmethod
    def moment_update(*args):
        return None

    @staticmethod
    def pulse_update(*args):
        return None


def use_kernels(which: str | None) -> None:
    """Which kernels the torch variants run: "cpp" the C++ ones, "none" :class:`NoAnalogWork`,
    None the tensor operations."""
    set_native(which is not None)
    native.kernels = (lambda: NoAnalogWork) if which == "none" else kernels


def cpu_name() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def timed(step, data, warmup: int, device: torch.device) -> float:
    for x, y in data[:warmup]:
        step(x, y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for x, y in data[warmup:]:
        step(x, y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / (len(data) - warmup)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=BATCH, default="fcn")
    p.add_argument("--setting", choices=SETTINGS, default="Analog SGD")
    p.add_argument("--steps", type=int, default=200, help="timed steps per variant (default: 200)")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--runs", type=int, nargs="+", default=[9],
                   help="R of the batched variants, one or more values (default: 9)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="device of the torch backend (default: cpu)")
    p.add_argument("--data-root", type=Path, default=Path("data"),
                   help="where MNIST is (default: data); without it, random images are used")
    p.add_argument("--no-aihwkit", action="store_true", help="skip AIHWKit (e.g. on a GPU machine "
                   "without it); ratios are then to the torch backend's one-run moment mode")
    p.add_argument("--no-compile", action="store_true",
                   help="neither the C++ kernels nor torch.compile's fused moment update")
    p.add_argument("--out", type=Path, default=None, help="write the table to OUT/<name>.md")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    set_compile(not args.no_compile)
    device = torch.device(args.device)
    steps = args.warmup + args.steps
    x, y, source = images(args.data_root, steps * BATCH[args.model] * max(args.runs))
    print(f"mini-batches: {source}")
    one = batches(x, y, args.model, 1, steps, torch.device("cpu"))
    variants = {}
    if not args.no_aihwkit:
        variants["AIHWKit (CPU)"] = (aihwkit_variant(args.model, args.setting), one, 1, False)
    one_dev = [(x.to(device), y.to(device)) for x, y in one]
    cpp = "cpp" if not args.no_compile and device.type == "cpu" and kernels() is not None else None
    for runs in (1, *args.runs):
        data = one_dev if runs == 1 else batches(x, y, args.model, runs, steps, device)
        label = "1 run" if runs == 1 else f"{runs} runs batched"
        for mode in ("moment", "pulse"):
            variants[f"torch {mode}, {label}"] = (
                torch_variant(args.model, args.setting, mode, runs, device), data, runs, cpp)
        if cpp:  # the same without the C++ kernels: what they gain
            variants[f"torch pulse, {label}, tensor operations only"] = (
                torch_variant(args.model, args.setting, "pulse", runs, device), data, runs, None)
    if cpp and not args.no_aihwkit:  # what one run's step costs before any analog work
        variants["digital torch (no analog tiles), 1 run"] = (
            digital_variant(args.model), one_dev, 1, None)
        variants["torch, no analog work (kernels as stand-ins), 1 run"] = (
            torch_variant(args.model, args.setting, "moment", 1, device), one_dev, 1, "none")
    best = {name: float("inf") for name in variants}
    for r in range(args.repeats):
        for name, (step, data, _, which) in variants.items():
            use_kernels(which)
            best[name] = min(best[name], timed(step, data, args.warmup if r == 0 else 5, device))
            print(f"repeat {r + 1}: {name}: {1e3 * best[name]:.3f} ms/step", flush=True)
    use_kernels(cpp)
    reference = next(iter(variants))
    per_run = {name: best[name] / variants[name][2] for name in variants}
    steps_per_epoch = TRAIN_IMAGES // BATCH[args.model]
    title = (f"{args.model.upper()}, {args.setting}, τ = {TAU}, batch {BATCH[args.model]}, "
             f"{args.threads} thread(s), {source.split(' (')[0]}, torch backend on {device}"
             + ("" if args.no_compile or device.type != "cpu" else " (C++ kernels)"))
    lines = [f"# Backend speed: {title}", "",
             f"Machine: {cpu_name()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} "
             f"thread(s), torch {torch.__version__}"
             + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else "") + ". "
             f"Minimum over {args.repeats} repeats of {args.steps} steps. One epoch = "
             f"{steps_per_epoch} steps (extrapolated).", "",
             "| variant | ms per step | ms per step per run | s per epoch per run | "
             f"speed-up per run vs {reference} |",
             "|---|---|---|---|---|"]
    for name in variants:
        lines.append(f"| {name} | {1e3 * best[name]:.3f} | {1e3 * per_run[name]:.3f} | "
                     f"{per_run[name] * steps_per_epoch:.1f} | {per_run[reference] / per_run[name]:.2f}× |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        name = f"bench_backends_{args.model}_{device.type}.md"
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / name).write_text(text)
        print(f"wrote {args.out / name}")


if __name__ == "__main__":
    main()
