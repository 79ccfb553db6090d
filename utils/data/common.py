"""What the MNIST and CIFAR-10 loaders share: torchvision's download and the per-epoch seed of a
shuffled loader."""

from __future__ import annotations

import contextlib
import io
import socket
from pathlib import Path

import numpy as np

from utils.cli import one_line


def torchvision_download(dataset: str, root: Path) -> str | None:
    """``torchvision.datasets.<dataset>(root, download=True)``, quietly. Returns None on success,
    else why it failed (one line: the caller tries the next source or names the options)."""
    try:
        import torchvision.datasets

        old = socket.getdefaulttimeout()
        socket.setdefaulttimeout(20)  # torchvision's urllib calls have no timeout of their own
        quiet = io.StringIO()
        try:
            with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
                getattr(torchvision.datasets, dataset)(str(root), download=True)
        finally:
            socket.setdefaulttimeout(old)
    except Exception as err:  # noqa: BLE001 - any failure means: try the next source
        return one_line(err, 200)
    return None


def epoch_seed(seed: int, epoch: int) -> int:
    """The torch seed of epoch ``epoch`` of a run seeded ``seed`` (data order, flips): a run
    resumed at epoch e sees the same batches as an uninterrupted one."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
