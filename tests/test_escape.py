"""The stuck-probability study (S4.3): its statistics, its records and its scripts' bad input.

The scripts run in-process on a small synthetic MNIST (utils.data.mnist.write_synthetic_mnist).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from utils.data.mnist import write_synthetic_mnist
from utils.escape import escape_epoch, still_at_chance, stuck_main, wilson_interval
from utils.escape_report import load_groups, plot_main, table_row
from utils.paper import ESCAPE_ACC

# Newcombe (1998), Statistics in Medicine 17:857, Table I, method 3 (Wilson score, no correction)
NEWCOMBE = [((81, 263), (0.2553, 0.3662)), ((15, 148), (0.0624, 0.1605)),
            ((0, 20), (0.0, 0.1611)), ((1, 29), (0.0061, 0.1718))]


@pytest.mark.parametrize(("kn", "expected"), NEWCOMBE)
def test_wilson_interval_matches_published_values(kn, expected):
    assert np.allclose(wilson_interval(*kn), expected, atol=5e-5)


def test_wilson_interval_ends_exactly_at_0_and_1():
    assert wilson_interval(0, 12)[0] == 0.0 and wilson_interval(12, 12)[1] == 1.0


def _rows(accs: list[float], probe: bool = False) -> list[dict]:
    return [{"epoch": e, "test_acc": a, **({"probe": {"out_scale_1": 2.0, "out_scale_3": 1.0 + e}}
                                          if probe else {})} for e, a in enumerate(accs)]


def test_a_run_leaves_chance_only_above_the_threshold():
    assert escape_epoch(_rows([0.1, ESCAPE_ACC, 0.1135])) is None  # at the threshold: still stuck
    assert escape_epoch(_rows([0.1, 0.2, ESCAPE_ACC + 0.01, 0.1135])) == 2


def test_fraction_still_at_chance_from_hand_made_runs():
    escapes = [escape_epoch(_rows(a)) for a in (
        [0.1, 0.6, 0.9, 0.95],     # left at epoch 1
        [0.1, 0.11, 0.11, 0.97],   # left at epoch 3
        [0.1, 0.11, 0.11, 0.11],   # stuck
        [0.1, 0.5, 0.5, 0.5])]     # at the threshold throughout: stuck
    assert np.allclose(still_at_chance(escapes, 3), [1.0, 0.75, 0.75, 0.5])


def _write_run(root: Path, experiment: str, tau: float, seed: int, rows: list[dict]) -> None:
    folder = root / "runs" / experiment / f"Analog SGD-tau={tau}" / f"seed{seed}"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"tau": tau, "epochs": len(rows) - 1}))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_table_rows_from_hand_made_records(tmp_path):
    """Three of four torch runs stuck through 80 epochs, one leaves at epoch 30; one AIHWKit run
    of 20 epochs: the torch runs also make a 20-epoch row (all four still stuck there), and the
    paper's outcome is priced at 80 epochs only."""
    stuck, leaves = [0.1] * 81, [0.1] * 30 + [0.9] * 51
    for seed, accs in enumerate((stuck, stuck, stuck, leaves)):
        _write_run(tmp_path, "MNIST-FCN-escape-torch-pulse", 0.7, seed, _rows(accs, probe=True))
    _write_run(tmp_path, "MNIST-FCN", 0.7, 0, _rows([0.1] * 21))  # AIHWKit, the first 20 epochs
    rows = [table_row(g) for g in load_groups(tmp_path)]
    assert [(r["backend"], r["epochs"], r["runs"], r["stuck"]) for r in rows] == [
        ("torch (pulse)", 80, 4, 3), ("torch (pulse)", 20, 4, 4), ("AIHWKit", 20, 1, 1)]
    full = rows[0]
    assert full["stuck_lo"] < 0.75 < full["stuck_hi"]
    assert full["paper_outcome_prob"] == pytest.approx(0.75 ** 3)  # 3 of 3 stuck at 0.7
    assert full["paper_outcome_prob_lo"] == pytest.approx(full["stuck_lo"] ** 3)
    assert full["escape_epoch_median"] == 30 and full["out_scale_stuck"] == 81.0
    assert rows[1]["out_scale_stuck"] == 21.0 and rows[1]["paper_outcome_prob"] is None


