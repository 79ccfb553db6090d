"""The torch backend on a CUDA GPU computes what it computes on the CPU.

Skipped where torch sees no GPU (CI has none); benchmarks/gpu_check.sh runs it on a GPU machine.
``ANALOG_TEST_DEVICE=cpu`` runs the same code CPU against CPU, a dry run without a GPU.
The CPU side of every comparison runs the tensor operations (the C++ kernels off), the same code
the GPU runs. Deterministic parts (the noise-free IO pass, floating-point training) must agree to
float rounding; random parts (the pulsed updates, Tiki-Taka's transfer) are compared by the mean
and variance of many independent runs of one update, as the AIHWKit fidelity tests do.

Failure probability of the statistical tests: the means of the two sides are compared by a χ²
test at p = 1e-4 (z = 3.72, one-sided); the variances to 10 %, against a seed-to-seed spread of
the CPU alone of at most 2.1 % in six pairs of 20,000 runs (Tiki-Taka's A and C, both modes).
"""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from utils.analog_torch import native, presets
from utils.analog_torch import nn as tnn
from utils.analog_torch.tile import AnalogTile, _res_step, analog_mvm, set_compile
from utils.backend import TorchBackend
from utils.data.mnist import write_synthetic_mnist
from utils.models import build_network
from utils.runs import read_metrics, read_record

CUDA = torch.device(os.environ.get("ANALOG_TEST_DEVICE", "cuda"))
pytestmark = pytest.mark.skipif(CUDA.type == "cuda" and not torch.cuda.is_available(),
                                reason="needs a CUDA GPU")
REPO = Path(__file__).resolve().parent.parent
VAR_TOLERANCE = 0.10  # relative, on the norm over elements
Z_1E4 = 3.72  # the normal quantile of 1 - 1e-4
TRIALS = 20_000


def rel(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours.double().cpu() - ref.double().cpu()).norm() / ref.double().cpu().norm())


@pytest.fixture(autouse=True)
def tensor_operations():
    """Every test compares against the CPU's tensor operations, uncompiled unless it says so."""
    native.set_native(False)
    set_compile(False)
    yield
    set_compile(False)


def test_io_pass_on_the_gpu_equals_the_cpu_without_noise():
    """Without output noise the IO pass is deterministic: DAC and ADC rounding, noise and bound
    management give the same outputs on both devices; forwards with bound management, backwards
    without. In float64 the two devices' sums differ by ~1e-15, so (almost) every output is equal;
    in float32 the summation order of the GPU's product flips ADC roundings (and with them, near
    the bound, a sample's bound management), so there every output is within one ADC step of its
    sample's scale (bound-management factor up to 16 included)."""
    io = dataclasses.replace(presets.rpu_config("Analog SGD", 0.7).forward, out_noise=0.0)
    g = torch.Generator().manual_seed(5)
    w = (torch.rand(3, 80, 50, generator=g) * 2 - 1) * 0.5
    w[:, 0] = 0.5  # 50 inputs at 1 drive output 0 to 25 > 12: bound management acts
    x = torch.rand(3, 8, 50, generator=g)
    x[:, 0] = 1.0
    d = torch.randn(3, 8, 80, generator=g)
    for dtype in (torch.float64, torch.float32):
        for weight, inputs, bm in ((w, x, True), (w.transpose(-1, -2), d, False)):
            weight, inputs = weight.to(dtype), inputs.to(dtype)
            ref = analog_mvm(weight, inputs, io, bound_management=bm)
            got = analog_mvm(weight.to(CUDA), inputs.to(CUDA), io, bound_management=bm).cpu()
            step = _res_step(io.out_res, io.out_bound) * inputs.abs().amax(-1, keepdim=True) * 16
            assert bool(((got - ref).abs() <= step + 1e-6).all()), dtype
            if dtype == torch.float64:
                assert float(((got - ref).abs() <= 1e-9).double().mean()) > 0.995
    assert float(analog_mvm(w.to(CUDA), x.to(CUDA), io)[:, 0, 0].min()) > 12


def one_update(device: torch.device, setting: str, mode: str, x: torch.Tensor, d: torch.Tensor,
               lr: float) -> list[torch.Tensor]:
    """The change of each of a tile's arrays after one mini-batch, for TRIALS identical runs
    from the same weights (for Tiki-Taka: A and C, after A's update and one transfer)."""
    torch.manual_seed(1)
    config = presets.rpu_config(setting, 0.7)
    tile = AnalogTile(d.shape[1], x.shape[1], [config] * TRIALS, update_mode=mode).to(device)
    g = torch.Generator().manual_seed(2)
    w0 = ((torch.rand(d.shape[1], x.shape[1], generator=g) * 2 - 1) * 0.4).to(device)
    tile.set_weights(w0.expand(TRIALS, -1, -1))
    arrays = [tile.array] if setting == "Analog SGD" else [tile.fast, tile.slow]
    before = [a.weight.clone() for a in arrays]
    tile.stash(x.to(device).expand(TRIALS, -1, -1), d.to(device).expand(TRIALS, -1, -1))
    tile.apply_update(lr)
    return [(a.weight - b).cpu() for a, b in zip(arrays, before, strict=True)]


@pytest.mark.parametrize("setting, mode, compiled", [
    ("Analog SGD", "moment", False), ("Analog SGD", "moment", True), ("Analog SGD", "pulse", False),
    ("TT-v1", "moment", False), ("TT-v1", "pulse", False)])
