"""The MNIST networks of Figure 5 (as in the authors' code), with every weight matrix on analog
tiles configured by one ``rpu_config`` (utils.devices.rpu_config) and biases digital.

Both take images of shape (N, 1, 28, 28) and return log-probabilities (train with NLLLoss).
"""

from __future__ import annotations

from aihwkit.nn import AnalogConv2d, AnalogLinear, AnalogSequential
from aihwkit.nn.conversion import convert_to_analog
from torch import nn


def build_fcn(rpu_config) -> AnalogSequential:
    """FCN 784-256-128-10 with sigmoids, built digitally (torch's default init) and converted, as
    the authors do. Layer 1 has 784 > 512 inputs, so AIHWKit splits it into two 392-input tiles
    whose outputs are summed digitally (as in the authors' code)."""
    digital = nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 256), nn.Sigmoid(),
        nn.Linear(256, 128), nn.Sigmoid(),
        nn.Linear(128, 10), nn.LogSoftmax(dim=1),
    )
    return convert_to_analog(digital, rpu_config)


def build_cnn(rpu_config) -> AnalogSequential:
    """LeNet-style CNN built directly from analog modules; spatial size 28 -> 24 -> 12 -> 8 -> 4.
    Tiles (out x in): 16x25, 32x400, 128x512, 10x128; none is split. The Tanh after the second
    pooling repeats the authors' model (a second Tanh in a row)."""
    return AnalogSequential(
        AnalogConv2d(1, 16, kernel_size=5, stride=1, rpu_config=rpu_config), nn.Tanh(),
        nn.MaxPool2d(2),
        AnalogConv2d(16, 32, kernel_size=5, stride=1, rpu_config=rpu_config), nn.Tanh(),
        nn.MaxPool2d(2), nn.Tanh(), nn.Flatten(),
        AnalogLinear(32 * 4 * 4, 128, rpu_config=rpu_config), nn.Tanh(),
        AnalogLinear(128, 10, rpu_config=rpu_config), nn.LogSoftmax(dim=1),
    )

