"""Each least-squares script runs end to end on a tiny budget, rejects bad input cleanly, and takes
its defaults and its run folder from the registry of the paper (utils/paper.py)."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from utils.paper import DATA_SEED, LEAST_SQUARES, RUN_SEED
from utils.reproduce.plan import least_squares_result, setting_flags
from utils.runs import read_record

ROOT = Path(__file__).resolve().parent.parent

TINY = {
    "S1-SGD-diff-lr.py": (["--steps", "20", "--lr", "0.1", "0.05"], "fig1_sgd_vs_lr"),
    "S2-dynamic-verification.py": (["--steps", "20", "--tau", "1", "2"], "fig3_dynamic_vs_aihwkit"),
    "S3.1-ablation-tau.py": (["--steps", "20", "--tau", "2", "10"], "fig4a_ablation_tau"),
    "S3.2-ablation-sigma.py": (["--steps", "20", "--sigma2", "0.01", "1"], "fig4b_ablation_sigma"),
    "S3.3-ablation-init.py": (["--steps", "10", "--init-constant", "100", "0.01", "--warm-start", "5"],
                              "fig4c_ablation_init"),
}


def run(script: str, *args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def read_losses(run_dir: Path) -> dict[str, list[float]]:
    """The loss curves of a run folder, checked: every value finite and positive, and the run
    learns (its best curve ends below 0.8 of where it started; on the tiny budgets the ratio is
    0.01-0.7)."""
    curves = read_record(run_dir / "curves.json")
    losses = {name: c["loss"] for name, c in curves.get("curves", curves).items()}
    assert losses
    for name, loss in losses.items():
        assert all(math.isfinite(v) and v > 0 for v in loss), (run_dir, name)
    assert min(loss[-1] / loss[0] for loss in losses.values()) < 0.8, run_dir
    return losses


@pytest.mark.parametrize("script", list(TINY))
def test_script_writes_raw_results_and_figure(script, tmp_path):
    args, figure = TINY[script]
    proc = run(script, *args, "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr
    for ext in ("png", "pdf"):
        assert (tmp_path / "figures" / f"{figure}.{ext}").stat().st_size > 1000
    (run_dir,) = (tmp_path / "runs").glob("*/*")
    config = read_record(run_dir / "config.json")
    assert config["config"]["steps"] == int(args[1])
    assert config["environment"]["aihwkit"] or script.startswith("S3.1")
    losses = read_losses(run_dir).values()
    assert all(len(loss) == int(args[1]) + 1 for loss in losses)
    # the same command again reuses the finished run instead of recomputing it
    again = run(script, *args, "--out", tmp_path)
    assert again.returncode == 0 and "reusing the finished run" in again.stdout


@pytest.mark.parametrize("script", [s for s in TINY if s != "S3.1-ablation-tau.py"])
def test_pulsed_curves_by_the_torch_backend(script, tmp_path):
    """--backend torch: the same curves by utils/analog_torch, into figures named *_torch and a
    run folder of their own (the AIHWKit run is not reused)."""
    args, figure = TINY[script]
    assert run(script, *args, "--out", tmp_path).returncode == 0
    proc = run(script, *args, "--out", tmp_path, "--backend", "torch")
    assert proc.returncode == 0, proc.stderr
    assert "reusing" not in proc.stdout
    assert (tmp_path / "figures" / f"{figure}_torch.png").stat().st_size > 1000
    configs = {p.parent: read_record(p)["config"]
               for p in (tmp_path / "runs").glob("*/*/config.json")}
    assert sorted(c.get("backend", "aihwkit") for c in configs.values()) == ["aihwkit", "torch"]
    for run_dir in configs:
        read_losses(run_dir)


BAD = [
    ("S1-SGD-diff-lr.py", ["--tau", "0"], "must be > 0"),
    ("S1-SGD-diff-lr.py", ["--tau", "-3"], "must be > 0"),
    ("S1-SGD-diff-lr.py", ["--lr", "-0.1"], "must be > 0"),
    ("S1-SGD-diff-lr.py", ["--lr"], "expected at least one argument"),
    ("S1-SGD-diff-lr.py", ["--sigma", "-1"], "must be >= 0"),
    ("S2-dynamic-verification.py", ["--tau", "1", "-2"], "must be > 0"),
    ("S2-dynamic-verification.py", ["--tau"], "expected at least one argument"),
    ("S2-dynamic-verification.py", ["--noise-match", "exact"], "invalid choice"),
    ("S3.1-ablation-tau.py", ["--sigma", "-0.1"], "must be > 0"),
    ("S3.1-ablation-tau.py", ["--steps", "0"], "must be a whole number > 0"),
    ("S3.2-ablation-sigma.py", ["--sigma2", "-1"], "must be >= 0"),
    ("S3.2-ablation-sigma.py", ["--sigma2"], "expected at least one argument"),
    ("S3.3-ablation-init.py", ["--tau", "abc"], "is not a float"),
    ("S3.3-ablation-init.py", ["--unknown-flag"], "unrecognized arguments"),
]


@pytest.mark.parametrize("script,args,message", BAD)
def test_bad_input_is_one_clear_line_and_writes_nothing(script, args, message, tmp_path):
    out = tmp_path / "out"
    proc = run(script, *args, "--out", out)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "error" in lines[0], proc.stderr
    assert not out.exists()


# --- the registry of the paper -------------------------------------------------------------------

class _Opened(Exception):
    pass


def _script(stem: str):
    spec = importlib.util.spec_from_file_location(f"script_{stem.replace('.', '_')}", ROOT / f"{stem}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _opened_result(module, argv: list[str], monkeypatch) -> Path:
    """The result file the script's own main opens for ``argv`` (stopped there: nothing runs)."""
    class Probe(module.RunFolder):
        def run_or_load(self, compute, force=False):
            raise _Opened(self.results_path)

    monkeypatch.setattr(module, "RunFolder", Probe)
    threads = torch.get_num_threads()  # main sets 1 thread for the process
    try:
        module.main(argv)
    except _Opened as opened:
        return opened.args[0]
    finally:
        torch.set_num_threads(threads)
    raise AssertionError(f"{module.__name__}.main opened no run folder")


@pytest.mark.parametrize("stem", list(LEAST_SQUARES))
def test_script_defaults_and_run_folder_are_the_registry_s(stem, tmp_path, monkeypatch):
    """What the reproduction plan expects a script to write (utils.reproduce.plan, from the
    registry) is where the script writes, at the paper's settings and with a changed budget."""
    module, entry = _script(stem), LEAST_SQUARES[stem]
    defaults = vars(module.parse_args([]))
    assert {k: defaults[k] for k in entry.settings} == {
        k: list(v) if isinstance(v, tuple) else v for k, v in entry.settings.items()}
    assert (defaults["data_seed"], defaults["seed"], module.FIGURE) == (DATA_SEED, RUN_SEED,
                                                                        entry.figure)
    for changes in ({}, {"steps": 7}):
        argv = [*setting_flags(changes), "--out", str(tmp_path)]
        assert _opened_result(module, argv, monkeypatch) == least_squares_result(tmp_path, stem,
                                                                                  changes)