def test_one_update_on_the_gpu_has_the_cpus_mean_and_variance(setting, mode, compiled):
    """MNIST-like: 4 samples of non-negative inputs (two inputs zero in every sample, so their
    lines are skipped), errors up to ~0.5, lr 0.05. For Tiki-Taka, A's pulsed update and then the
    transfer of column 0 onto C, so both arrays are compared."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 9, generator=g) * (torch.rand(4, 9, generator=g) > 0.3)
    x[:, [2, 6]] = 0
    x[0, 0] = 1.0  # the transferred column's A entries move
    d = torch.randn(4, 6, generator=g) * 0.2
    ref = one_update(torch.device("cpu"), setting, mode, x, d, lr=0.05)
    set_compile(compiled)
    got = one_update(CUDA, setting, mode, x, d, lr=0.05)
    for k, (ours, theirs) in enumerate(zip(got, ref, strict=True)):
        assert float(theirs.abs().mean()) > 0, f"array {k} did not move"
        statistic, dof = mean_difference_chi2(ours, theirs)
        assert statistic < chi2_quantile(dof, Z_1E4), f"array {k}: mean ({statistic:.1f}, {dof})"
        assert rel(ours.var(0), theirs.var(0)) < VAR_TOLERANCE, f"array {k}: variance"


def mean_difference_chi2(a: torch.Tensor, b: torch.Tensor) -> tuple[float, int]:
    """Σ z² over the elements that move, z the difference of the two samples' means over its
    standard error: χ² with that many degrees of freedom when the two distributions are equal."""
    a, b = a.double(), b.double()
    se2 = a.var(0) / a.shape[0] + b.var(0) / b.shape[0]
    moving = se2 > 0
    z2 = (a.mean(0) - b.mean(0))[moving] ** 2 / se2[moving]
    assert bool(((a.mean(0) - b.mean(0))[~moving] == 0).all())
    return float(z2.sum()), int(moving.sum())


def chi2_quantile(dof: int, z: float) -> float:
    """The χ² quantile of ``dof`` degrees of freedom at the normal quantile z (Wilson-Hilferty)."""
    return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3


@pytest.mark.parametrize("network", ["FCN", "CNN"])
def test_floating_point_training_on_the_gpu_equals_the_cpu(network):
    """FP SGD is deterministic: 3 batched runs trained 4 steps end with the same weights on both
    devices (float32 rounding only: TF32 is off)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    config = presets.rpu_config("FP SGD", 1.0)
    build = [config] * 3, TorchBackend(), [0, 1, 2]
    initial = [layer.get_weights() for layer in tnn.analog_layers(build_network(network, *build))]
    g = torch.Generator().manual_seed(0)
    data = [(torch.rand(3 * 8, 1, 28, 28, generator=g), torch.randint(0, 10, (3 * 8,), generator=g))
            for _ in range(4)]
    weights = []
    for device in (torch.device("cpu"), CUDA):
        model = build_network(network, *build).to(device)
        opt = tnn.AnalogSGD(model.parameters(), lr=0.1)
        for x, y in data:
            opt.zero_grad()
            tnn.batched_loss(model(x.to(device)), y.to(device), 3).backward()
            opt.step()
        weights.append([layer.get_weights().cpu() for layer in tnn.analog_layers(model)])
    for cpu, gpu, start in zip(*weights, initial, strict=True):
        torch.testing.assert_close(gpu, cpu, rtol=1e-4, atol=1e-5)
        assert float((cpu - start).abs().max()) > 1e-4  # the weights were trained


@pytest.mark.parametrize("mode", ["moment", "pulse"])
def test_the_fcn_script_trains_on_the_gpu_and_records_it(tmp_path, mode):
    """S4.1 with --backend torch --CUDA 0: two batched Tiki-Taka runs learn on a synthetic MNIST,
    and config.json names the GPU, its driver and the CUDA and torch versions."""
    write_synthetic_mnist(tmp_path / "data", n_train=600, n_test=200)
    cmd = [sys.executable, str(REPO / "S4.1-mnist-FCN.py"), "--backend", "torch",
           "--update-mode", mode, "--CUDA", "0" if CUDA.type == "cuda" else "-1",
           "--SETTING", "TT-v1", "--tau", "0.7",
           "--seed", "0", "1", "--epochs", "2", "--data-root", str(tmp_path / "data"),
           "--no-download", "--out", str(tmp_path / "out")]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    exp = "MNIST-FCN-torch" + ("-pulse" if mode == "pulse" else "")
    for seed in (0, 1):
        folder = tmp_path / "out" / "runs" / exp / "TT-v1-tau=0.7" / f"seed{seed}"
        config = read_record(folder / "config.json")
        if CUDA.type == "cuda":
            assert config["device"] == "cuda:0"
            env = config["environment"]
            assert env["gpu"] == torch.cuda.get_device_name(0)
            assert env["cuda"] == torch.version.cuda and env["gpu_driver"]
        rows = read_metrics(folder / "metrics.jsonl")
        assert [r["epoch"] for r in rows] == [0, 1, 2]
        assert rows[2]["train_loss"] < rows[1]["train_loss"], rows
        assert all(math.isfinite(r["test_loss"]) for r in rows), rows
