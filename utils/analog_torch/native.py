"""The torch backend's C++ kernels on a CPU (csrc/kernels.cpp): the IO pass, the pulse-by-pulse
update and the moment-matched update, each in one call. Built on first use by
``torch.utils.cpp_extension`` (needs a C++ compiler; about a minute once, then cached under
``~/.cache/torch_extensions``). A build stopped half-way leaves a ``lock`` file there that would
make the next one wait forever: a lock is waited for while a build could still hold it
(:data:`STALE_LOCK_S`), then reported as stale (delete it) and the kernels are left out.

:func:`kernels` returns the built module, or None (and says why, once) when it cannot be built;
the tiles then run the same model with tensor operations (utils/analog_torch/tile.py). They use
the kernels only for tensors on the CPU and only while :func:`set_native` is on (the training
scripts turn it on unless --no-compile).
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import time
from pathlib import Path

import torch

_STATE: dict[str, object] = {"on": False, "module": None, "tried": False}
SOURCE = Path(__file__).resolve().parent / "csrc" / "kernels.cpp"
STALE_LOCK_S = 600.0  # a build takes about a minute: a lock this old was left by a stopped one


def set_native(on: bool) -> None:
    """Use the C++ kernels for tiles on the CPU (True) or the tensor operations (False)."""
    _STATE["on"] = bool(on)


def kernels_for(*tensors):
    """The kernels for these tensors: when they are on and can be built, and every tensor is a
    float32 tensor on the CPU (what the kernels take); else None (tensor operations)."""
    if not _STATE["on"]:
        return None
    for t in tensors:
        if not t.is_cpu or t.dtype is not torch.float32:
            return None
    return kernels()


def build_flags() -> tuple[str, list[str]]:
    """The extension's name and compiler flags. No floating-point shortcut that changes a result
    (no -ffast-math): errno and trapping are off only so that loops with square roots and
    divisions under a select vectorize. On an x86 CPU with AVX2 (as torch reports it) the loops
    use it; the name says so, so that a cache shared by different machines keeps one build each."""
    flags = ["-O3", "-fno-math-errno", "-fno-trapping-math"]
    if (platform.machine().lower() in ("x86_64", "amd64")
            and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")):
        return "analog_torch_kernels_avx2", [*flags, "-mavx2", "-mfma"]
    return "analog_torch_kernels", flags


def kernels():
    """The built kernels when they are on and can be built, else None."""
    if not _STATE["on"]:
        return None
    if not _STATE["tried"]:
        _STATE["tried"] = True
        try:
            _STATE["module"] = _build()
        except Exception as err:  # noqa: BLE001 - no compiler, no headers: run without them
            print(f"the torch backend's C++ kernels could not be built ({_reason(err)}); running "
                  "with tensor operations", flush=True)
    return _STATE["module"]


def _build():
    # its import warns that no CUDA runtime is found on a machine without one: irrelevant
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils import cpp_extension

    compiler = os.environ.get("CXX", "c++")
    for tool, remedy in (("ninja", "pip install ninja"),
                         (compiler, "install a C++ compiler, e.g. g++, or set CXX")):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} not found: {remedy}")
    name, flags = build_flags()
    _wait_for_lock(Path(cpp_extension._get_build_directory(name, verbose=False)) / "lock")
    return cpp_extension.load(name=name, sources=[str(SOURCE)], extra_cflags=flags, verbose=False)


def _wait_for_lock(lock: Path) -> None:
    """Wait while another build may hold ``lock``; a lock older than STALE_LOCK_S is stale."""
    while lock.exists():
        try:
            age = time.time() - lock.stat().st_mtime
        except FileNotFoundError:
            return  # released just now
        if age > STALE_LOCK_S:
            raise RuntimeError(f"stale build lock {lock}, {age / 60:.0f} min old, left by a "
                               "stopped build: delete it")
        time.sleep(1.0)


def _reason(err: BaseException) -> str:
    """The line of a failed build that says why: a compiler error or a missing tool, not ninja's
    closing "build stopped"."""
    lines = [s.strip() for s in str(err).splitlines() if s.strip()]
    telling = [s for s in lines if "not found" in s or "error:" in s or "No such file" in s]
    return (telling[:1] or lines[-1:] or [type(err).__name__])[0][:300]
