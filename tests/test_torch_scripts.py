"""The scripts with --backend torch (and the AIHWKit-only flags that go with it): S4.1's batched
runs, their folders and resuming, bad backend flags, A12's fine-tuning, S2's tracking against the
dynamic, and the benchmarks' reference row.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from utils.analog_torch import native, presets
from utils.analog_torch import nn as tnn
from utils.backend import TorchBackend
from utils.data.mnist import write_synthetic_mnist
from utils.fidelity import cpp_kernels
from utils.models import build_network

REPO = Path(__file__).resolve().parent.parent
FCN = REPO / "S4.1-mnist-FCN.py"


# --- S4.1 (Figure 5) --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mnist")
    write_synthetic_mnist(root, n_train=300, n_test=200)
    return root


def train(data: Path, out: Path, *flags: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(FCN), "--data-root", str(data), "--out", str(out), "--no-download",
           "--no-compile", *flags]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_batched_script_writes_one_folder_per_run_and_resumes(mnist_root, tmp_path):
    flags = ("--backend", "torch", "--SETTING", "TT-v1", "--tau", "0.7", "0.8", "--seed", "0", "1")
    res = train(mnist_root, tmp_path, *flags, "--epochs", "1")
    assert res.returncode == 0, res.stderr
    assert "4 runs batched" in res.stdout
    for name in ("TT-v1-tau=0.7", "TT-v1-tau=0.8"):
        for seed in (0, 1):
            folder = tmp_path / "runs" / "MNIST-FCN-torch" / name / f"seed{seed}"
            config = json.loads((folder / "config.json").read_text())
            assert config["backend"] == "torch" and config["batched_runs"] == 4
            assert len((folder / "metrics.jsonl").read_text().splitlines()) == 2
    res = train(mnist_root, tmp_path, *flags, "--epochs", "2")
    assert res.returncode == 0, res.stderr
    assert "resuming 4 run(s) after epoch 1" in res.stdout
    # a third seed: the 4 finished runs are skipped, the 2 new ones train as a batch of 2
    res = train(mnist_root, tmp_path, *flags, "2", "--epochs", "2")
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("nothing to do") == 4
    for name in ("TT-v1-tau=0.7", "TT-v1-tau=0.8"):
        config = json.loads((tmp_path / "runs" / "MNIST-FCN-torch" / name / "seed2" /
                             "config.json").read_text())
        assert config["batched_runs"] == 2
    res = subprocess.run([sys.executable, "S4.1-plot-FCN.py", "--runs", str(tmp_path), "--out",
                          str(tmp_path), "--backend", "torch", "--tau", "0.7", "0.8"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "figures" / "fig5_mnist_fcn_torch.png").is_file()


def test_reseeded_aihwkit_run_trains_into_its_own_folder(mnist_root, tmp_path):
    res = train(mnist_root, tmp_path, "--SETTING", "TT-v1", "--tau", "0.7", "--epochs", "1",
                "--train-subset", "100", "--reseed-noise-every", "3")
    assert res.returncode == 0, res.stderr
    folder = tmp_path / "runs" / "MNIST-FCN-reseed3" / "TT-v1-tau=0.7" / "seed0"
    assert json.loads((folder / "config.json").read_text())["reseed_noise_every"] == 3
    assert [json.loads(line)["epoch"] for line in
            (folder / "metrics.jsonl").read_text().splitlines()] == [0, 1]
    assert not (tmp_path / "runs" / "MNIST-FCN").exists()


@pytest.mark.parametrize("flags, message", [
    (["--backend", "torch", "--CUDA", "3"], "--CUDA 3"),
    (["--backend", "jax"], "invalid choice"),
    (["--update-mode", "exact"], "invalid choice"),
    (["--noise-list", "32768"], "--noise-list needs --backend torch"),
    (["--backend", "torch", "--noise-list", "-1"], "must be a whole number >= 0"),
    (["--backend", "torch", "--reseed-noise-every", "5"], "acts on AIHWKit's CPU tiles only"),
])
def test_bad_backend_flags_fail_with_one_line(mnist_root, tmp_path, flags, message):
    res = train(mnist_root, tmp_path, *flags)
    assert res.returncode == 2
    assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


# --- A12 (Table 2) ----------------------------------------------------------------------------

def test_a12_trains_with_the_torch_backend(tmp_path):
    from utils.data.cifar10 import write_synthetic_cifar10

    data = tmp_path / "cifar"
    write_synthetic_cifar10(data, n_train=32, n_test=16)
    cmd = [sys.executable, "A12-resnet-finetune.py", "--data-root", str(data), "--out",
           str(tmp_path), "--weights", "none", "--image-size", "32", "--batch-size", "16",
           "--workers", "0", "--threads", "1", "--no-download", "--backend", "torch",
           "--no-compile", "-opt", "TT-v1", "--epochs", "1"]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    folder = tmp_path / "runs" / "CIFAR10-finetune-torch" / "Resnet18-scratch" / "TT-v1-tau=0.8"
    config = json.loads((folder / "seed0" / "config.json").read_text())
    assert config["backend"] == "torch" and "TransferCompound" in config["rpu_config"]
    assert len((folder / "seed0" / "metrics.jsonl").read_text().splitlines()) == 2


# --- S2 (Figure 3) ----------------------------------------------------------------------------

def test_s2_with_the_torch_backend_tracks_like_aihwkit(tmp_path):
    """Figure 3's pulsed curve by the torch backend: with the variance-matched weight noise the
    plateau sits several times above the dynamic's, with the authors' noise near it, as with
    AIHWKit (results/tables/fig3_tracking_torch.md: ratios 6.8–13.0 and 0.5–1.3 at the full budget).
    The run is seeded (seed 618), so the ratios are fixed numbers here: 1.63 and 8.88. Over 9 seeds
    (0–7 and 618) at this budget they ranged 0.98–1.63 (mean 1.22, std 0.20) and 6.79–8.88 (mean
    7.77, std 0.66), and matched/authors 5.45–7.02 (mean 6.42, std 0.53); each bound below is its
    mean ± 4 std, so another seed or another platform's rounding stays inside with p < 1e-4 per
    bound."""
    cmd = [sys.executable, "S2-dynamic-verification.py", "--backend", "torch", "--tau", "1.5",
           "--steps", "600", "--out", str(tmp_path)]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    row = (tmp_path / "tables" / "fig3_tracking_torch.md").read_text().splitlines()[-1]
    authors, matched = float(row.split("|")[5]), float(row.split("|")[7])
    assert 0.45 < authors < 2.0 and 5.0 < matched < 10.5 and matched > 4.3 * authors, row
    assert (tmp_path / "figures" / "fig3_dynamic_vs_aihwkit_torch.png").is_file()


# --- benchmarks -------------------------------------------------------------------------------

def test_benchmarks_no_analog_work_row_runs_the_step_without_analog_work(monkeypatch):
    """The reference row "torch, no analog work" of benchmarks/bench_backends.py: with its stand-in
    kernels the torch backend's step runs, its layers compute the plain product of the weights
    (scaled, plus the bias) and no tile moves; with the C++ kernels back, the same step moves
    them."""
    import benchmarks.bench_backends as bench

    monkeypatch.setattr(native, "kernels", native.kernels)  # restored after the test
    model = build_network("FCN", [presets.rpu_config("Analog SGD", 0.7)], TorchBackend("moment"), [0])
    opt = tnn.AnalogSGD(model.parameters(), lr=0.5)
    x, y = torch.rand(10, 1, 28, 28), torch.randint(0, 10, (10,))

    def step() -> list[bool]:  # for each tile: whether its weights stayed as they were
        tiles = tnn.analog_tiles(model)
        before = [t.weight.clone() for t in tiles]
        opt.zero_grad()
        tnn.batched_loss(model(x), y, 1).backward()
        opt.step()
        return [torch.equal(b, t.weight) for b, t in zip(before, tiles, strict=True)]
    with cpp_kernels(True):
        try:
            bench.use_kernels("none")
            assert all(step())
            last, h = model[5], torch.rand(10, 128)
            scale = 1.0 if last.out_scaling is None else last.out_scaling[0]
            plain = h @ last.get_weights()[0].T * scale + last.bias[0]
            with torch.no_grad():
                assert torch.allclose(last(h), plain, atol=1e-5)
            bench.use_kernels("cpp")
            assert not any(step())
        finally:
            bench.use_kernels(None)
