"""Hostile input, one case per class (issue: nothing silently wrong, nothing clobbered): non-finite
numbers, an unusable --out, damaged records, divergence, resuming by content, one writer per run
folder, clean shutdown, the kernel build. In-process where a subprocess adds nothing."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import runpy
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from utils import cli

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(p.name for p in ROOT.glob("*.py") if p.name[0] in "SAr")


class _Parsed(Exception):
    """Raised instead of parsing: carries the script's parser out of its main."""


def script_parser(name: str, monkeypatch) -> argparse.ArgumentParser:
    """The argument parser a script builds, caught where it starts parsing."""
    def capture(self, *args, **kwargs):
        raise _Parsed(self)

    monkeypatch.setattr(cli.Parser, "parse_args", capture)
    monkeypatch.setattr(sys, "argv", [name])
    with pytest.raises(_Parsed) as caught:
        runpy.run_path(str(ROOT / name), run_name="__main__")
    return caught.value.args[0]


def value_actions(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from value_actions(sub)
        elif action.option_strings and action.nargs != 0:
            yield action


def one_line_exit_2(capsys, call, *args) -> str:
    with pytest.raises(SystemExit) as exit_:
        call(*args)
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1, err
    return err


# --- non-finite numbers -----------------------------------------------------------------------

@pytest.mark.parametrize("script", SCRIPTS)
def test_no_float_flag_of_any_script_takes_nan_or_inf(script, monkeypatch):
    parser = script_parser(script, monkeypatch)
    floats = [a for a in value_actions(parser) if a.type is float]
    assert not floats, f"{script}: {[a.option_strings for a in floats]} take nan/inf"
    for action in value_actions(parser):
        if action.type in (None, str, Path, cli.out_dir) or action.choices:
            continue
        for text in ("nan", "inf", "-inf"):
            with pytest.raises((argparse.ArgumentTypeError, ValueError)):
                action.type(text)


def test_an_infinite_tau_is_one_line_and_exit_2(capsys, tmp_path):
    from utils.mnist import mnist_main

    err = one_line_exit_2(capsys, mnist_main, None, "FCN", 64,
                          ["--tau", "inf", "--out", str(tmp_path / "o")])
    assert "finite" in err and not (tmp_path / "o").exists()


def test_records_are_strict_json(tmp_path):
    from utils.results import write_json, write_jsonl

    for write in (write_json, lambda p, o: write_jsonl(p, [o])):
        with pytest.raises(ValueError):
            write(tmp_path / "x.json", {"loss": float("inf")})
    assert not list(tmp_path.iterdir())


# --- an unusable --out ------------------------------------------------------------------------

@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_checks_out_while_parsing(script, monkeypatch):
    outs = [a for a in value_actions(script_parser(script, monkeypatch)) if "--out" in a.option_strings]
    assert outs and all(a.type is cli.out_dir for a in outs), script


def test_an_unusable_out_is_refused_in_one_line(capsys, tmp_path):
    from utils.mnist import mnist_main

    a_file = tmp_path / "file"
    a_file.write_text("")
    outs = [a_file, a_file / "below"]
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if not os.access(locked, os.W_OK):  # root may write anywhere
        outs.append(locked / "new")
    for out in outs:  # no data: were --out accepted, the run would stop at the data instead
        err = one_line_exit_2(capsys, mnist_main, None, "FCN", 64,
                              ["--out", str(out), "--no-download", "--data-root", str(tmp_path)])
        assert "--out" in err, err
    assert a_file.read_text() == "" and not list(locked.iterdir())


# --- one writer per run folder ----------------------------------------------------------------

@contextlib.contextmanager
def held(folder: Path):
    """Another process holding ``folder``'s run lock; yields its PID."""
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]);"
                               "from utils.runs import lock_run_folder as l; l(sys.argv[2]);"
                               "print('locked', flush=True); time.sleep(60)", str(ROOT), str(folder)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    """The lock is the kernel's: held by a live process, refused to this one with its PID; gone
    when that process dies. A temporary file left by a killed atomic write is cleaned up."""
    from utils.runs import lock_run_folder

    folder = tmp_path / "run"
    with held(folder) as pid, pytest.raises(cli.UserError, match=f"PID {pid}"):
        lock_run_folder(folder)
    (folder / ".config.json.x1.tmp").write_text("torn")
    lock_run_folder(folder)  # the dead holder left no stale lock
    assert not list(folder.glob("*.tmp"))


