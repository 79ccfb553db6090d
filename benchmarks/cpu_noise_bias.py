"""The mean of the read noise, per tile: AIHWKit's CPU simulator against the torch backend (the
numbers of docs/aihwkit_cpu_noise.md).

    python benchmarks/cpu_noise_bias.py [--tiles 6] [--repeats 100]

AIHWKit's CPU random generator draws every Gaussian number from a list of 32,768 numbers made once
per generator, so each tile's output noise keeps that list's sample mean for the whole run. This
script measures it where it matters: the backward pass of a convolution (conv2 of the MNIST CNN,
16 → 32 channels, 5×5, Tiki-Taka v1 at τ = 0.7), whose outputs sum the errors of up to 25
overlapping patches. For each of ``--tiles`` tiles it repeats one backward pass of fixed weights and
a fixed error ``--repeats`` times and reports the mean of (analog − exact), over the repeats and
all input gradients, in % of the mean |exact| gradient, with its standard error. Rows:

* AIHWKit, output noise 0.06 (as trained): each tile its own list;
* AIHWKit, output noise 0: the deterministic part (DAC/ADC rounding), the same for every tile;
* torch backend, fresh noise (the default; AIHWKit on a GPU draws fresh numbers too);
* torch backend, ``--noise-list 32768``: AIHWKit's CPU lists emulated.

A tile's offset is "biased" when it exceeds 4 standard errors.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]
from utils.analog_torch.tile import AIHWKIT_CPU_NOISE_LIST  # noqa: E402

TAU = 0.7
IN_CH, OUT_CH, K, SIDE, BATCH = 16, 32, 5, 12, 8


def problem(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weights (out, in·k·k) inside every device's bounds, inputs (N, in, 12, 12) and output
    errors (N, out, 8, 8) of the size conv2 sees early in training."""
    g = torch.Generator().manual_seed(seed)
    w = (torch.rand(OUT_CH, IN_CH * K * K, generator=g) * 2 - 1) * 0.05
    x = torch.rand(BATCH, IN_CH, SIDE, SIDE, generator=g)
    err = torch.randn(BATCH, OUT_CH, SIDE - K + 1, SIDE - K + 1, generator=g) * 1e-3
    return w, x, err


def exact_grad(w: torch.Tensor, x: torch.Tensor, err: torch.Tensor) -> torch.Tensor:
    """The input gradient of conv2d(x, w) for output gradient ``err``, per run: w (R, out, in·k·k)
    → (R, N, in, 12, 12)."""
    out = []
    for wr in w:
        xr = x.clone().requires_grad_()
        (F.conv2d(xr, wr.view(OUT_CH, IN_CH, K, K)) * err).sum().backward()
        out.append(xr.grad)
    return torch.stack(out)


def summarize(grads: torch.Tensor, exact: torch.Tensor) -> list[tuple[float, float]]:
    """Per tile: (offset, standard error) in % of mean |exact|; grads (R, repeats, ...)."""
    scale = float(exact.abs().mean())
    rows = []
    for g, e in zip(grads, exact, strict=True):
        per_repeat = (g - e).flatten(1).mean(1)
        rows.append((100 * float(per_repeat.mean()) / scale,
                     100 * float(per_repeat.std() / len(per_repeat) ** 0.5) / scale))
    return rows


def aihwkit_rows(tiles: int, repeats: int, out_noise: float) -> list[tuple[float, float]]:
    from aihwkit.nn import AnalogConv2d

    from utils import rpu_configs

    config = rpu_configs.rpu_config("TT-v1", TAU)
    config.forward.out_noise = config.backward.out_noise = out_noise
    w, x, err = problem()
    grads, weights = [], []
    for _ in range(tiles):
        layer = AnalogConv2d(IN_CH, OUT_CH, K, bias=False, rpu_config=config)
        tile = next(layer.analog_tiles())
        tile.set_weights(w)
        weights.append(tile.get_hidden_parameters()["hidden_weights_1"])  # C, clipped to bounds
        xr, runs = x.clone().requires_grad_(), []
        for _ in range(repeats):
            xr.grad = None
            (layer(xr) * err).sum().backward()
            runs.append(xr.grad.clone())
            layer.analog_module.analog_ctx.reset()  # drop the stashed update
        grads.append(torch.stack(runs))
    return summarize(torch.stack(grads), exact_grad(torch.stack(weights), x, err))


def torch_rows(tiles: int, repeats: int, noise_list: int) -> list[tuple[float, float]]:
    from utils.analog_torch import nn as tnn
    from utils.analog_torch.tile import set_noise_list
    from utils.backend import TorchBackend

    set_noise_list(noise_list)
    try:
        configs = [TorchBackend().rpu_config("TT-v1", TAU)] * tiles
        layer = tnn.AnalogConv2d(IN_CH, OUT_CH, K, configs, bias=False)
    finally:
        set_noise_list(0)
    layer.eval()  # no stash for an update
    w, x, err = problem()
    layer.set_weights(w.expand(tiles, -1, -1))
    xr, runs = x.repeat(tiles, 1, 1, 1).requires_grad_(), []
    for _ in range(repeats):
        xr.grad = None
        (layer(xr) * err.repeat(tiles, 1, 1, 1)).sum().backward()
        runs.append(xr.grad.view(tiles, BATCH, IN_CH, SIDE, SIDE).clone())
    grads = torch.stack(runs, dim=1)  # (R, repeats, ...)
    return summarize(grads, exact_grad(layer.get_weights(), x, err))


def report(name: str, rows: list[tuple[float, float]]) -> None:
    offsets = torch.tensor([r[0] for r in rows])
    biased = sum(abs(o) > 4 * se for o, se in rows)
    cells = "  ".join(f"{o:+6.2f}±{se:.2f}" for o, se in rows)
    print(f"{name:<34} {cells}   rms {float(offsets.square().mean().sqrt()):.2f} %, "
          f"{biased}/{len(rows)} biased")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiles", type=int, default=6, help="tiles per row (default: 6)")
    p.add_argument("--repeats", type=int, default=100,
                   help="backward passes per tile (default: 100)")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    print(f"mean of (analog - exact) input gradient of conv2 (TT-v1, tau {TAU}), in % of mean "
          f"|exact|, ± standard error; {args.tiles} tiles × {args.repeats} backward passes")
    report("AIHWKit CPU, output noise 0.06", aihwkit_rows(args.tiles, args.repeats, 0.06))
    report("AIHWKit CPU, output noise 0", aihwkit_rows(args.tiles, args.repeats, 0.0))
    report("torch, fresh noise", torch_rows(args.tiles, args.repeats, 0))
    report("torch, --noise-list 32768",
           torch_rows(args.tiles, args.repeats, AIHWKIT_CPU_NOISE_LIST))


if __name__ == "__main__":
    main()
