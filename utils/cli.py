"""Shared command-line flags and their validation.

Bad input ends the program with one line on stderr that says what is wrong and what to do, exit
status 2, before anything is written.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import NoReturn

from utils.paper import MNIST_EPOCHS, MNIST_LR, SETTINGS

DEFAULT_OUT = Path("results")


class UserError(Exception):
    """A problem with the user's input or environment; reported as one line, never a traceback."""


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line (no usage dump), pointing at --help."""

    def error(self, message: str) -> NoReturn:
        fail(f"{message} (see --help)", prog=self.prog)


def one_line(err: BaseException, limit: int | None = None) -> str:
    """An exception's message on one line, cut to ``limit`` characters (its type's name if it has
    none): the detail inside a UserError's one line."""
    return " ".join(str(err).split())[:limit] or type(err).__name__


def fail(message: str, prog: str | None = None) -> NoReturn:
    prog = prog or Path(sys.argv[0]).name
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def make_parser(doc: str | None) -> Parser:
    """A parser whose description is the script's docstring, kept as written."""
    return Parser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def _number(kind: type, text: str) -> float | int:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
    if not math.isfinite(value):  # nan, inf: a run would record them as JSON that readers refuse
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def finite_float(text: str) -> float:
    return _number(float, text)


def fraction(text: str) -> float:
    """A number in [0, 1)."""
    value = _number(float, text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 0 and < 1, got {text}")
    return value


def out_dir(text: str) -> Path:
    """An --out folder that can be written: an existing folder, or one that can be created. Checked
    while the flags are parsed, so an unusable one is refused before any data or computation."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} exists and is not a folder; name a folder")
    parent = path
    while not parent.exists():  # the nearest existing ancestor receives the new folders
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{parent} is not a writable folder; name a folder "
                                         "you can write to")
    return path


def positive_float(text: str) -> float:
    value = _number(float, text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def nonneg_float(text: str) -> float:
    value = _number(float, text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def positive_int(text: str) -> int:
    value = _number(int, text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a whole number > 0, got {text}")
    return value


def nonneg_int(text: str) -> int:
    value = _number(int, text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text}")
    return value


def add_pulse_flags(parser: argparse.ArgumentParser, desired_bl: int,
                    dw_min: float | None = None) -> None:
    """--desired-bl and (when ``dw_min`` is given) --dw-min of the AIHWKit least-squares runs."""
    if dw_min is not None:
        parser.add_argument("--dw-min", type=positive_float, default=dw_min,
                            help="device response step Δw_min (default: %(default)s)")
    parser.add_argument("--desired-bl", type=positive_int, default=desired_bl,
                        help="maximum pulse-train length per update (default: %(default)s)")


def add_output_flags(parser: argparse.ArgumentParser, seed: int, data_seed: int) -> None:
    """--data-seed, --out, --seed and --force, shared by the least-squares scripts."""
    parser.add_argument("--data-seed", type=int, default=data_seed,
                        help="torch seed of A and x* (default: %(default)s)")
    parser.add_argument("--out", type=out_dir, default=DEFAULT_OUT,
                        help="results root: raw runs go to OUT/runs/, figures to OUT/figures/ "
                             "(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=seed,
                        help="torch seed set before each run (default: %(default)s, the authors')")
    parser.add_argument("--force", action="store_true",
                        help="recompute even if a finished run with the same settings exists")


def add_training_flags(parser: argparse.ArgumentParser, *, batch_size: int,
                       epochs: int = MNIST_EPOCHS, lr: float = MNIST_LR,
                       settings: tuple[str, ...] | None = None) -> None:
    """The flags of the MNIST training scripts: the authors' (--SETTING, --tau, --CUDA,
    --save-checkpoint) with their defaults (as in the authors' code), then run and data management.
    ``settings`` narrows --SETTING's choices (default: every setting; the first is the default)."""
    settings = settings or SETTINGS
    parser.add_argument("--SETTING", choices=settings, default=settings[0],
                        help="training algorithm (default: %(default)s)")
    parser.add_argument("--tau", type=positive_float, nargs="+", default=[1.0],
                        help="device bound τ: weights live in [-τ, τ]; ignored by FP SGD "
                             "(default: %(default)s). Several values train several runs")
    parser.add_argument("--CUDA", type=int, default=-1,
                        help="GPU index, or -1 for the CPU (default: %(default)s); a GPU needs "
                             "AIHWKit built with CUDA (aihwkit-gpu from conda-forge) or "
                             "--backend torch")
    parser.add_argument("--save-checkpoint", action="store_true",
                        help="keep the final checkpoint as model.pt in the run folder (Figure 7)")
    parser.add_argument("--seed", type=nonneg_int, nargs="+", default=[0],
                        help="torch seed of the initial weights and of the data order "
                             "(default: %(default)s). Several values train several runs")
    add_backend_flags(parser, f"{BACKEND_HELP}; its runs go to OUT/runs/MNIST-<NET>-torch[-pulse]/, "
                              "all runs of --tau × --seed together")
    parser.add_argument("--noise-list", type=nonneg_int, default=0, metavar="N",
                        help="torch backend only: draw the read noise of each tile from a fixed "
                             "list of N Gaussian numbers, as AIHWKit's CPU simulator does (N = "
                             "32768); its mean then biases every read (docs/aihwkit_cpu_noise.md). "
                             "0: fresh numbers on every read, as AIHWKit on a GPU "
                             "(default: %(default)s). Runs go to MNIST-<NET>-torch-list<N>/")
    parser.add_argument("--reseed-noise-every", type=nonneg_int, default=0, metavar="K",
                        help="AIHWKit on the CPU only: every K training steps give each tile a new "
                             "random generator, so the mean its read noise keeps (docs/"
                             "aihwkit_cpu_noise.md) changes; ≈ 60 ms per reseed of the CNN's "
                             "tiles. 0: never, AIHWKit as it is (default: %(default)s). Runs go to "
                             "MNIST-<NET>-reseed<K>/")
    parser.add_argument("--epochs", type=positive_int, default=epochs,
                        help="training epochs (default: %(default)s); a larger value continues a "
                             "finished run")
    parser.add_argument("--batch-size", type=positive_int, default=batch_size,
                        help="training mini-batch size (default: %(default)s)")
    parser.add_argument("--lr", type=positive_float, default=lr,
                        help="initial learning rate, divided by 10 every 35 epochs "
                             "(default: %(default)s)")
    parser.add_argument("--train-subset", type=positive_int, default=None, metavar="N",
                        help="train on the first N training images only (quick runs)")
    parser.add_argument("--data-root", type=Path, default=Path("data"),
                        help="folder holding (or receiving) the MNIST files (default: %(default)s)")
    parser.add_argument("--no-download", action="store_true",
                        help="use only the files in --data-root; never fetch MNIST")
    parser.add_argument("--out", type=out_dir, default=DEFAULT_OUT,
                        help="results root; the run goes to OUT/runs/ (default: %(default)s)")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="CPU threads of torch (default: %(default)s: run one job per "
                             "core; 2 threads per job on a busy 2-core machine made FCN steps 10x "
                             "slower)")