def test_training_and_least_squares_take_the_lock(capsys, tmp_path):
    from utils.mnist import mnist_main

    with held(tmp_path / "runs" / "MNIST-FCN" / "FP SGD" / "seed0") as pid:
        err = one_line_exit_2(capsys, mnist_main, None, "FCN", 64,
                              ["--SETTING", "FP SGD", "--epochs", "1", "--train-subset", "64",
                               "--out", str(tmp_path)])
    assert f"PID {pid}" in err
    s32 = runpy.run_path(str(ROOT / "S3.2-ablation-sigma.py"))
    argv = ["--steps", "3", "--sigma2", "0.1", "--out", str(tmp_path)]
    args = s32["parse_args"](argv)
    run = s32["RunFolder"].from_args(args, "S3.2-ablation-sigma",
                                     ignore=s32["pulsed_simulator"](args).ignore)
    with held(run.path) as pid:
        err = one_line_exit_2(capsys, s32["main"], argv)
    assert f"PID {pid}" in err and not run.done


# --- damaged records --------------------------------------------------------------------------

def torn_metrics(folder: Path) -> Path:
    folder.mkdir(parents=True)
    path = folder / "metrics.jsonl"
    path.write_text('{"epoch": 0, "test_acc": 0.1}\n{"epoch": 1, "test_a')
    return path


def test_a_damaged_record_is_one_line_naming_file_line_and_remedy(tmp_path):
    from utils.runs import read_metrics, read_record

    path = torn_metrics(tmp_path / "run")
    with pytest.raises(cli.UserError, match=r"metrics.jsonl, line 2: .*delete the run folder"):
        read_metrics(path, missing_ok=True)  # missing_ok forgives a missing file, not a damaged one
    assert read_metrics(tmp_path / "none.jsonl", missing_ok=True) == []
    assert read_record(tmp_path / "none.json", missing_ok=True) == {}
    for text, line in (('{\n "a": 1,\n', 3), ('{"loss": NaN}', 1), ("[1]", 1)):
        (tmp_path / "config.json").write_text(text)
        with pytest.raises(cli.UserError, match=rf"config.json, line {line}: .*delete"):
            read_record(tmp_path / "config.json")


def test_every_consumer_turns_a_damaged_record_into_one_line(capsys, tmp_path):
    """Resume, the plot and table scripts, the report and least-squares reuse."""
    import torch

    from utils.mnist_report import plot_main
    from utils.reproduce.report import write_report
    from utils.runs import RunFolder

    folder = tmp_path / "runs" / "MNIST-FCN" / "FP SGD" / "seed0"
    torn_metrics(folder)
    (folder / "config.json").write_text("{}")
    torch.save({k: {} for k in ("model_state_dict", "optimizer_state_dict",
                                "scheduler_state_dict")} | {"epoch": 1}, folder / "checkpoint.pt")
    with pytest.raises(cli.UserError, match="metrics.jsonl, line 2"):
        RunFolder(folder, {}).resume()
    with pytest.raises(cli.UserError, match="metrics.jsonl, line 2"):
        write_report(tmp_path, tmp_path / "REPORT.md")
    err = one_line_exit_2(capsys, plot_main, "FCN", None,
                          ["--runs", str(tmp_path), "--out", str(tmp_path / "o")])
    assert "metrics.jsonl, line 2" in err
    s32 = runpy.run_path(str(ROOT / "S3.2-ablation-sigma.py"))
    argv = ["--steps", "3", "--sigma2", "0.1", "--out", str(tmp_path)]
    args = s32["parse_args"](argv)
    run = s32["RunFolder"].from_args(args, "S3.2-ablation-sigma",
                                     ignore=s32["pulsed_simulator"](args).ignore)
    run.path.mkdir(parents=True)
    run.results_path.write_text('{"curves": {')
    assert "curves.json, line 1" in one_line_exit_2(capsys, s32["main"], argv)


# --- divergence is an outcome -----------------------------------------------------------------

class Batches(list):
    batch_size = 8

    def set_epoch(self, epoch: int) -> None:
        pass


