"""The MNIST networks of Figure 5 (as in the authors' code), with every weight matrix on analog
tiles configured by one ``rpu_config`` (utils.devices.rpu_config) and biases digital.

Both take images of shape (N, 1, 28, 28) and return log-probabilities (train with NLLLoss).
Table 2's ImageNet ResNets with an analog classifier head follow them (their initial weights:
utils.weights).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


def build_fcn(rpu_config) -> nn.Module:
    """FCN 784-256-128-10 with sigmoids, built digitally (torch's default init) and converted, as
    the authors do. Layer 1 has 784 > 512 inputs, so AIHWKit splits it into two 392-input tiles
    whose outputs are summed digitally (as in the authors' code)."""
    from aihwkit.nn.conversion import convert_to_analog
    digital = nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 256), nn.Sigmoid(),
        nn.Linear(256, 128), nn.Sigmoid(),
        nn.Linear(128, 10), nn.LogSoftmax(dim=1),
    )
    return convert_to_analog(digital, rpu_config)


def build_cnn(rpu_config) -> nn.Module:
    """LeNet-style CNN built directly from analog modules; spatial size 28 -> 24 -> 12 -> 8 -> 4.
    Tiles (out x in): 16x25, 32x400, 128x512, 10x128; none is split. The Tanh after the second
    pooling repeats the authors' model (a second Tanh in a row)."""
    from aihwkit.nn import AnalogConv2d, AnalogLinear, AnalogSequential
    return AnalogSequential(
        AnalogConv2d(1, 16, kernel_size=5, stride=1, rpu_config=rpu_config), nn.Tanh(),
        nn.MaxPool2d(2),
        AnalogConv2d(16, 32, kernel_size=5, stride=1, rpu_config=rpu_config), nn.Tanh(),
        nn.MaxPool2d(2), nn.Tanh(), nn.Flatten(),
        AnalogLinear(32 * 4 * 4, 128, rpu_config=rpu_config), nn.Tanh(),
        AnalogLinear(128, 10, rpu_config=rpu_config), nn.LogSoftmax(dim=1),
    )


# --- ResNets with an analog classifier (Table 2) --------------------------------------------------

RESNETS = {"Resnet18": "resnet18", "Resnet34": "resnet34", "Resnet50": "resnet50"}
"""The authors' --model names and the torchvision builders they stand for."""
CIFAR_CLASSES = 10


class AnalogHeadNet(nn.Module):
    """A digital feature extractor followed by an analog classifier: the authors' ResNet with its
    ``fc`` replaced by an ``AnalogLinear`` head (AIHWKit's, or the torch backend's), the only
    analog layer.

    The backbone may run under autocast (``autocast_dtype``) and in channels_last memory format;
    the head always receives float32 features. ``place(device, head_device)`` puts the backbone
    on ``device`` and the head on ``head_device`` (the CPU when AIHWKit was built without CUDA);
    ``forward`` copies the features to the head's device and the logits back, and autograd carries
    the gradient across both copies.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module,
                 autocast_dtype: torch.dtype | None = None, channels_last: bool = False) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head
        self.autocast_dtype, self.channels_last = autocast_dtype, channels_last

    def place(self, device: torch.device, head_device: torch.device | None = None) -> AnalogHeadNet:
        """Move the backbone to ``device`` (channels_last if set) and the head to ``head_device``
        (default: ``device``)."""
        self.backbone.to(device)
        if self.channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        self.head.to(head_device or device)
        return self

    def analog_tiles(self):
        """The head's tiles, the only analog ones (as AIHWKit's analog modules offer them)."""
        return self.head.analog_tiles()

    @property
    def head_device(self) -> torch.device:
        return next(self.head.analog_tiles()).device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        autocast = (torch.autocast(x.device.type, dtype=self.autocast_dtype)
                    if self.autocast_dtype is not None else contextlib.nullcontext())
        with autocast:
            features = self.backbone(x)
        logits = self.head(features.float().to(self.head_device))  # the analog head runs in fp32
        return logits.to(x.device)


def build_resnet(model: str, rpu_config, *, state_dict: dict | None = None,
                 freeze_backbone: bool = False, classes: int = CIFAR_CLASSES,
                 update_mode: str | None = None) -> AnalogHeadNet:
    """torchvision's ResNet ``model`` ("Resnet18" | "Resnet34" | "Resnet50") with ``state_dict``
    loaded into its backbone (None: torch's random init) and ``fc`` replaced by
    ``AnalogLinear(num_ftrs, classes, rpu_config)`` with a digital bias (as in the authors' code).
    ResNet-50's 2048 features exceed AIHWKit's 512-input tile limit, so its head is four tiles of
    512 inputs whose outputs are summed digitally. ``freeze_backbone`` (the authors' default,
    without -FFT) stops the backbone's parameters from training; its BatchNorm statistics still
    follow the data in train mode, as in the authors' code. ``update_mode`` ("moment" |
    "pulse") builds the head with the torch backend (utils.analog_torch, ``rpu_config`` one of
    its configs) instead of AIHWKit."""
    import torchvision

    backbone = getattr(torchvision.models, RESNETS[model])(weights=None)
    num_ftrs = backbone.fc.in_features
    backbone.fc = nn.Identity()
    if state_dict is not None:
        backbone.load_state_dict(_without_fc(state_dict))
    backbone.requires_grad_(not freeze_backbone)
    if update_mode is None:
        from aihwkit.nn import AnalogLinear

        head = AnalogLinear(num_ftrs, classes, bias=True, rpu_config=rpu_config)
    else:
        from utils.analog_torch.nn import AnalogLinear as TorchAnalogLinear

        digital = nn.Linear(num_ftrs, classes)  # the same init as AIHWKit's AnalogLinear
        head = TorchAnalogLinear(num_ftrs, classes, [rpu_config], update_mode=update_mode)
        head.set_weights(digital.weight.detach()[None], digital.bias.detach()[None])
    return AnalogHeadNet(backbone, head)


def _without_fc(state_dict: dict) -> dict:
    return {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
