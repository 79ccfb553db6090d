"""The install works wherever its stack runs: requirements.txt asks for AIHWKit exactly where its
wheel exists, and without AIHWKit the torch backend runs while the default backend says, in one
line, what is missing and what to do."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

from utils.data.mnist import write_synthetic_mnist

ROOT = Path(__file__).resolve().parent.parent

# (sys_platform, platform_system, platform_machine, python_version) -> is there an AIHWKit 1.1.0
# wheel on PyPI? Its wheels: cp310, cp311, cp312, manylinux x86_64 only (an sdist elsewhere).
PLATFORMS = {
    ("linux", "Linux", "x86_64", "3.10"): True,
    ("linux", "Linux", "x86_64", "3.11"): True,
    ("linux", "Linux", "x86_64", "3.12"): True,
    ("linux", "Linux", "x86_64", "3.13"): False,
    ("linux", "Linux", "aarch64", "3.11"): False,
    ("darwin", "Darwin", "arm64", "3.11"): False,
    ("darwin", "Darwin", "arm64", "3.12"): False,
    ("win32", "Windows", "AMD64", "3.11"): False,
    ("win32", "Windows", "AMD64", "3.12"): False,
}


def requirements() -> list[Requirement]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize("platform", list(PLATFORMS), ids="-".join)
def test_aihwkit_is_required_exactly_where_its_wheel_exists(platform):
    sys_platform, system, machine, python = platform
    env = {**default_environment(), "sys_platform": sys_platform, "platform_system": system,
           "platform_machine": machine, "python_version": python,
           "python_full_version": f"{python}.0", "os_name": "nt" if system == "Windows" else "posix"}
    wanted = {r.name: r for r in requirements() if r.marker is None or r.marker.evaluate(env)}
    assert ("aihwkit" in wanted) == PLATFORMS[platform]
    # everything else (the torch backend's stack, ninja for its kernels) is wanted everywhere
    assert {"torch", "torchvision", "ninja", "numpy", "matplotlib", "tensorboard"} <= set(wanted)
    if "aihwkit" in wanted:
        assert str(wanted["aihwkit"].specifier) == "==1.1.0"


@pytest.fixture
def without_aihwkit(monkeypatch):
    """AIHWKit unimportable in this process, as on a torch-only install: every later import of it
    (or of utils.rpu_configs, which imports it) fails; the modules come back after the test."""
    import utils

    for name in list(sys.modules):
        if name.startswith("aihwkit.") or name == "utils.rpu_configs":
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "aihwkit", None)
    monkeypatch.delattr(utils, "rpu_configs", raising=False)


def run_script(monkeypatch, script: str, *args: str | Path) -> None:
    monkeypatch.setattr(sys, "argv", [script, *map(str, args)])
    runpy.run_path(str(ROOT / script), run_name="__main__")


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mnist")
    write_synthetic_mnist(root, n_train=40, n_test=20)
    return root


def test_torch_backend_runs_without_aihwkit(without_aihwkit, monkeypatch, tmp_path, mnist_root):
    run_script(monkeypatch, "S1-SGD-diff-lr.py", "--backend", "torch", "--steps", "10", "--lr",
               "0.1", "--out", tmp_path)
    assert (tmp_path / "figures" / "fig1_sgd_vs_lr_torch.png").stat().st_size > 1000
    run_script(monkeypatch, "S4.1-mnist-FCN.py", "--backend", "torch", "--no-compile",
               "--SETTING", "TT-v1", "--train-subset", "20", "--epochs", "1", "--data-root",
               mnist_root, "--no-download", "--out", tmp_path)
    (metrics,) = (tmp_path / "runs" / "MNIST-FCN-torch").glob("*/seed0/metrics.jsonl")
    assert len(metrics.read_text().splitlines()) == 2  # epoch 0 and epoch 1
    assert "aihwkit" not in sys.modules or sys.modules["aihwkit"] is None


@pytest.mark.parametrize("script, args", [
    ("S1-SGD-diff-lr.py", ["--steps", "10"]),
    ("S4.1-mnist-FCN.py", ["--train-subset", "20", "--epochs", "1", "--no-download"]),
])
def test_default_backend_without_aihwkit_says_what_to_do(without_aihwkit, monkeypatch, capsys,
                                                         tmp_path, mnist_root, script, args):
    data = ["--data-root", mnist_root] if script.startswith("S4") else []
    with pytest.raises(SystemExit) as exit_:
        run_script(monkeypatch, script, *args, *data, "--out", tmp_path)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    for text in ("AIHWKit", "Linux x86_64", "Python 3.10-3.12", "aihwkit-gpu", "--backend torch"):
        assert text in err
    assert not any(tmp_path.iterdir())  # nothing written


def test_conda_route_pins_the_same_aihwkit_and_builds_the_kernels():
    lines = (ROOT / "environment.yml").read_text().splitlines()
    conda = {line.strip()[2:].split("=")[0]: line.strip()[2:] for line in lines
             if line.strip().startswith("- ")}
    (pip_aihwkit,) = [r for r in requirements() if r.name == "aihwkit"]
    assert conda["aihwkit-gpu"] == "aihwkit-gpu=" + str(pip_aihwkit.specifier).removeprefix("==")
    assert conda["pytorch"] == "pytorch=*=cuda*"
    assert {"ninja", "cxx-compiler"} <= set(conda)
    # every other pip requirement has its conda package (torch is "pytorch" on conda-forge)
    names = {"torch": "pytorch", "aihwkit": "aihwkit-gpu"}
    assert {names.get(r.name, r.name) for r in requirements()} <= set(conda)
