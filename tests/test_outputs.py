"""What the scripts write is stable: a redrawn figure is byte-identical."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_script(monkeypatch, script: str, *args: str | Path) -> None:
    monkeypatch.setattr(sys, "argv", [script, *map(str, args)])
    runpy.run_path(str(ROOT / script), run_name="__main__")


def test_redrawing_a_figure_gives_the_same_bytes(monkeypatch, tmp_path):
    """Drawn, then redrawn from the same run record "a day later" (SOURCE_DATE_EPOCH is the clock
    matplotlib stamps into a PDF when it stamps one)."""
    args = ("--backend", "torch", "--steps", "10", "--lr", "0.1", "--out", tmp_path)
    figures = [tmp_path / "figures" / f"fig1_sgd_vs_lr_torch.{ext}" for ext in ("png", "pdf")]
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    run_script(monkeypatch, "S1-SGD-diff-lr.py", *args)
    first = [f.read_bytes() for f in figures]
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700086400")
    run_script(monkeypatch, "S1-SGD-diff-lr.py", *args)
    assert [f.read_bytes() for f in figures] == first

