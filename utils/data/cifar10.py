"""CIFAR-10 (Table 2) in its original pickled batches, through the authors' per-image pipeline.

The python version of CIFAR-10 as the authors' torchvision loader reads it: ``cifar-10-batches-py/``
holding five training batches and one test batch, each a pickled dict with "data" (N x 3072 uint8,
the 1024 red, 1024 green, 1024 blue values of one 32x32 image per row) and "labels" (N ints). It is
looked for in ``--data-root`` and otherwise downloaded by torchvision (needs internet).
"""

from __future__ import annotations

import hashlib
import io
import math
import pickle
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from utils.cli import UserError, one_line
from utils.data.common import epoch_seed, torchvision_download
from utils.results import atomic_write_bytes

CLASSES = 10
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST = "test_batch"
CIFAR_META = "batches.meta"
CIFAR_LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                "truck")
CIFAR_SIDE = 32
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the normalisation of the ImageNet-pretrained backbones
IMAGENET_STD = (0.229, 0.224, 0.225)


def cifar10_md5() -> dict[str, str]:
    """MD5 of every official batch file, as torchvision lists them."""
    from torchvision.datasets import CIFAR10 as TorchvisionCIFAR10

    files = TorchvisionCIFAR10.train_list + TorchvisionCIFAR10.test_list
    return {name: md5 for name, md5 in files}


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR batch that is not the official file: only the numpy objects such a batch
    holds may be created, so a foreign pickle cannot run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a CIFAR batch")
        return super().find_class(module, name)


def read_cifar_batch(path: Path, official_md5: str | None = None
                     ) -> tuple[np.ndarray, np.ndarray, str]:
    """(images (N, 32, 32, 3) uint8, labels (N,) int64, MD5 of the file) of one batch file. A file
    with the official MD5 is unpickled as torchvision does; any other one with a restricted
    unpickler. A damaged or foreign file is a UserError naming it."""
    data = path.read_bytes()
    md5 = hashlib.md5(data).hexdigest()
    try:
        if md5 == official_md5:
            entry = pickle.loads(data, encoding="latin1")
        else:
            entry = _BatchUnpickler(io.BytesIO(data), encoding="latin1").load()
        entry = {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}
        flat = np.asarray(entry["data"], dtype=np.uint8)
        labels = np.asarray(entry["labels"], dtype=np.int64)
    except Exception as err:  # noqa: BLE001 - any unreadable batch is reported the same way
        raise UserError(f"{path}: not a CIFAR-10 batch file ({one_line(err, 200)}); delete it "
                        "and rerun") from None
    if flat.ndim != 2 or flat.shape[1] != 3 * CIFAR_SIDE**2 or len(flat) != len(labels):
        raise UserError(f"{path}: {flat.shape} pixel rows do not match {len(labels)} labels of "
                        "32x32 RGB images; delete it and rerun")
    if len(labels) and (labels.min() < 0 or labels.max() >= CLASSES):
        raise UserError(f"{path}: labels outside 0..9")
    images = flat.reshape(-1, 3, CIFAR_SIDE, CIFAR_SIDE).transpose(0, 2, 3, 1)  # as torchvision
    return np.ascontiguousarray(images), labels, md5


@dataclass(frozen=True)
class CIFAR10:
    train_images: np.ndarray  # (50000, 32, 32, 3) uint8, HWC as PIL wants them
    train_labels: np.ndarray  # (50000,) int64
    test_images: np.ndarray
    test_labels: np.ndarray
    folder: Path
    md5: dict[str, str] = field(default_factory=dict)
    official: bool = True

    def describe(self) -> dict:
        """What config.json records about the data."""
        return {"folder": str(self.folder), "official": self.official, "md5": self.md5,
                "n_train": len(self.train_labels), "n_test": len(self.test_labels)}


