"""The networks of the paper, each defined once, digitally, and converted to analog tiles by the
backend that runs it (utils.backend): the MNIST networks of Figure 5 (as in the authors' code), every
weight matrix on analog tiles configured by one RPU config and biases digital.

Both take images of shape (N, 1, 28, 28) and return log-probabilities (train with NLLLoss).
Table 2's ImageNet ResNets with an analog classifier head follow them (their initial weights:
utils.weights).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
from torch import nn


def fcn() -> nn.Sequential:
    """FCN 784-256-128-10 with sigmoids (torch's default init), as the authors build it before
    converting it. Layer 1 has 784 > 512 inputs, so both backends split it into two 392-input
    tiles whose outputs are summed digitally (as in the authors' code)."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 256), nn.Sigmoid(),
        nn.Linear(256, 128), nn.Sigmoid(),
        nn.Linear(128, 10), nn.LogSoftmax(dim=1),
    )


def cnn() -> nn.Sequential:
    """LeNet-style CNN; spatial size 28 -> 24 -> 12 -> 8 -> 4. Tiles (out x in): 16x25, 32x400,
    128x512, 10x128; none is split. The Tanh after the second pooling repeats the authors' model
    (a second Tanh in a row). The authors build it from analog modules directly; their weights are
    torch's default init of these layers, drawn in this order, as converting this network gives."""
    return nn.Sequential(
        nn.Conv2d(1, 16, kernel_size=5, stride=1), nn.Tanh(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, kernel_size=5, stride=1), nn.Tanh(),
        nn.MaxPool2d(2), nn.Tanh(), nn.Flatten(),
        nn.Linear(32 * 4 * 4, 128), nn.Tanh(),
        nn.Linear(128, 10), nn.LogSoftmax(dim=1),
    )


NETWORKS = {"FCN": fcn, "CNN": cnn}
"""The digital networks of Figure 5, by the name of their experiment (S4.1: FCN, S4.2: CNN)."""


def build_network(network: str, configs: Sequence, backend, seeds: Sequence[int] | None = None
                  ) -> nn.Module:
    """The analog ``network`` ("FCN" | "CNN") for R = len(configs) runs on ``backend`` (a
    utils.backend.Backend), run r on ``configs[r]``: built digitally and converted. Run r's initial
    weights are torch's default init after ``torch.manual_seed(seeds[r])`` (None: from the RNG's
    current state, one run)."""
    make = NETWORKS[network]
    if seeds is None:
        digitals = [make() for _ in configs]
    else:
        digitals = [_seeded(make, seed) for seed in seeds]
    return backend.convert(digitals, configs)


def _seeded(make: Callable[[], nn.Sequential], seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return make()


# --- ResNets with an analog classifier (Table 2) --------------------------------------------------

RESNETS = {"Resnet18": "resnet18", "Resnet34": "resnet34", "Resnet50": "resnet50"}
"""The authors' --model names and the torchvision builders they stand for."""
CIFAR_CLASSES = 10
HeadParameters = Callable[[nn.Module, str], list[tuple[str, nn.Parameter]]]


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
                 autocast_dtype: torch.dtype | None = None, channels_last: bool = False,
                 head_parameters: HeadParameters | None = None) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head
        self.autocast_dtype, self.channels_last = autocast_dtype, channels_last
        self._head_parameters = head_parameters or (lambda h, prefix: list(h.named_parameters(prefix)))

    def aihwkit_parameter_order(self) -> list[tuple[str, nn.Parameter]]:
        """The named parameters in the order of the same net with AIHWKit's head (the backbone's,
        then the head's as AIHWKit's AnalogLinear lists them), for rules that depend on the
        position of a parameter (the authors' learning-rate groups of Table 2)."""
        backbone = [(n, p) for n, p in self.named_parameters() if not n.startswith("head.")]
        return backbone + self._head_parameters(self.head, "head")

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


def build_resnet(model: str, rpu_config, backend, *, state_dict: dict | None = None,
                 freeze_backbone: bool = False, classes: int = CIFAR_CLASSES) -> AnalogHeadNet:
    """torchvision's ResNet ``model`` ("Resnet18" | "Resnet34" | "Resnet50") with ``state_dict``
    loaded into its backbone (None: torch's random init) and ``fc`` replaced by ``backend``'s
    analog linear layer (num_ftrs -> classes, ``rpu_config``) with a digital bias (as in the
    authors' code). ResNet-50's 2048 features exceed AIHWKit's 512-input tile limit, so its head is
    four tiles of 512 inputs whose outputs are summed digitally. ``freeze_backbone`` (the authors'
    default, without -FFT) stops the backbone's parameters from training; its BatchNorm statistics
    still follow the data in train mode, as in the authors' code."""
    import torchvision

    backbone = getattr(torchvision.models, RESNETS[model])(weights=None)
    num_ftrs = backbone.fc.in_features
    backbone.fc = nn.Identity()
    if state_dict is not None:
        backbone.load_state_dict(_without_fc(state_dict))
    backbone.requires_grad_(not freeze_backbone)
    return AnalogHeadNet(backbone, backend.linear(num_ftrs, classes, rpu_config),
                         head_parameters=backend.head_parameters)


def _without_fc(state_dict: dict) -> dict:
    return {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
