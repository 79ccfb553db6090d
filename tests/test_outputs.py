"""What the scripts write is stable and complete: a redrawn figure is byte-identical, and the
TensorBoard events of a run hold every number of its metrics.jsonl."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest

from utils.data.mnist import write_synthetic_mnist
from utils.runs import TENSORBOARD_TAGS

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


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mnist")
    write_synthetic_mnist(root, n_train=40, n_test=20)
    return root


@pytest.mark.parametrize("backend", ["aihwkit", "torch"])
def test_tensorboard_events_hold_every_number_of_metrics_jsonl(backend, monkeypatch, tmp_path,
                                                               mnist_root):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_script(monkeypatch, "S4.1-mnist-FCN.py", "--backend", backend, "--no-compile",
               "--SETTING", "TT-v1", "--train-subset", "20", "--epochs", "2", "--data-root",
               mnist_root, "--no-download", "--out", tmp_path)
    (folder,) = (tmp_path / "runs").glob("*/*/seed0")
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(folder))
    events.Reload()
    logged = {tag: {e.step: e.value for e in events.Scalars(tag)}
              for tag in events.Tags()["scalars"]}
    expected: dict[str, dict[int, float]] = {}
    for row in rows:
        for key, value in row.items():
            if key != "epoch" and value is not None:
                expected.setdefault(TENSORBOARD_TAGS[key], {})[row["epoch"]] = value
    assert set(expected) == set(TENSORBOARD_TAGS.values())  # every field of the record, named
    assert logged.keys() == expected.keys()
    for tag, values in expected.items():
        assert logged[tag] == pytest.approx(values, rel=1e-6), tag