def find_cifar10(root: Path) -> Path | None:
    """The batch folder: ``root/cifar-10-batches-py`` (torchvision's layout) or ``root`` itself."""
    for folder in (Path(root) / CIFAR_FOLDER, Path(root)):
        if all((folder / name).is_file() for name in (*CIFAR_TRAIN, CIFAR_TEST)):
            return folder
    return None


def read_cifar10(folder: Path) -> CIFAR10:
    """Parse the six batch files of ``folder``; files that are valid but not the official ones (a
    synthetic stand-in) are used with a note, and config.json records it."""
    official_md5 = cifar10_md5()
    parts: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    md5: dict[str, str] = {}
    for name in (*CIFAR_TRAIN, CIFAR_TEST):
        images, labels, md5[name] = read_cifar_batch(folder / name, official_md5[name])
        parts[name] = images, labels
    official = all(md5[k] == official_md5[k] for k in md5)
    if not official:
        print(f"note: the data in {folder} is not the official CIFAR-10 (MD5 differs)")
    return CIFAR10(
        train_images=np.concatenate([parts[k][0] for k in CIFAR_TRAIN]),
        train_labels=np.concatenate([parts[k][1] for k in CIFAR_TRAIN]),
        test_images=parts[CIFAR_TEST][0], test_labels=parts[CIFAR_TEST][1],
        folder=folder, md5=md5, official=official)



def load_cifar10(root: Path, download: bool = True) -> CIFAR10:
    """CIFAR-10 from ``root`` (``root/cifar-10-batches-py`` or ``root`` itself), downloaded there
    by torchvision first if it is missing and ``download``. A missing or damaged dataset is a
    one-line UserError."""
    root = Path(root)
    folder = find_cifar10(root)
    if folder is None and download:
        print(f"CIFAR-10 is not in {root}; fetching it with torchvision")
        why = torchvision_download("CIFAR10", root)
        folder = find_cifar10(root)
        print("  done" if folder is not None else f"  torchvision download failed: {why}")
    if folder is None:
        raise UserError(
            f"CIFAR-10 not found in {root}: put the python version ({CIFAR_FOLDER}/ with "
            f"{', '.join(CIFAR_TRAIN[:1])} … {CIFAR_TRAIN[-1]}, {CIFAR_TEST}) in {root}, or run with "
            "internet access (torchvision download; not with --no-download)")
    return read_cifar10(folder)


def write_synthetic_cifar10(root: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Write a learnable CIFAR-10 stand-in in the original format (the six pickled batch files
    and batches.meta) to ``root/cifar-10-batches-py``, for tests and smoke runs.

    An image of class c is a noisy patch of class c's colour (a random RGB palette), so flips do
    not change its class and even a randomly initialised network separates the classes; class c
    has frequency ∝ 2^-c/2, so the digital bias alone lowers the loss below ln 10."""
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, (CLASSES, 3))
    prior = 0.5 ** (np.arange(CLASSES) / 2)
    folder = Path(root) / CIFAR_FOLDER

    def batch(n: int, label: str) -> bytes:
        labels = rng.choice(CLASSES, n, p=prior / prior.sum())
        noise = rng.normal(0, 40, (n, CIFAR_SIDE, CIFAR_SIDE, 3))
        images = np.clip(palette[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)
        entry = {"batch_label": label, "labels": labels.tolist(),
                 "data": images.transpose(0, 3, 1, 2).reshape(n, -1),
                 "filenames": [f"synthetic_{i}.png" for i in range(n)]}
        return pickle.dumps(entry, protocol=2)

    sizes = [len(part) for part in np.array_split(np.arange(n_train), len(CIFAR_TRAIN))]
    for i, (name, n) in enumerate(zip(CIFAR_TRAIN, sizes, strict=True)):
        atomic_write_bytes(folder / name, batch(n, f"training batch {i + 1} of 5"))
    atomic_write_bytes(folder / CIFAR_TEST, batch(n_test, "testing batch 1 of 1"))
    meta = {"num_cases_per_batch": max(sizes), "label_names": list(CIFAR_LABELS), "num_vis": 3072}
    atomic_write_bytes(folder / CIFAR_META, pickle.dumps(meta, protocol=2))
    return folder


class CifarImages(Dataset):
    """CIFAR-10 images through the authors' per-image pipeline: (training only) horizontal flip
    and vertical flip, each with probability 1/2, then Resize(image_size) (PIL bilinear), ToTensor,
    Normalize(ImageNet mean, std).

    The flips are drawn per epoch by the loader (``with_flips``) instead of inside the workers,
    so they depend only on (seed, epoch) and a resumed run sees the same images."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, image_size: int,
                 flips: Tensor | None = None) -> None:
        from torchvision import transforms

        self.images, self.labels, self.image_size, self.flips = images, labels, image_size, flips
        self.transform = transforms.Compose([
            transforms.Resize(image_size),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])

    def with_flips(self, flips: Tensor | None) -> CifarImages:
        """The same images with per-image (horizontal, vertical) flip decisions, shape (N, 2)."""
        copy = CifarImages.__new__(CifarImages)
        copy.__dict__.update(self.__dict__, flips=flips)
        return copy

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        from PIL import Image

        image = Image.fromarray(self.images[i])
        if self.flips is not None:
            if self.flips[i, 0]:
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            if self.flips[i, 1]:
                image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
        return self.transform(image), int(self.labels[i])