def test_a_diverging_run_is_recorded_as_diverged_and_not_trained_again(tmp_path, capsys):
    import torch
    from torch import nn

    from utils.engine import fit
    from utils.mnist_report import load_curve
    from utils.runs import read_metrics, read_record

    gen = torch.Generator().manual_seed(0)
    data = Batches((torch.randn(8, 4, generator=gen), torch.randint(0, 3, (8,), generator=gen))
                   for _ in range(4))
    folder = tmp_path / "runs" / "MNIST-FCN" / "FP SGD" / "seed0"

    def train():
        return fit([folder], lambda _: nn.Sequential(nn.Linear(4, 3), nn.LogSoftmax(1)), [data], data,
                   lr=1e38, epochs=3, seeds=[0], device=torch.device("cpu"), records=[{}],
                   make_optimizer=lambda m: torch.optim.SGD(m.parameters(), lr=1e38))

    train()
    assert "diverged in epoch 1" in capsys.readouterr().out
    rows = read_metrics(folder / "metrics.jsonl")  # strict JSON: no NaN token
    assert [r["epoch"] for r in rows] == [0, 1] and rows[-1]["diverged"]
    assert rows[-1]["test_acc"] is None
    assert read_record(folder / "config.json")["diverged"] == {"epoch": 1}
    train()
    assert "nothing to do" in capsys.readouterr().out
    assert load_curve(tmp_path, "FCN", "FP SGD", None).outcome == "diverged (epoch 1)"


def test_a_diverging_least_squares_curve_stops_and_is_labelled():
    from utils.least_squares import diverged_note, make_problem, run_dynamic

    curve = run_dynamic(make_problem("S1"), lambda ps: __import__("torch").optim.SGD(ps, lr=10.0), 200)
    assert curve["diverged_step"] > 1 and len(curve["loss"]) == curve["diverged_step"]
    assert all(map(math.isfinite, curve["loss"]))
    assert diverged_note(curve) == f" (diverged at step {curve['diverged_step']})"


@pytest.mark.parametrize("mode", ["moment", "pulse"])
def test_a_large_step_keeps_soft_bounds_weights_finite_without_the_kernels(mode):
    """At lr = 100 an FCN's backward gives gradients of ~1e-41 (denormal). The pulse scale
    sqrt(lr/dw_min · x_max/d_max) is then ~1e22, finite, as the C++ kernels compute it (float64);
    in float32 x_max/d_max overflowed to inf and 0·inf made the pulse probabilities, hence the
    weights, NaN with --no-compile (tensor operations)."""
    import torch

    from utils.analog_torch.presets import rpu_config
    from utils.analog_torch.tile import AnalogTile, pulse_probabilities, set_compile

    set_compile(False)
    torch.manual_seed(0)
    x = torch.ones(1, 4, 6)
    d = torch.zeros(1, 4, 3)
    d[0, :, 0] = 3.15e-41
    p, q, bl = pulse_probabilities(x, d, 100.0, torch.full((1, 1, 1), 1e-3), 31)
    assert torch.isfinite(p).all() and torch.isfinite(q).all()
    assert (q[..., 0] > 0).all() and (q[..., 1:] == 0).all()  # 0·(a finite scale) = 0
    tile = AnalogTile(3, 6, [rpu_config("Analog SGD", 0.78)], update_mode=mode)
    tile.set_weights(torch.full((1, 3, 6), 0.3))
    tile.stash(x, d)
    tile.apply_update(100.0)
    weight = tile.weight
    assert torch.isfinite(weight).all()
    assert (weight <= tile.array.max_bound + 1e-6).all() and (weight >= tile.array.min_bound - 1e-6).all()


# --- resume by content ------------------------------------------------------------------------

def test_a_run_resumes_from_the_same_data_elsewhere_and_refuses_other_data(tmp_path):
    from utils.results import write_json
    from utils.runs import RunFolder

    data = {"folder": "data/MNIST/raw", "md5": {"train": "aa"}, "n_train": 60000}
    write_json(tmp_path / "config.json", {"setting": "FP SGD", "data": data})
    moved = {**data, "folder": "/elsewhere/MNIST/raw"}
    RunFolder(tmp_path, {"setting": "FP SGD", "data": moved}).resume()  # same files, another path: resumes
    with pytest.raises(cli.UserError, match="data differs|data:"):
        RunFolder(tmp_path, {"setting": "FP SGD", "data": {**moved, "md5": {"train": "bb"}}}).resume()


# --- clean shutdown of reproduce.py -----------------------------------------------------------

