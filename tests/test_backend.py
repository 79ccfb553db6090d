"""The backend seam (utils/backend.py): the one place that tells AIHWKit from the torch backend.

What it decides for the rest of the code: the run folders' names (a renamed folder would orphan
every committed record and restart runs), what config.json records, the flags each backend refuses."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from utils.backend import AIHWKitBackend, TorchBackend, from_args, make_backend
from utils.cli import UserError

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(("backend", "suffix", "flags", "record"), [
    (make_backend("aihwkit"), "", "", {}),
    (make_backend("aihwkit", reseed_every=5), "-reseed5", " --reseed-noise-every 5",
     {"reseed_noise_every": 5}),
    (make_backend("torch"), "-torch", " --backend torch --update-mode moment",
     {"backend": "torch", "update_mode": "moment"}),
    (make_backend("torch", "pulse"), "-torch-pulse", " --backend torch --update-mode pulse",
     {"backend": "torch", "update_mode": "pulse"}),
    (make_backend("torch", "moment", noise_list=32768), "-torch-list32768",
     " --backend torch --update-mode moment --noise-list 32768",
     {"backend": "torch", "update_mode": "moment", "noise_list": 32768}),
])
def test_run_folder_suffix_flags_and_record(backend, suffix, flags, record):
    assert (backend.suffix, backend.flags, backend.record()) == (suffix, flags, record)


def args(**flags) -> argparse.Namespace:
    base = {"backend": "aihwkit", "update_mode": "moment", "noise_list": 0,
            "reseed_noise_every": 0, "CUDA": -1, "no_compile": False}
    return argparse.Namespace(**{**base, **flags})


def test_flags_choose_the_backend_once_and_refuse_what_it_cannot_do():
    assert isinstance(from_args(args()), AIHWKitBackend)
    chosen = from_args(args(backend="torch", update_mode="pulse", no_compile=True))
    assert isinstance(chosen, TorchBackend) and chosen.batched and chosen.compile is False
    assert from_args(argparse.Namespace(backend="torch", update_mode="moment")).compile is None
    with pytest.raises(UserError, match="--noise-list needs --backend torch"):
        from_args(args(noise_list=8))
    with pytest.raises(UserError, match="--reseed-noise-every acts on AIHWKit's CPU tiles"):
        from_args(args(backend="torch", reseed_noise_every=3))
    with pytest.raises(UserError, match="--reseed-noise-every acts on AIHWKit's CPU tiles"):
        from_args(args(reseed_noise_every=3, CUDA=0))


def test_only_the_seam_tells_the_backends_apart():
    """No module or script but utils/backend.py tests which backend runs (by its name, by a
    setting only one backend has, by a module name or by an attribute). utils/fidelity.py is the
    tests' own support code: like a test, it runs both backends on purpose to compare them."""
    test = re.compile(r"backend ==|backend !=|update_mode is None|__module__|hasattr\(model")
    files = [*REPO.glob("*.py"), *(REPO / "utils").rglob("*.py")]
    found = [f"{p.relative_to(REPO)}:{i}" for p in files
             if p.name not in ("backend.py", "fidelity.py")
             for i, line in enumerate(p.read_text().splitlines(), 1) if test.search(line)]
    assert not found, found