class ImageLoader:
    """Mini-batches of a CifarImages dataset through a torch DataLoader with ``workers`` worker
    processes (the per-image Resize is the costly part), moved to ``device``.

    With ``shuffle`` (training) the order and the flips of epoch e come from a generator seeded
    with (seed, e), whatever the number of workers, so a run resumed at epoch e sees the same
    batches as an uninterrupted one. The last batch may be smaller (drop_last=False, as the
    authors' loader)."""

    def __init__(self, dataset: CifarImages, batch_size: int, shuffle: bool, seed: int = 0,
                 workers: int = 0, device: torch.device | str = "cpu") -> None:
        self.dataset, self.batch_size, self.shuffle, self.seed = dataset, batch_size, shuffle, seed
        self.workers, self.device = workers, torch.device(device)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.dataset) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        dataset, order = self.dataset, None
        if self.shuffle:
            gen = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
            n = len(dataset)
            order = torch.randperm(n, generator=gen).tolist()
            dataset = dataset.with_flips(torch.rand(n, 2, generator=gen) < 0.5)
        loader = DataLoader(
            dataset, batch_size=self.batch_size, sampler=order, shuffle=False,
            num_workers=self.workers, pin_memory=self.device.type == "cuda", drop_last=False)
        for x, y in loader:
            yield (x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True))


def write_cifar10_subset(data: CIFAR10, root: Path, n_train: int, n_test: int) -> Path:
    """Write the first ``n_train`` training and ``n_test`` test images of ``data`` to
    ``root/cifar-10-batches-py`` in the original format (quick end-to-end runs on real images; the
    loader notes that they are not the official files)."""
    folder = Path(root) / CIFAR_FOLDER

    def batch(images: np.ndarray, labels: np.ndarray, label: str) -> bytes:
        entry = {"batch_label": label, "labels": labels.tolist(),
                 "data": images.transpose(0, 3, 1, 2).reshape(len(images), -1)}
        return pickle.dumps(entry, protocol=2)

    train = np.array_split(np.arange(min(n_train, len(data.train_labels))), len(CIFAR_TRAIN))
    for i, (name, idx) in enumerate(zip(CIFAR_TRAIN, train, strict=True)):
        atomic_write_bytes(folder / name, batch(data.train_images[idx], data.train_labels[idx],
                                                f"training batch {i + 1} of 5 (subset)"))
    n_test = min(n_test, len(data.test_labels))
    atomic_write_bytes(folder / CIFAR_TEST, batch(data.test_images[:n_test], data.test_labels[:n_test],
                                                  "testing batch 1 of 1 (subset)"))
    return folder
