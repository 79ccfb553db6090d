"""The AIHWKit config builders hold exactly the authors' values, and AIHWKit's pulsed update follows
the analog dynamic the paper derives from it."""

from __future__ import annotations

import math

import pytest
import torch
from aihwkit.nn import AnalogLinear
from aihwkit.simulator.configs import FloatingPointRPUConfig, SingleRPUConfig, UnitCellRPUConfig
from aihwkit.simulator.configs.devices import TransferCompound
from aihwkit.simulator.parameters.enums import (
    BoundManagementType,
    NoiseManagementType,
    PulseType,
    WeightNoiseType,
)

from utils.least_squares import make_problem
from utils.rpu_configs import (
    default_io,
    least_squares_config,
    least_squares_io,
    mnist_device,
    rpu_config,
    soft_bounds_device,
)


def test_least_squares_device_is_ideal_and_bounded_by_tau():
    """The least-squares device of the authors' code: every variation zero, bounds ±τ."""
    dev = soft_bounds_device(1.5, 5e-3, subtract_symmetry_point=True)
    assert (dev.w_max, dev.w_min, dev.dw_min) == (1.5, -1.5, 5e-3)
    for field in ("dw_min_dtod", "dw_min_std", "write_noise_std", "corrupt_devices_prob", "up_down",
                  "up_down_dtod", "slope_up_dtod", "slope_down_dtod", "reference_mean",
                  "reference_std", "w_max_dtod", "w_min_dtod", "reset_std", "diffusion", "lifetime"):
        assert getattr(dev, field) == 0.0, field
    assert dev.subtract_symmetry_point is True
    assert dev.mult_noise is False and dev.perfect_bias is False
    assert dev.construction_seed == 10


def test_mnist_device_spells_out_the_aihwkit_0_9_defaults():
    """The authors' MNIST device: dw_min 1e-3, 30 % d2d and c2c, 1 % up/down spread, bounds ±τ."""
    dev = mnist_device(0.78)
    assert (dev.w_max, dev.w_min, dev.dw_min) == (0.78, -0.78, 1e-3)
    assert (dev.dw_min_dtod, dev.dw_min_std, dev.w_max_dtod, dev.w_min_dtod) == (0.3, 0.3, 0.3, 0.3)
    assert (dev.up_down, dev.up_down_dtod, dev.reset_std) == (0.0, 0.01, 0.01)
    assert (dev.reference_mean, dev.reference_std, dev.subtract_symmetry_point) == (0.0, 0.0, False)
    assert dev.construction_seed == 10 and dev.mult_noise is False
    assert mnist_device(0.8, dw_min=0.8 / 600).dw_min == pytest.approx(1.3333e-3, rel=1e-4)


def test_least_squares_io_a_and_b():
    io = least_squares_io(0.02)
    assert (io.is_perfect, io.inp_bound, io.out_bound, io.inp_res, io.out_res) == (False, 10, 10, 0, 0)
    assert (io.inp_noise, io.out_noise, io.ir_drop, io.ir_drop_g_ratio) == (0, 0, 0, 0)
    assert (io.w_noise, io.w_noise_type) == (0.02, WeightNoiseType.ADDITIVE_CONSTANT)
    assert io.noise_management == NoiseManagementType.NONE
    assert io.bound_management == BoundManagementType.NONE
    assert io.v_offset_w_min == 0
    managed = least_squares_io(0.02, managed=True)
    assert (managed.inp_bound, managed.v_offset_w_min) == (1.0, -1.0)
    assert managed.noise_management == NoiseManagementType.ABS_MAX
    assert managed.bound_management == BoundManagementType.ITERATIVE


def test_default_io_is_the_mnist_io():
    io = default_io()
    assert (io.inp_bound, io.out_bound, io.out_noise, io.w_noise) == (1.0, 12.0, 0.06, 0.0)
    assert io.inp_res == pytest.approx(1 / 126) and io.out_res == pytest.approx(1 / 510)
    assert io.noise_management == NoiseManagementType.ABS_MAX
    assert io.bound_management == BoundManagementType.ITERATIVE


def test_least_squares_config_update_settings():
    cfg = least_squares_config(3.0, 1e-4, 0.01 / math.sqrt(40), 800)
    assert isinstance(cfg, SingleRPUConfig)
    assert (cfg.update.desired_bl, cfg.update.sto_round) == (800, True)
    assert cfg.update.pulse_type == PulseType.STOCHASTIC_COMPRESSED
    assert cfg.update.update_bl_management and cfg.update.update_management
    assert cfg.forward.w_noise == cfg.backward.w_noise == pytest.approx(1.5811e-3, rel=1e-4)
    assert cfg.mapping.digital_bias and not cfg.mapping.learn_out_scaling
    assert cfg.mapping.weight_scaling_omega == 0.0