def test_sigterm_stops_the_running_steps_process_groups_and_names_them(tmp_path, capsys):
    import signal
    import threading
    import time

    from utils.reproduce.launch import Interrupted, run_local
    from utils.reproduce.plan import Step

    code = ("import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', "
            "'import time; time.sleep(60)']); print('sp' + 'awned', c.pid, flush=True); time.sleep(60)")
    steps = [Step("S1-SGD-diff-lr", "-c", [code])]
    log = tmp_path / "S1-SGD-diff-lr.log"

    def send_sigterm():
        while "spawned" not in (log.read_text() if log.is_file() else ""):
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=send_sigterm, daemon=True).start()
    with pytest.raises(Interrupted) as stop:
        run_local(steps, tmp_path)
    assert stop.value.steps == ["S1-SGD-diff-lr"] and stop.value.signum == signal.SIGTERM
    assert "FAILED" not in capsys.readouterr().out
    grandchild = int(log.read_text().split("spawned")[1].split()[0])
    time.sleep(0.2)
    stat = Path(f"/proc/{grandchild}/stat")  # no orphan: the step's whole group is gone (or a
    assert not stat.exists() or stat.read_text().split(")")[1].split()[0] == "Z"  # zombie)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is put back


# --- the C++ kernel build ---------------------------------------------------------------------

@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    """native.kernels() as on first use, with its own extension cache."""
    from utils.analog_torch import native

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setitem(native._STATE, "on", True)
    monkeypatch.setitem(native._STATE, "tried", False)
    monkeypatch.setitem(native._STATE, "module", None)
    return native


def test_a_missing_build_tool_is_named(fresh_build, monkeypatch, capsys):
    real = shutil.which
    monkeypatch.setattr(shutil, "which", lambda tool: None if tool == "ninja" else real(tool))
    assert fresh_build.kernels() is None
    assert "ninja not found: pip install ninja" in capsys.readouterr().out


def test_a_stale_build_lock_is_reported_instead_of_waited_for(fresh_build, tmp_path, capsys):
    if shutil.which("ninja") is None or shutil.which(os.environ.get("CXX", "c++")) is None:
        pytest.skip("no build tools here")
    from torch.utils.cpp_extension import _get_build_directory

    lock = Path(_get_build_directory(fresh_build.build_flags()[0], verbose=False)) / "lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.touch()
    hour_ago = time.time() - 3600
    os.utime(lock, (hour_ago, hour_ago))
    assert fresh_build.kernels() is None
    assert f"stale build lock {lock}" in capsys.readouterr().out


def test_a_diverging_run_of_a_batch_stops_alone(tmp_path, capsys):
    """The torch backend's batched loop: run 1 (weights at 1e38) diverges at the first
    evaluation; run 0 trains on to the end."""
    import torch
    from torch import nn

    from utils.engine import fit
    from utils.runs import read_metrics, read_record

    class PerRun(nn.Module):  # R independent linear classifiers
        def __init__(self, scales: list[float]) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.stack([torch.full((3, 4), s) for s in scales]))

        def forward(self, x):
            runs = self.weight.shape[0]
            out = torch.bmm(x.view(runs, -1, 4), self.weight.transpose(1, 2))
            return torch.log_softmax(out.reshape(-1, 3), dim=1)

    gen = torch.Generator().manual_seed(0)
    data = Batches((torch.randn(8, 4, generator=gen), torch.randint(0, 3, (8,), generator=gen))
                   for _ in range(2))
    folders = [tmp_path / f"seed{r}" for r in range(2)]
    metrics = fit(folders, lambda idx: PerRun([[0.01, 1e38][i] for i in idx]), [data, data],
                  data, lr=0.1, epochs=2, seeds=[0, 1], device=torch.device("cpu"),
                  records=[{}, {}], batched=True,
                  make_optimizer=lambda m: torch.optim.SGD(m.parameters(), lr=0.1))
    out = capsys.readouterr().out
    assert "seed1: diverged in epoch 0" in out and "train loss [" in out
    assert [len(m) for m in metrics] == [3, 1] and metrics[1][0]["diverged"]
    assert read_record(folders[1] / "config.json")["diverged"] == {"epoch": 0}
    assert [r["epoch"] for r in read_metrics(folders[0] / "metrics.jsonl")] == [0, 1, 2]