BACKEND_HELP = ("aihwkit: AIHWKit's tiles (default); torch: the plain-PyTorch simulation of the "
                "same devices and algorithms (utils/analog_torch), on any GPU, several runs "
                "batched into one model")


def add_backend_flags(parser: argparse.ArgumentParser, backend_help: str,
                      compile_flag: bool = True) -> None:
    """--backend, --update-mode and (``compile_flag``) --no-compile; ``backend_help`` says what
    --backend means for the script (where its runs or figures go)."""
    parser.add_argument("--backend", choices=("aihwkit", "torch"), default="aihwkit",
                        help=backend_help)
    parser.add_argument("--update-mode", choices=("moment", "pulse"), default="moment",
                        help="torch backend only: moment = the pulse counts' mean and covariance "
                             "(per device, and between the devices of one row or column) from "
                             "matrix products, on every device (default); pulse = every pulse "
                             "train drawn, exact coincidence counts, only the devices that got a "
                             "pulse touched (on a CPU with the C++ kernels: pulse by pulse, as "
                             "AIHWKit; the faster mode there, see benchmarks/README.md)")
    if compile_flag:
        parser.add_argument("--no-compile", action="store_true",
                            help="torch backend only: run without the C++ kernels of a CPU "
                                 "(IO pass and both modes' updates; built once, about a minute, "
                                 "on first use) and without torch.compile's fused moment update "
                                 "(where the kernels do not run, e.g. a GPU; seconds once per "
                                 "tile shape); both need a C++ compiler")


def torch_device(cuda: int):
    """The torch.device of ``--CUDA``: -1 is the CPU; a GPU index needs a GPU visible to torch
    (what the analog tiles need besides, the backend checks: utils.backend)."""
    import torch

    if cuda == -1:
        return torch.device("cpu")
    if cuda < -1:
        raise UserError(f"--CUDA must be -1 (CPU) or a GPU index >= 0, got {cuda}")
    if not torch.cuda.is_available():
        raise UserError(f"--CUDA {cuda}: torch sees no CUDA GPU here; use --CUDA -1 (CPU)")
    if cuda >= torch.cuda.device_count():
        raise UserError(f"--CUDA {cuda}: only {torch.cuda.device_count()} GPU(s) visible")
    return torch.device(f"cuda:{cuda}")
