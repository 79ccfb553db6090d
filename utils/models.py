"""The networks of the paper, each defined once, digitally, and converted to analog tiles by the
backend that runs it (utils.backend): the MNIST networks of Figure 5 (as in the authors' code), every
weight matrix on analog tiles configured by one RPU config and biases digital.

Both take images of shape (N, 1, 28, 28) and return log-probabilities (train with NLLLoss).
Table 2's ImageNet ResNets with an analog classifier head, and their initial weights, follow them.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from utils.cli import UserError


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
IMAGENET_WEIGHTS = "IMAGENET1K_V1"  # the torchvision weights the authors fine-tune
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


@dataclass(frozen=True)
class BackboneWeights:
    """The initial backbone weights of a fine-tuning run and where they came from."""

    label: str  # "imagenet", "none" (random init) or "custom-<sha256[:8]>"
    state_dict: dict | None = field(default=None, repr=False)
    file: str | None = None
    sha256: str | None = None

    def describe(self) -> dict:
        """What config.json records."""
        return {"weights": self.label, "weights_file": self.file, "weights_sha256": self.sha256}


def imagenet_weights_file(model: str) -> tuple[str, Path]:
    """(download URL, path in torch's hub cache) of torchvision's IMAGENET1K_V1 weights."""
    from torchvision.models import get_model_weights

    url = get_model_weights(RESNETS[model])[IMAGENET_WEIGHTS].url
    return url, Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def _hash_prefix(path: Path) -> str:
    """torchvision names a weights file <arch>-<first 8 hex digits of its SHA-256>.pth."""
    return path.stem.rsplit("-", 1)[-1]


def load_backbone_weights(model: str, weights: str, download: bool = True) -> BackboneWeights:
    """The ``--weights`` of a run: "imagenet" (torchvision's IMAGENET1K_V1 from torch's cache,
    downloaded there first if missing and ``download``), "none" (random init) or the path of a
    torchvision ResNet state dict (a file whose SHA-256 is torchvision's is labelled "imagenet").
    A missing, corrupt or mismatched file is a one-line UserError."""
    options = (f"pass --weights imagenet (torchvision's {IMAGENET_WEIGHTS}, downloaded once into "
               f"torch's cache), --weights PATH (a torchvision {RESNETS[model]} state dict) or "
               "--weights none (random init)")
    if weights == "none":
        return BackboneWeights("none")
    url, cached = imagenet_weights_file(model)
    if weights == "imagenet":
        path = cached
        if not path.is_file():
            why = "--no-download"
            if download:
                print(f"{path.name} is not in torch's cache; downloading it")
                why = f"download failed: {_download(url, path)}"
            if not path.is_file():
                raise UserError(f"ImageNet weights of {model} not in {path.parent} ({why}): copy "
                                f"{path.name} there, or {options}")
    else:
        path = Path(weights)
        if not path.is_file():
            raise UserError(f"--weights {weights}: no such file; {options}")
    data = path.read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    is_imagenet = sha256.startswith(_hash_prefix(cached))
    if weights == "imagenet" and not is_imagenet:
        raise UserError(f"{path}: corrupt (SHA-256 {sha256[:8]}…, expected "
                        f"{_hash_prefix(cached)}…); delete it and rerun")
    try:
        state_dict = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        if isinstance(state_dict, dict) and isinstance(state_dict.get("state_dict"), dict):
            state_dict = state_dict["state_dict"]
        if not isinstance(state_dict, dict) or not all(
                isinstance(v, torch.Tensor) for v in state_dict.values()):
            raise ValueError("not a state dict of tensors")
    except Exception as err:  # noqa: BLE001 - any unreadable file is reported the same way
        why = str(err) if isinstance(err, ValueError) else f"torch.load: {type(err).__name__}"
        raise UserError(f"{path}: unreadable or corrupt weights file ({why}); {options}") from None
    _check_fit(model, state_dict, path)
    label = "imagenet" if is_imagenet else f"custom-{sha256[:8]}"
    return BackboneWeights(label, state_dict, str(path), sha256)


def _download(url: str, path: Path) -> str | None:
    """torch.hub's download (checks the SHA-256 prefix); None on success, else why it failed."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(path), hash_prefix=_hash_prefix(path))
    except Exception as err:  # noqa: BLE001 - reported with the options
        return " ".join(str(err).split())[:200] or type(err).__name__
    finally:
        socket.setdefaulttimeout(old)
    return None


def _check_fit(model: str, state_dict: dict, path: Path) -> None:
    import torchvision

    expected = _without_fc(getattr(torchvision.models, RESNETS[model])(weights=None).state_dict())
    given = _without_fc(state_dict)
    missing = sorted(expected.keys() - given.keys())
    unexpected = sorted(given.keys() - expected.keys())
    shapes = sorted(k for k in expected.keys() & given.keys()
                    if tuple(expected[k].shape) != tuple(given[k].shape))
    if missing or unexpected or shapes:
        what = "; ".join(f"{label}: {', '.join(keys[:3])}{' …' if len(keys) > 3 else ''}"
                         for label, keys in (("missing", missing), ("unexpected", unexpected),
                                             ("other shape", shapes)) if keys)
        raise UserError(f"{path} does not fit torchvision's {RESNETS[model]} ({what}); pass the "
                        f"weights of {model} or --weights none")