def _exit_2(capsys, main, *args) -> str:
    with pytest.raises(SystemExit) as err:
        main(*args)
    assert err.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mnist")
    write_synthetic_mnist(root, n_train=100, n_test=50)
    return root


def _train(mnist_root: Path, out: Path, *flags: str) -> None:
    stuck_main(None, 10, ["--data-root", str(mnist_root), "--no-download", "--out", str(out),
                          "--no-compile", "--epochs", "1", "--train-subset", "20", *flags])


@pytest.mark.parametrize(("flags", "text"), [
    (("--backend", "aihwkit"), "S4.1-mnist-FCN.py"),
    (("--SETTING", "TT-v1"), "invalid choice"),
    (("--tau", "nan"), "--tau"),
    (("--train-subset", "100000"), "exceeds"),
])
def test_study_bad_input_exits_2_and_writes_nothing(flags, text, mnist_root, tmp_path, capsys):
    assert text in _exit_2(capsys, _train, mnist_root, tmp_path / "out", *flags)
    assert not (tmp_path / "out").exists()


def test_plot_bad_input_exits_2_and_writes_nothing(tmp_path, capsys):
    assert "no Analog SGD runs" in _exit_2(capsys, plot_main, None, ["--runs", str(tmp_path),
                                                                     "--out", str(tmp_path / "o")])
    _write_run(tmp_path, "MNIST-FCN", 0.7, 0, _rows([0.1, float("nan")]))
    line = _exit_2(capsys, plot_main, None, ["--runs", str(tmp_path), "--out", str(tmp_path / "o")])
    assert "metrics.jsonl" in line and "NaN is not strict JSON" in line
    assert not (tmp_path / "o").exists()


def test_study_records_the_tiles_per_epoch_and_the_plot_reads_them(mnist_root, tmp_path):
    """2 τ × 2 seeds batched, and the ablation: every epoch's line holds each layer's output
    scale (not in the ablation) and its devices' fill and saturation."""
    _train(mnist_root, tmp_path, "--tau", "0.7", "0.8", "--seed", "0", "1")
    _train(mnist_root, tmp_path, "--tau", "0.7", "--seed", "0", "--no-out-scaling")
    for experiment, runs, scaled in (("MNIST-FCN-escape-torch-pulse", 4, True),
                                     ("MNIST-FCN-escape-no-out-scaling-torch-pulse", 1, False)):
        folders = list((tmp_path / "runs" / experiment).glob("*/seed*"))
        assert len(folders) == runs
        for folder in folders:
            rows = [json.loads(s) for s in (folder / "metrics.jsonl").read_text().splitlines()]
            assert [r["epoch"] for r in rows] == [0, 1]
            for row in rows:
                probe = row["probe"]
                assert {f"fill_{k}" for k in (1, 2, 3)} <= probe.keys()
                assert all(0 <= probe[f"{q}_{k}"] <= 1 for q in ("fill", "sat") for k in (1, 2, 3))
                assert ("out_scale_3" in probe) == scaled
            if scaled:
                assert rows[0]["probe"]["out_scale_3"] == 1.0 != rows[1]["probe"]["out_scale_3"]
    plot_main(None, ["--runs", str(tmp_path), "--out", str(tmp_path)])
    csv = (tmp_path / "tables" / "stuck_probability.csv").read_text().splitlines()
    assert len(csv) == 1 + 3  # τ 0.7 and 0.8, and the ablation
    assert (tmp_path / "figures" / "stuck_probability.png").is_file()
