"""The torch backend's C++ kernels on a CPU (csrc/kernels.cpp): the IO pass, the pulse-by-pulse
update and the moment-matched update, each in one call. Built on first use by
``torch.utils.cpp_extension`` (needs a C++ compiler; about a minute once, then cached under
``~/.cache/torch_extensions``; a build stopped half-way leaves a ``lock`` file there that makes
the next one wait: delete it).

:func:`kernels` returns the built module, or None (and says why, once) when it cannot be built;
the tiles then run the same model with tensor operations (utils/analog_torch/tile.py). They use
the kernels only for tensors on the CPU and only while :func:`set_native` is on (the training
scripts turn it on unless --no-compile).
"""

from __future__ import annotations

import logging
import platform
from pathlib import Path

import torch

_STATE: dict[str, object] = {"on": False, "module": None, "tried": False}
SOURCE = Path(__file__).resolve().parent / "csrc" / "kernels.cpp"


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
            # its import warns that no CUDA runtime is found on a machine without one: irrelevant
            logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
            from torch.utils.cpp_extension import load

            name, flags = build_flags()
            _STATE["module"] = load(name=name, sources=[str(SOURCE)], extra_cflags=flags,
                                    verbose=False)
        except Exception as err:  # noqa: BLE001 - no compiler, no headers: run without them
            said = str(err).strip()
            print(f"the torch backend's C++ kernels could not be built ({type(err).__name__}: "
                  f"{said.splitlines()[-1] if said else ''}); running with tensor operations")
    return _STATE["module"]
