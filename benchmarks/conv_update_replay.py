"""Real convolution updates, replayed in both backends (README, "Batched experiments: the CNN").

    python benchmarks/conv_update_replay.py [--steps 100] [--repeats 400]

Trains the MNIST CNN with AIHWKit (Tiki-Taka v1, τ = 0.7, seed 1, batch 8, lr 0.05) for
``--steps`` steps, then takes the next step's update of each convolution as it happened: the
patches x and errors d (conv1: 8 × 576 update vectors of 25 inputs; conv2: 8 × 64 of 400) and the
tiles' devices and weights. Each update is then applied ``--repeats`` times from that same state,
by AIHWKit and by the torch backend (AIHWKit's device parameters copied in):

* Tiki-Taka's gradient pulses onto A (at fast_lr 0.01), A as it was;
* Analog SGD's update of the same x and d (lr 0.05) on one device per weight, holding C.

Printed per case: the relative difference (norm over the elements) of the mean and of the
variance of the change, torch against AIHWKit, and the same between two halves of AIHWKit's
repeats (its sampling noise).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from test_torch_backend import aihwkit_layer, copy_devices, rel  # noqa: E402

from utils import devices  # noqa: E402
from utils.analog_torch.config import from_aihwkit  # noqa: E402
from utils.analog_torch.tile import AnalogTile  # noqa: E402

TAU, LR, SEED = 0.7, 0.05, 1


def capture(steps: int, data_root: Path) -> list[dict]:
    """Each convolution's (x, d) of step ``steps`` + 1 and its tile's hidden parameters."""
    from aihwkit.optim import AnalogSGD

    from utils import models
    from utils.data import TensorLoader, load_mnist

    loader = TensorLoader(load_mnist(data_root, download=False).train, 8, shuffle=True, seed=SEED)
    torch.manual_seed(SEED)
    model = models.build_cnn(devices.rpu_config("TT-v1", TAU))
    optimizer = AnalogSGD(model.parameters(), lr=LR)
    convs = [m for m in model.modules() if type(m).__name__ == "AnalogConv2d"]
    for step, (x, y) in enumerate(loader):
        optimizer.zero_grad()
        F.nll_loss(model(x), y).backward()
        if step == steps:
            out = []
            for conv in convs:
                ctx = conv.analog_module.analog_ctx
                xs, ds = ctx.analog_input[0], ctx.analog_grad_output[0]
                out.append({"x": xs.reshape(-1, xs.shape[-1]).detach().clone(),
                            "d": ds.reshape(-1, ds.shape[-1]).detach().clone(),
                            "hidden": conv.analog_module.get_hidden_parameters()})
            return out
        optimizer.step()
    raise SystemExit(f"--steps {steps} is beyond one epoch")


def replay(config, hidden: dict, x: torch.Tensor, d: torch.Tensor, lr: float, repeats: int,
           mode: str, tiki_taka: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(AIHWKit's, the torch backend's) changes of A (Tiki-Taka) or W (Analog SGD), (repeats, out,
    in) each, from the same start."""
    out_size, in_size = d.shape[1], x.shape[1]
    _, tile = aihwkit_layer(config, in_size, out_size)
    if tiki_taka:
        start = hidden["hidden_weights_0"].clone()
        tile.set_hidden_parameters(hidden)
    else:  # an Analog SGD tile holding C, on A's devices
        tile.set_hidden_parameters({k[:-2]: v for k, v in hidden.items()
                                    if k.endswith("_0") and not k.startswith("hidden")})
        tile.set_weights(hidden["hidden_weights_1"])
        start = tile.tile.get_weights().clone()
    tile.set_learning_rate(lr)
    theirs = []
    for _ in range(repeats):
        if tiki_taka:
            tile.set_hidden_parameters(hidden)
            tile.tile.update(x, d, False)
            theirs.append(tile.get_hidden_parameters()["hidden_weights_0"] - start)
        else:
            tile.set_weights(start)
            tile.tile.update(x, d, False)
            theirs.append(tile.tile.get_weights() - start)
    ours_tile = AnalogTile(out_size, in_size, [from_aihwkit(config)] * repeats, update_mode=mode)
    if tiki_taka:
        copy_devices(hidden, ours_tile.fast, "_0")
        copy_devices(hidden, ours_tile.slow, "_1")
        ours_tile.set_weights(hidden["hidden_weights_1"].expand(repeats, -1, -1))
        array = ours_tile.fast
    else:
        copy_devices(hidden, ours_tile.array, suffix="_0")
        array = ours_tile.array
    array.weight.copy_(start.expand(repeats, -1, -1))
    if tiki_taka:  # the pulses onto A alone (a transfer leaves A as it is)
        ours_tile.fast.update(x.expand(repeats, -1, -1), d.expand(repeats, -1, -1),
                              config.device.fast_lr, config.update, mode)
    else:
        ours_tile.stash(x.expand(repeats, -1, -1), d.expand(repeats, -1, -1))
        ours_tile.apply_update(lr)
    return torch.stack(theirs), array.weight - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=100, help="training steps before (default: 100)")
    p.add_argument("--repeats", type=int, default=400, help="repeats per update (default: 400)")
    p.add_argument("--data-root", type=Path, default=ROOT / "data",
                   help="folder holding MNIST (default: data/)")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    captured = capture(args.steps, args.data_root)
    half = args.repeats // 2
    print(f"conv updates of step {args.steps + 1} (AIHWKit training, TT-v1, tau {TAU}, seed "
          f"{SEED}), {args.repeats} repeats; relative difference to AIHWKit, mean / variance")
    for name, cap in zip(("conv1", "conv2"), captured, strict=True):
        for label, tiki_taka, setting in (("Tiki-Taka A", True, "TT-v1"),
                                          ("Analog SGD W", False, "Analog SGD")):
            config = devices.rpu_config(setting, TAU)
            for mode in ("moment", "pulse"):
                theirs, ours = replay(config, cap["hidden"], cap["x"], cap["d"], LR,
                                      args.repeats, mode, tiki_taka)
                print(f"{name} ({cap['x'].shape[0]} vectors) {label:<13} {mode:<6}: "
                      f"{rel(ours.mean(0), theirs.mean(0)):.3f} / "
                      f"{rel(ours.var(0), theirs.var(0)):.3f}   AIHWKit halves "
                      f"{rel(theirs[:half].mean(0), theirs[half:].mean(0)):.3f} / "
                      f"{rel(theirs[:half].var(0), theirs[half:].var(0)):.3f}")


if __name__ == "__main__":
    main()