def test_mnist_settings():
    fp = rpu_config("FP SGD", 0.7)
    assert isinstance(fp, FloatingPointRPUConfig)
    sgd = rpu_config("Analog SGD", 0.7)
    assert isinstance(sgd, SingleRPUConfig) and sgd.device.w_max == 0.7
    assert (sgd.update.desired_bl, sgd.update.sto_round) == (31, False)
    assert sgd.mapping.learn_out_scaling is True
    tt = rpu_config("TT-v1", 0.78)
    assert isinstance(tt, UnitCellRPUConfig) and isinstance(tt.device, TransferCompound)
    d = tt.device
    assert (d.fast_lr, d.n_reads_per_transfer, d.transfer_every, d.gamma) == (0.01, 1, 1.0, 0.0)
    assert (d.transfer_lr, d.scale_transfer_lr, d.units_in_mbatch) == (1.0, True, True)
    assert d.transfer_columns is True and d.construction_seed == 123
    assert d.transfer_forward.noise_management == NoiseManagementType.NONE
    assert d.transfer_forward.bound_management == BoundManagementType.NONE
    assert [u.w_max for u in d.unit_cell_devices] == [0.78, 0.78]
    assert d.unit_cell_devices[0] is not d.unit_cell_devices[1]
    assert tt.mapping.learn_out_scaling is True
    with pytest.raises(ValueError, match="unknown setting"):
        rpu_config("TT-v9", 0.7)
    with pytest.raises(ValueError, match="tau"):
        rpu_config("Analog SGD", -0.7)


def test_mean_pulsed_update_matches_the_analog_dynamic():
    """With update noise off, the mean of many single pulsed updates of AIHWKit's soft-bounds device
    is W + Δ − |Δ|⊙W/τ (the ALD, paper eq. 8), Δ = −lr·d xᵀ: within 5 % of |Δ| plus 5 standard
    errors per element; and clearly not the symmetric W + Δ. AIHWKit's pulses are not seeded: with
    24 elements and the mean Gaussian over 3,000 repeats, a false failure needs one element beyond
    5 standard errors, p < 24 · 5.7e-7 ≈ 1.4e-5 (ignoring the 5 % of |Δ|)."""
    torch.manual_seed(0)
    tau, lr, trials = 1.0, 0.05, 3000
    layer = AnalogLinear(6, 4, bias=False, rpu_config=least_squares_config(tau, 1e-3, 0.0, 1000))
    tile = next(layer.analog_tiles())
    w0 = torch.empty(4, 6).uniform_(-0.8, 0.8)
    x, d = torch.empty(1, 6).uniform_(-1, 1), torch.empty(1, 4).uniform_(-1, 1)
    tile.set_learning_rate(lr)
    samples = []
    for _ in range(trials):
        tile.set_weights(w0)
        tile.update(x, d)
        samples.append(tile.get_weights()[0])
    samples = torch.stack(samples)
    mean, stderr = samples.mean(0), samples.std(0) / math.sqrt(trials)
    delta = -lr * d.T @ x
    expected = w0 + delta - delta.abs() * w0 / tau
    assert ((mean - expected).abs() <= 0.05 * delta.abs() + 5 * stderr + 1e-6).all()
    drift = delta.abs() * w0.abs() / tau
    big = drift > 0.01
    assert big.sum() >= 3
    assert ((mean - (w0 + delta)).abs()[big] > 0.5 * drift[big]).all()


def test_variance_matched_weight_noise_gives_the_dynamic_gradient_variance():
    """matched_weight_noise(σ) makes the weight-gradient noise of AIHWKit's noisy forward pass have
    total variance dσ², the variance the Analog SGD dynamic injects (S2 --noise-match variance)."""
    torch.manual_seed(0)
    problem = make_problem("S2")
    sigma = 0.1
    w_noise = problem.matched_weight_noise(sigma)
    layer = AnalogLinear(problem.d, 1, bias=False,
                         rpu_config=least_squares_config(1.0, 1e-3, w_noise, 5000))
    layer.set_weights(problem.x_star.reshape(1, -1))  # at the optimum the clean gradient is 0
    c = problem.loss_factor
    grads = []
    with torch.no_grad():
        for _ in range(400):
            d_out = 2 * c / problem.A.shape[0] * (layer(problem.A) - problem.y)
            grads.append((problem.A.T @ d_out).reshape(-1))
    total_var = torch.stack(grads).var(0).sum().item()
    assert total_var == pytest.approx(problem.d * sigma**2, rel=0.15)
