"""Shared command-line flags and their validation.

Bad input ends the program with one line on stderr that says what is wrong and what to do, exit
status 2, before anything is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

DEFAULT_OUT = Path("results")


class UserError(Exception):
    """A problem with the user's input or environment; reported as one line, never a traceback."""


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line (no usage dump), pointing at --help."""

    def error(self, message: str) -> NoReturn:
        fail(f"{message} (see --help)", prog=self.prog)


def fail(message: str, prog: str | None = None) -> NoReturn:
    prog = prog or Path(sys.argv[0]).name
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def make_parser(doc: str | None) -> Parser:
    """A parser whose description is the script's docstring, kept as written."""
    return Parser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def _number(kind: type, text: str) -> float | int:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None


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


def add_output_flags(parser: argparse.ArgumentParser, seed: int) -> None:
    """--out, --seed and --force, shared by every experiment script."""
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="results root: raw runs go to OUT/runs/, figures to OUT/figures/ "
                             "(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=seed,
                        help="torch seed set before each run (default: %(default)s, the authors')")
    parser.add_argument("--force", action="store_true",
                        help="recompute even if a finished run with the same settings exists")
