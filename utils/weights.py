"""The initial backbone weights of Table 2's fine-tuning: torchvision's ImageNet weights (from
torch's cache, downloaded there once), a random init, or a state dict the user gives, each checked
(SHA-256, fit to the ResNet) and labelled for config.json."""

from __future__ import annotations

import hashlib
import io
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch

from utils.cli import UserError, one_line
from utils.models import RESNETS, _without_fc

IMAGENET_WEIGHTS = "IMAGENET1K_V1"  # the torchvision weights the authors fine-tune


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
        return one_line(err, 200)
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
