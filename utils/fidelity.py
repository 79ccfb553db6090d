"""The torch backend next to AIHWKit: the experiments that the fidelity tests
(tests/test_fidelity.py) and their measurement scripts (tests/measure_*.py) share.

Each function builds the same tile, layer or run in both backends (AIHWKit's device parameters
copied into ours) and returns what the two give, so that a test compares them once and a
measurement script repeats the comparison to learn its spread. Needs AIHWKit.
"""

from __future__ import annotations

import contextlib
import unittest
from collections.abc import Iterator

import torch

from utils import devices
from utils.analog_torch import native
from utils.analog_torch import nn as tnn
from utils.analog_torch.config import from_aihwkit
from utils.analog_torch.tile import AnalogTile, SoftBoundsArray

TOLERANCE = 0.05  # relative, on the norm over elements


def rel(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """The relative distance ‖ours − ref‖ / ‖ref‖ over all elements."""
    return float((ours - ref).norm() / ref.norm())


def aihwkit_layer(config, in_size: int, out_size: int):
    """A bias-free AIHWKit AnalogLinear and its one tile."""
    from aihwkit.nn import AnalogLinear

    layer = AnalogLinear(in_size, out_size, bias=False, rpu_config=config)
    return layer, next(layer.analog_tiles())


def copy_devices(hidden: dict, array: SoftBoundsArray, suffix: str = "") -> None:
    """AIHWKit's per-device step sizes and bounds into a torch-backend array (all R runs)."""
    for ours, theirs in (("scale_up", "dwmin_up"), ("scale_down", "dwmin_down"),
                         ("max_bound", "max_bound"), ("min_bound", "min_bound")):
        getattr(array, ours).copy_(hidden[theirs + suffix].expand_as(getattr(array, ours)))


@contextlib.contextmanager
def cpp_kernels(on: bool) -> Iterator[None]:
    """The block runs with the C++ kernels on or off. Where they cannot be built, turning them on
    raises unittest.SkipTest, which pytest reports as a skipped test."""
    native.set_native(on)
    try:
        if on and native.kernels() is None:
            raise unittest.SkipTest("the C++ kernels cannot be built here (no C++ compiler)")
        yield
    finally:
        native.set_native(False)


UPDATE_MODES_TESTED = ("moment", "pulse")


# the torch backend's update variants: (update mode, C++ kernels)
VARIANTS = {"moment": ("moment", False), "moment-cpp": ("moment", True), "pulse": ("pulse", False),
            "pulse-cpp": ("pulse", True)}


def analog_sgd_config(tau: float = 0.7):
    """The Analog SGD config of the experiments, without the learned output scale."""
    config = devices.rpu_config("Analog SGD", tau)
    config.mapping.learn_out_scaling = False
    return config


def repeated_update(variants: list[str], trials: int, x: torch.Tensor, d: torch.Tensor,
                    lr: float):
    """ΔW of ``trials`` independent updates from the same weights: AIHWKit's, and ours in each
    of ``variants`` (keys of VARIANTS)."""
    torch.manual_seed(1)
    out_size, in_size = d.shape[1], x.shape[1]
    config = analog_sgd_config()
    _, tile = aihwkit_layer(config, in_size, out_size)
    hidden = tile.get_hidden_parameters()
    w0 = ((torch.rand(out_size, in_size) * 2 - 1) * 0.5).clamp(hidden["min_bound"],
                                                                hidden["max_bound"])
    tile.set_learning_rate(lr)
    theirs = []
    for _ in range(trials):
        tile.set_weights(w0)
        tile.tile.update(x, d, False)
        theirs.append(tile.tile.get_weights() - w0)
    ours = []
    for variant in variants:
        mode, cpp = VARIANTS[variant]
        with cpp_kernels(cpp):
            ours_tile = AnalogTile(out_size, in_size, [from_aihwkit(config)] * trials,
                                   update_mode=mode)
            copy_devices(hidden, ours_tile.array)
            ours_tile.set_weights(w0.expand(trials, -1, -1))
            ours_tile.stash(x.expand(trials, -1, -1), d.expand(trials, -1, -1))
            ours_tile.apply_update(lr)
        ours.append(ours_tile.weight - w0)
    return torch.stack(theirs), ours


# A learnable stand-in: 4 balanced classes (majority share 0.25), 16 inputs, Gaussian prototypes
# with noise of std 1.5; one bias-free analog layer, 2 epochs of 400 samples in batches of 10.
STAND_IN = {"classes": 4, "inputs": 16, "train": 400, "test": 2000, "noise": 1.5, "epochs": 2,
            "batch": 10, "lr": 0.1}


def stand_in_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` samples of the stand-in (balanced classes) with noise drawn from ``seed``."""
    k, m = STAND_IN["classes"], STAND_IN["inputs"]
    prototypes = torch.randn(k, m, generator=torch.Generator().manual_seed(0))
    y = torch.arange(n) % k
    noise = torch.randn(n, m, generator=torch.Generator().manual_seed(seed))
    return prototypes[y] + STAND_IN["noise"] * noise, y


def stand_in_accuracies(setting: str, backend: str, runs: int) -> list[float]:
    """Test accuracy of ``runs`` runs of ``setting`` trained on the stand-in from the same initial
    weights and the same batches: AIHWKit one after the other (unseeded noise), the torch backend
    as one batched, seeded model."""
    import torch.nn.functional as F

    x, y = stand_in_data(STAND_IN["train"], 1)
    x_test, y_test = stand_in_data(STAND_IN["test"], 2)
    out_size, in_size = STAND_IN["classes"], STAND_IN["inputs"]
    w0 = torch.randn(out_size, in_size, generator=torch.Generator().manual_seed(3)) * 0.1
    order = torch.Generator().manual_seed(0)
    batches = [idx for _ in range(STAND_IN["epochs"])
               for idx in torch.randperm(len(x), generator=order).split(STAND_IN["batch"])]
    config = devices.rpu_config(setting, 0.7)
    if backend == "aihwkit":
        from aihwkit.optim import AnalogSGD

        accuracies = []
        for _ in range(runs):
            layer, _ = aihwkit_layer(config, in_size, out_size)
            layer.set_weights(w0)
            opt = AnalogSGD(layer.parameters(), lr=STAND_IN["lr"])
            for idx in batches:
                opt.zero_grad()
                F.cross_entropy(layer(x[idx]), y[idx]).backward()
                opt.step()
            with torch.no_grad():
                accuracies.append(float((layer(x_test).argmax(1) == y_test).float().mean()))
        return accuracies
    torch.manual_seed(0)
    layer = tnn.AnalogLinear(in_size, out_size, [from_aihwkit(config)] * runs, bias=False)
    layer.set_weights(w0.expand(runs, -1, -1))
    opt = tnn.AnalogSGD(layer.parameters(), lr=STAND_IN["lr"])
    for idx in batches:
        opt.zero_grad()
        (F.cross_entropy(layer(x[idx].repeat(runs, 1)), y[idx].repeat(runs)) * runs).backward()
        opt.step()
    with torch.no_grad():
        hits = layer(x_test.repeat(runs, 1)).argmax(1) == y_test.repeat(runs)
    return hits.float().view(runs, -1).mean(1).tolist()
