"""The torch backend (utils/analog_torch) against AIHWKit, the reference.

Fidelity: one update of a tile with AIHWKit's device parameters copied in, repeated many times
from the same weights, gives per-element mean and variance within 5 % of AIHWKit's (Analog SGD,
both update modes; one Tiki-Taka transfer); the forward and backward passes give the same output
mean and variance; short seeded training runs on a learnable stand-in learn as AIHWKit's do. Then the
mechanics: configs equal to utils.rpu_configs', batching, state slicing, the scripts' --backend torch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from utils import rpu_configs
from utils.analog_torch import native, presets
from utils.analog_torch import nn as tnn
from utils.analog_torch.config import from_aihwkit
from utils.analog_torch.tile import AnalogTile, SoftBoundsArray, set_compile
from utils.backend import AIHWKIT, TorchBackend
from utils.data import write_synthetic_mnist
from utils.models import build_network

REPO = Path(__file__).resolve().parent.parent
FCN = REPO / "S4.1-mnist-FCN.py"
TOLERANCE = 0.05  # relative, on the norm over elements


def rel(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours - ref).norm() / ref.norm())


def aihwkit_layer(config, in_size: int, out_size: int):
    from aihwkit.nn import AnalogLinear

    layer = AnalogLinear(in_size, out_size, bias=False, rpu_config=config)
    return layer, next(layer.analog_tiles())


def copy_devices(hidden: dict, array: SoftBoundsArray, suffix: str = "") -> None:
    """AIHWKit's per-device step sizes and bounds into a torch-backend array (all R runs)."""
    for ours, theirs in (("scale_up", "dwmin_up"), ("scale_down", "dwmin_down"),
                         ("max_bound", "max_bound"), ("min_bound", "min_bound")):
        getattr(array, ours).copy_(hidden[theirs + suffix].expand_as(getattr(array, ours)))


@contextlib.contextmanager
def cpp_kernels(on: bool):
    """The block runs with the C++ kernels on (skipped where they cannot be built) or off."""
    native.set_native(on)
    try:
        if on and native.kernels() is None:
            pytest.skip("the C++ kernels cannot be built here (no C++ compiler)")
        yield
    finally:
        native.set_native(False)


UPDATE_MODES_TESTED = ("moment", "pulse")

# the torch backend's update variants: (update mode, C++ kernels)
VARIANTS = {"moment": ("moment", False), "moment-cpp": ("moment", True), "pulse": ("pulse", False),
            "pulse-cpp": ("pulse", True)}


def analog_sgd_config(tau: float = 0.7):
    config = rpu_configs.rpu_config("Analog SGD", tau)
    config.mapping.learn_out_scaling = False
    return config


# --- settings -----------------------------------------------------------------------------------

@pytest.mark.parametrize("setting", presets.SETTINGS)
@pytest.mark.parametrize("tau", [0.7, 0.78])
def test_presets_equal_converted_aihwkit_configs(setting, tau):
    assert from_aihwkit(rpu_configs.rpu_config(setting, tau)) == presets.rpu_config(setting, tau)


@pytest.mark.parametrize("managed", [False, True])
def test_least_squares_presets_equal_converted_aihwkit_configs(managed):
    theirs = rpu_configs.least_squares_config(1.0, 1e-3, 0.05, 5000, managed_io=managed)
    assert from_aihwkit(theirs) == presets.least_squares_config(1.0, 1e-3, 0.05, 5000,
                                                                managed_io=managed)


@pytest.mark.parametrize("field, value", [("ir_drop", 0.1), ("out_nonlinearity", 0.2)])
def test_unsimulated_aihwkit_settings_are_refused(field, value):
    config = rpu_configs.rpu_config("Analog SGD", 0.7)
    setattr(config.forward, field, value)
    with pytest.raises(ValueError, match=field):
        from_aihwkit(config)


def test_device_spread_matches_aihwkits_statistics():
    """Step sizes and bounds drawn with AIHWKit's spreads (30 % d2d, 1 % up/down). Both draws are
    seeded (20 repeats in one process gave the same numbers): means within 0.2 % and stds within
    0.6 %, well inside the bounds; 20,000 devices' sampling error alone would be 0.3 % (mean) and
    0.7 % (std), so the bounds hold a seed change at ≥ 6 standard errors (p < 1e-9)."""
    _, tile = aihwkit_layer(analog_sgd_config(0.7), 200, 100)
    theirs = tile.get_hidden_parameters()
    ours = SoftBoundsArray([presets.mnist_device(0.7)], 100, 200)
    for name, key in (("scale_up", "dwmin_up"), ("max_bound", "max_bound"),
                      ("min_bound", "min_bound")):
        a, b = getattr(ours, name)[0], theirs[key]
        assert abs(float(a.mean() / b.mean()) - 1) < 0.02, name
        assert abs(float(a.std() / b.std()) - 1) < 0.05, name


# --- one update, many times ---------------------------------------------------------------------

def repeated_update(variants: list[str], trials: int, x: torch.Tensor, d: torch.Tensor,
                    lr: float):
    """ΔW of ``trials`` independent updates from the same weights: AIHWKit's, and ours in each
    of ``variants`` (keys of VARIANTS)."""
    torch.manual_seed(1)
    out_size, in_size = d.shape[1], x.shape[1]
    config = analog_sgd_config()
    _, tile = aihwkit_layer(config, in_size, out_size)
    hidden = tile.get_hidden_parameters()
    w0 = ((torch.rand(out_size, in_size) * 2 - 1) * 0.5).clamp(hidden["min_bound"],
                                                                hidden["max_bound"])
    tile.set_learning_rate(lr)
    theirs = []
    for _ in range(trials):
        tile.set_weights(w0)
        tile.tile.update(x, d, False)
        theirs.append(tile.tile.get_weights() - w0)
    ours = []
    for variant in variants:
        mode, cpp = VARIANTS[variant]
        with cpp_kernels(cpp):
            ours_tile = AnalogTile(out_size, in_size, [from_aihwkit(config)] * trials,
                                   update_mode=mode)
            copy_devices(hidden, ours_tile.array)
            ours_tile.set_weights(w0.expand(trials, -1, -1))
            ours_tile.stash(x.expand(trials, -1, -1), d.expand(trials, -1, -1))
            ours_tile.apply_update(lr)
        ours.append(ours_tile.weight - w0)
    return torch.stack(theirs), ours


@pytest.mark.parametrize("variants", [["moment", "moment-cpp"], ["pulse", "pulse-cpp"]])
def test_update_mean_and_variance_match_aihwkit(variants):
    """MNIST-like: 4 samples of non-negative inputs (some zero, and two inputs zero in every
    sample, so the update skips their lines), errors up to ~0.5, lr 0.05: some samples hit the
    31-pulse cap. Each mode with tensor operations and with the C++ kernels."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 9, generator=g) * (torch.rand(4, 9, generator=g) > 0.3)
    x[:, [2, 6]] = 0
    d = torch.randn(4, 6, generator=g) * 0.2
    theirs, ours = repeated_update(variants, 10000, x, d, lr=0.05)
    for variant, dw in zip(variants, ours, strict=True):
        assert rel(dw.mean(0), theirs.mean(0)) < TOLERANCE, variant
        assert rel(dw.var(0), theirs.var(0)) < TOLERANCE, variant


def test_update_of_a_saturated_sample_matches_aihwkit():
    """One sample far beyond the pulse cap (k ≈ 150): the update is truncated at 31 pulses."""
    x = torch.tensor([[0.5, -0.2, 0.1]])
    d = torch.tensor([[3.0, -1.0, 0.5, 2.0]])
    variants = ["moment", "moment-cpp", "pulse-cpp"]
    theirs, ours = repeated_update(variants, 8000, x, d, lr=0.05)
    for variant, dw in zip(variants, ours, strict=True):
        assert rel(dw.mean(0), theirs.mean(0)) < TOLERANCE, variant
        assert rel(dw.var(0), theirs.var(0)) < TOLERANCE, variant


@pytest.mark.parametrize("variants", [["moment", "moment-cpp"], ["pulse", "pulse-cpp"]])
def test_update_covariance_between_devices_matches_aihwkit(variants):
    """The devices of one row (column) share that row's (column's) pulse train, so their updates
    are correlated. Off-diagonal covariances of ΔW over 8,000 repeats: two halves of AIHWKit's
    differ by 0.17-0.19 (relative Frobenius norm, sampling noise); independent devices would be
    1.0 off."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 9, generator=g) * (torch.rand(4, 9, generator=g) > 0.3)
    d = torch.randn(4, 6, generator=g) * 0.1
    theirs, ours = repeated_update(variants, 8000, x, d, lr=0.05)

    def off_diagonal_covariance(dw):
        c = torch.cov(dw.reshape(dw.shape[0], -1).T)
        return c[~torch.eye(c.shape[0], dtype=torch.bool)]
    for variant, dw in zip(variants, ours, strict=True):
        assert rel(off_diagonal_covariance(dw), off_diagonal_covariance(theirs)) < 0.3, variant


def test_tiki_taka_transfer_matches_aihwkit():
    """A step without gradient pulses is one transfer: column 0 of A, read through the noisy,
    quantised transfer IO, written onto C by pulses at transfer_lr × lr."""
    torch.manual_seed(2)
    # AIHWKit's tile is not seeded by torch: its sample mean varies from run to run by a few %
    trials, out_size, in_size, lr = 20000, 6, 5, 0.05
    config = rpu_configs.rpu_config("TT-v1", 0.7)
    _, tile = aihwkit_layer(config, in_size, out_size)
    hidden = tile.get_hidden_parameters()
    c0 = (torch.rand(out_size, in_size) * 2 - 1) * 0.3
    a0 = (torch.rand(out_size, in_size) * 2 - 1) * 0.3
    tile.set_learning_rate(lr)
    theirs = []
    for _ in range(trials):
        tile.set_weights(c0)
        hp = tile.get_hidden_parameters()
        hp["hidden_weights_0"] = a0.clone()
        tile.set_hidden_parameters(hp)
        tile.tile.update(torch.zeros(1, in_size), torch.zeros(1, out_size), False)
        theirs.append(tile.tile.get_weights() - c0)
    theirs = torch.stack(theirs)
    assert float(theirs[:, :, 1:].abs().max()) == 0
    for variant, (mode, cpp) in VARIANTS.items():
        with cpp_kernels(cpp):  # the column read through the IO and the column's pulses
            ours_tile = AnalogTile(out_size, in_size, [from_aihwkit(config)] * trials,
                                   update_mode=mode)
            copy_devices(hidden, ours_tile.fast, "_0")
            copy_devices(hidden, ours_tile.slow, "_1")
            ours_tile.set_weights(c0.expand(trials, -1, -1))
            ours_tile.fast.weight.copy_(a0.expand(trials, -1, -1))
            ours_tile.stash(torch.zeros(trials, 1, in_size), torch.zeros(trials, 1, out_size))
            ours_tile.apply_update(lr)
        ours = ours_tile.weight - c0
        assert float(ours[:, :, 1:].abs().max()) == 0, variant
        assert rel(ours.mean(0), theirs.mean(0)) < TOLERANCE, variant
        assert rel(ours.var(0), theirs.var(0)) < TOLERANCE, variant


def test_pulse_probabilities_and_bit_length_on_hand_made_cases():
    """AIHWKit's bit-length and update management, worked by hand (lr/dw_min = 10, desired_bl 31):
    - x = (0.5, −1), d = (0.2, 0.4): k = 10·1·0.4 = 4 slots; update management scales x by
      √(10/4 · 0.4/1) = 1 and d by √(10/4 · 1/0.4) = 2.5: p = (0.5, 1), q = (0.5, 1), and the
      expected count 4·p·q is 10·|x d| on every device (1, 2, 2, 4);
    - x = 1, d = 10: k = 100 > 31: 31 slots, d's side scaled so that x's largest element fires
      in every slot (p = 1) and q clips at 1: the update is capped at 31 pulses;
    - a sample without input gives no slot."""
    from utils.analog_torch.tile import pulse_probabilities

    dw = torch.full((1, 1, 1), 1e-3)
    x, d = torch.tensor([[[0.5, -1.0]]]), torch.tensor([[[0.2, 0.4]]])
    p, q, bl = pulse_probabilities(x, d, 0.01, dw, 31)
    torch.testing.assert_close(bl, torch.tensor([[[4.0]]]))
    torch.testing.assert_close(p, torch.tensor([[[0.5, 1.0]]]))
    torch.testing.assert_close(q, torch.tensor([[[0.5, 1.0]]]))
    counts = bl * q.transpose(-1, -2) * p  # (out, in)
    torch.testing.assert_close(counts, 10 * (d.transpose(-1, -2) * x).abs())
    p, q, bl = pulse_probabilities(torch.ones(1, 1, 1), torch.full((1, 1, 1), 10.0), 0.01, dw, 31)
    assert (float(bl), float(p), float(q)) == (31.0, 1.0, 1.0)
    p, q, bl = pulse_probabilities(torch.zeros(1, 1, 2), d, 0.01, dw, 31)
    assert float(bl) == 0 and float(p.abs().sum() + q.abs().sum()) == 0


def _changed_columns(before: torch.Tensor, after: torch.Tensor) -> list[int]:
    return (after != before).any(0).nonzero().flatten().tolist()


def test_tiki_taka_transfer_visits_the_columns_in_order_and_wraps_around():
    """With A held away from 0 and no gradient, each mini-batch transfers one column of A onto C:
    columns 0, 1, 2, 3 and then 0 again, in AIHWKit and in the torch backend (both modes)."""
    from aihwkit.optim import AnalogSGD

    torch.manual_seed(0)
    config = rpu_configs.rpu_config("TT-v1", 0.7)
    config.mapping.learn_out_scaling = False
    layer, tile = aihwkit_layer(config, 4, 6)
    tile.set_weights(torch.zeros(6, 4))
    hidden = tile.get_hidden_parameters()
    hidden["hidden_weights_0"] = torch.full((6, 4), 0.3)
    tile.set_hidden_parameters(hidden)
    optimizer = AnalogSGD(layer.parameters(), lr=0.05)
    theirs = []
    for _ in range(5):
        before = tile.tile.get_weights().clone()
        optimizer.zero_grad()
        (layer(torch.zeros(2, 4)) * torch.zeros(2, 6)).sum().backward()
        optimizer.step()
        theirs.append(_changed_columns(before, tile.tile.get_weights()))
    assert theirs == [[0], [1], [2], [3], [0]]
    for mode in UPDATE_MODES_TESTED:
        ours = AnalogTile(6, 4, [from_aihwkit(config)], update_mode=mode)
        ours.set_weights(torch.zeros(1, 6, 4))
        ours.fast.weight.fill_(0.3)
        visited = []
        for _ in range(5):
            before = ours.weight.clone()
            ours.stash(torch.zeros(1, 2, 4), torch.zeros(1, 2, 6))
            ours.apply_update(0.05)
            visited.append(_changed_columns(before[0], ours.weight[0]))
        assert visited == theirs, mode


def test_tiki_taka_transfer_write_scales_with_the_scheduled_lr():
    """scale_transfer_lr (the authors' setting): the transfer writes A's column onto C at
    transfer_lr × lr, so halving the SGD learning rate (as a StepLR schedule does) halves the
    mean transfer step (≈ 15 and 7.5 pulses per device; 300 runs each, within 5 %), in both modes."""
    config = presets.rpu_config("TT-v1", 0.7)
    assert config.device.scale_transfer_lr
    runs = 300
    for mode in UPDATE_MODES_TESTED:
        steps = []
        for lr in (0.05, 0.025):
            torch.manual_seed(0)
            tile = AnalogTile(20, 2, [config] * runs, update_mode=mode)
            tile.fast.weight.fill_(0.3)
            tile.stash(torch.zeros(runs, 1, 2), torch.zeros(runs, 1, 20))
            tile.apply_update(lr)
            steps.append(float(tile.slow.weight[:, :, 0].mean()))
        assert steps[0] / steps[1] == pytest.approx(2.0, rel=0.05), (mode, steps)


def test_tiki_taka_transfer_onto_c_feels_cs_soft_bounds():
    """One transfer of a positive column of A onto C (≈ 15 pulses up per device): a device of C
    held at half its upper bound moves by (1 − 0.5) of a free step, the same device held at half
    its lower bound by (1 + 0.5·|b_min|/b_max): ≈ 3 times more (soft bounds on the main array, the
    dynamic's −(α/τ)|P| ⊙ W term). 300 runs at each weight, per device of C's column 0 the mean
    step's ratio is within 5 % of that on average (its sampling error ≈ 1 %) and above 2 for every
    device; an ideal main array gives 1."""
    torch.manual_seed(0)
    config = presets.rpu_config("TT-v1", 0.7)
    runs = 600
    for mode in UPDATE_MODES_TESTED:
        tile = AnalogTile(20, 2, [config] * runs, update_mode=mode)
        b_max, b_min = tile.slow.max_bound[0, :, 0], tile.slow.min_bound[0, :, 0]  # every run's
        high = (torch.arange(runs) < runs // 2).view(-1, 1, 1)
        tile.slow.weight.copy_(torch.where(high, 0.5 * tile.slow.max_bound,
                                           0.5 * tile.slow.min_bound))
        w0 = tile.slow.weight.clone()
        tile.fast.weight.fill_(0.3)
        tile.stash(torch.zeros(runs, 1, 2), torch.zeros(runs, 1, 20))
        tile.apply_update(0.05)
        moved = (tile.slow.weight - w0)[:, :, 0]  # (runs, rows)
        ratio = moved[runs // 2:].mean(0) / moved[:runs // 2].mean(0)
        expected = (1 - 0.5 * b_min / b_max) / 0.5
        assert float((ratio / expected).mean()) == pytest.approx(1, abs=0.05), mode
        assert float(ratio.min()) > 2, mode


# --- forward and backward -------------------------------------------------------------------------

def test_dac_and_adc_steps_are_the_configured_resolutions():
    """From first principles: AIHWKit's 7-bit DAC (inp_res 1/126) has 126 steps across ±inp_bound
    = ±1, so inputs land on multiples of 2/126; its 9-bit ADC (out_res 1/510) has 510 steps
    across ±out_bound = ±12, so outputs land on multiples of 24/510. A one-device pass (weight 1)
    without noise or management, the tensor operations and the C++ pass."""
    from utils.analog_torch.tile import analog_mvm

    io = dataclasses.replace(presets.rpu_config("Analog SGD", 0.7).forward, out_noise=0.0,
                             noise_management="none", bound_management="none")
    assert (io.inp_res, io.inp_bound, io.out_res, io.out_bound) == (1 / 126, 1.0, 1 / 510, 12.0)
    x = torch.linspace(-1.3, 1.3, 2001).view(1, -1, 1)
    one = torch.ones(1, 1, 1)
    dac = dataclasses.replace(io, out_res=0.0)  # the DAC alone
    adc = dataclasses.replace(io, inp_res=0.0)  # the ADC alone
    for cpp in (False, True):
        with cpp_kernels(cpp):
            torch.testing.assert_close(analog_mvm(one, x, dac), (x.clamp(-1, 1) * 63).round() / 63,
                                       rtol=0, atol=1e-6)
            # a resolution above 1 is a number of steps (AIHWKit's convention): 126 is 1/126
            torch.testing.assert_close(analog_mvm(one, x, dataclasses.replace(dac, inp_res=126.0)),
                                       analog_mvm(one, x, dac), rtol=0, atol=0)
            y = analog_mvm(one * 13, x, adc)  # outputs up to 13 > 12: clipped
            torch.testing.assert_close(y, (x.clamp(-1, 1) * 13 / (24 / 510)).round()
                                       .clamp(-255, 255) * (24 / 510), rtol=0, atol=1e-5)
        assert float(y.abs().max()) == pytest.approx(12.0)


@pytest.mark.parametrize("bound_management", ["iterative", "none"])
def test_io_pass_without_noise_equals_aihwkits_within_one_adc_step(bound_management):
    """Without output noise AIHWKit's forward and backward passes are deterministic, and ours
    (tensor operations and C++) equal them within one ADC step (24/510 times the sample's max|x|,
    the noise-management scale) on random weights and inputs of both signs, a sample with a zero
    input block, and a sample that drives output 0 to ≈ 17 > 12: with ITERATIVE bound management
    that output is rescued (≈ 17), without it clipped at the ADC bound 12 and its error masked in
    the backward pass."""
    torch.manual_seed(3)
    in_size, out_size = 40, 8
    config = analog_sgd_config()
    config.forward.out_noise = config.backward.out_noise = 0.0
    if bound_management == "none":
        from aihwkit.simulator.parameters.enums import BoundManagementType

        config.forward.bound_management = BoundManagementType.NONE
    layer, tile = aihwkit_layer(config, in_size, out_size)
    w = ((torch.rand(out_size, in_size) * 2 - 1) * 0.6).clamp(-0.45, 0.45)
    w[0] = 0.45
    tile.set_weights(w)
    w = tile.tile.get_weights()
    x = torch.rand(6, in_size) * 2 - 1
    x[2] = 1.0  # output 0 of sample 2: 40 · 0.45 ≈ 17 > 12
    x[3, :5] = 0
    d = torch.randn(6, out_size)
    ours = tnn.AnalogLinear(in_size, out_size, [from_aihwkit(config)], bias=False)
    copy_devices(tile.get_hidden_parameters(), ours.tiles[0].array)
    ours.set_weights(w[None])

    def passes(module) -> tuple[torch.Tensor, torch.Tensor]:
        xs = x.clone().requires_grad_(True)
        y = module(xs)
        y.backward(d)
        return y.detach(), xs.grad
    y_ref, g_ref = passes(layer)
    if bound_management == "iterative":
        assert float(y_ref[2, 0]) > 16
    else:
        assert float(y_ref[2, 0]) == pytest.approx(12.0)
    step = 24 / 510
    for cpp in (False, True):
        with cpp_kernels(cpp):
            y, g = passes(ours)
        assert bool(((y - y_ref).abs() <= step * x.abs().amax(1, keepdim=True)).all()), cpp
        assert bool(((g - g_ref).abs() <= step * d.abs().amax(1, keepdim=True)).all()), cpp


def test_forward_and_backward_match_aihwkit():
    """Default IO (7-bit DAC, 9-bit ADC, output noise, ABS_MAX, ITERATIVE bound management); the
    last sample drives outputs past the ADC bound, so bound management acts."""
    torch.manual_seed(3)
    trials, in_size, out_size = 6000, 40, 8
    config = analog_sgd_config()
    layer, tile = aihwkit_layer(config, in_size, out_size)
    w = ((torch.rand(out_size, in_size) * 2 - 1) * 0.6).clamp(-0.45, 0.45)
    w[0] = 0.45  # row 0: all weights high
    tile.set_weights(w)
    w = tile.tile.get_weights()  # as programmed: clipped to each device's bounds
    x = torch.rand(3, in_size)
    x[2] = 1.0  # row 0 of sample 2: 40 · 0.45 = 18 > 12: bound management
    d = torch.randn(3, out_size)
    ours = tnn.AnalogLinear(in_size, out_size, [from_aihwkit(config)], bias=False)
    copy_devices(tile.get_hidden_parameters(), ours.tiles[0].array)
    ours.set_weights(w[None])
    torch.testing.assert_close(ours.get_weights()[0], w)

    def moments(module):
        xs = x.repeat(trials, 1).requires_grad_(True)
        y = module(xs)
        y.backward(d.repeat(trials, 1))
        outs = y.detach().view(trials, 3, out_size)
        grads = xs.grad.view(trials, 3, in_size)
        return outs.mean(0), outs.var(0), grads.mean(0), grads.var(0)
    ref = moments(layer)
    assert float(ref[0][2, 0]) > 12  # bound management let the output exceed the ADC range
    for cpp in (False, True):
        with cpp_kernels(cpp):
            got = moments(ours)
        for a, b, what in zip(got, ref, ("out mean", "out var", "grad mean", "grad var"),
                              strict=True):
            assert rel(a, b) < TOLERANCE, (what, cpp)


def test_conv_training_step_matches_aihwkit():
    """One whole training step of an analog convolution (forward and backward through the IO
    periphery per patch, every (sample, patch) pair an update vector, the learned output scale at
    1.5) against AIHWKit's AnalogConv2d, repeated from the same weights: mean and variance of ΔW.
    4 images of 9 patches: 36 update vectors, most of their inputs non-zero, so the C++ moment
    update takes its line sums from matrix products. The variance gets a wider bound: with 2,500
    repeats each, two halves of AIHWKit's own repeats differ by up to ~6 % in it."""
    from aihwkit.nn import AnalogConv2d
    from aihwkit.optim import AnalogSGD

    torch.manual_seed(4)
    trials, lr = 2500, 0.05
    config = rpu_configs.rpu_config("Analog SGD", 0.7)  # learn_out_scaling on, as in the experiments
    layer = AnalogConv2d(2, 3, 3, bias=False, rpu_config=config)
    tile = next(layer.analog_tiles())
    hidden = tile.get_hidden_parameters()
    w0 = ((torch.rand(3, 18) * 2 - 1) * 0.3).clamp(hidden["min_bound"], hidden["max_bound"])
    x = torch.rand(4, 2, 5, 5) * (torch.rand(4, 2, 5, 5) > 0.3)
    g = torch.randn(4, 3, 3, 3) * 0.1
    opt = AnalogSGD(layer.parameters(), lr=lr)
    theirs = []
    for _ in range(trials):
        tile.set_weights(w0)
        tile.out_scaling_alpha.data.fill_(1.5)
        opt.zero_grad()
        (layer(x) * g).sum().backward()
        opt.step()
        theirs.append(tile.tile.get_weights() - w0)  # the raw tile: without the output scale
    theirs = torch.stack(theirs)
    for variant in ("moment", "moment-cpp", "pulse-cpp"):
        mode, cpp = VARIANTS[variant]
        with cpp_kernels(cpp):
            ours = tnn.AnalogConv2d(2, 3, 3, [from_aihwkit(config)] * trials, bias=False,
                                    update_mode=mode)
            copy_devices(hidden, ours.tile.array)
            ours.set_weights(w0.expand(trials, -1, -1))
            with torch.no_grad():
                ours.out_scaling.fill_(1.5)
            (ours(x.repeat(trials, 1, 1, 1)) * g.repeat(trials, 1, 1, 1)).sum().backward()
            tnn.AnalogSGD(ours.parameters(), lr=lr).step()
        dw = ours.get_weights() - w0
        assert rel(dw.mean(0), theirs.mean(0)) < TOLERANCE, variant
        assert rel(dw.var(0), theirs.var(0)) < 2 * TOLERANCE, variant


def _noise_mean_chi2(read, tiles: int) -> float:
    """Σ over tiles of (mean / standard error)² of the output noise of ``read(t)`` (many reads of
    zero weights): ≈ ``tiles`` when the noise has mean 0, far more when each tile's has its own."""
    total = 0.0
    for t in range(tiles):
        y = read(t).flatten()
        total += float(y.mean() / (y.std() / math.sqrt(y.numel()))) ** 2
    return total


def _zero_weight_reads_config():
    config = analog_sgd_config()
    config.forward.out_res = 0.0  # no ADC grid: the output is the noise itself
    return config


def test_aihwkits_cpu_noise_has_a_mean_per_tile_and_the_noise_list_emulates_it():
    """AIHWKit's CPU tiles draw their Gaussian noise from a fixed list of 32,768 numbers, so each
    tile's noise has its own mean, ≈ N(0, 1/32768) in units of its std. With 2.6 M reads per tile
    a tile's (mean / SE)² is then ≈ 78 on average, and the sum over 10 tiles falls below the
    threshold 40 with p ≈ 1e-6; zero-mean noise sums to ≈ 10 and exceeds 40 with p ≈ 2e-5. The
    torch backend: zero-mean by default, AIHWKit-like with set_noise_list(32768)."""
    from aihwkit.nn import AnalogLinear

    from utils.analog_torch.tile import AIHWKIT_CPU_NOISE_LIST, set_noise_list

    config, tiles, size, reads = _zero_weight_reads_config(), 10, 64, 40
    x = torch.ones(1000, size)

    def aihwkit_read(_):
        layer = AnalogLinear(size, size, bias=False, rpu_config=config)
        next(layer.analog_tiles()).set_weights(torch.zeros(size, size))
        with torch.no_grad():
            return torch.stack([layer(x) for _ in range(reads)])

    def torch_reads(noise_list):
        set_noise_list(noise_list)
        try:
            layer = tnn.AnalogLinear(size, size, [from_aihwkit(config)] * tiles, bias=False)
        finally:
            set_noise_list(0)
        layer.eval()
        with torch.no_grad():
            y = torch.stack([layer(x.repeat(tiles, 1)) for _ in range(reads)])
        return y.view(reads, tiles, -1).transpose(0, 1)

    assert _noise_mean_chi2(aihwkit_read, tiles) > 40
    fresh, listed = torch_reads(0), torch_reads(AIHWKIT_CPU_NOISE_LIST)
    assert _noise_mean_chi2(lambda t: fresh[t], tiles) < 40
    assert _noise_mean_chi2(lambda t: listed[t], tiles) > 40
    with cpp_kernels(True):  # the C++ IO pass: its own Gaussian generator, and the same lists
        fresh, listed = torch_reads(0), torch_reads(AIHWKIT_CPU_NOISE_LIST)
    assert _noise_mean_chi2(lambda t: fresh[t], tiles) < 40
    assert _noise_mean_chi2(lambda t: listed[t], tiles) > 40


def test_reseeding_an_aihwkit_tile_keeps_its_state_and_draws_a_new_noise_mean():
    """--reseed-noise-every's reseed (a copy of the simulator tile): the weights, devices, A, the
    learning rate and Tiki-Taka's next transfer column carry over, and each reseed draws a new
    Gaussian list, so over 10 reseeds of one tile the noise means differ as between 10 tiles
    (threshold as in the test above)."""
    from aihwkit.nn import AnalogLinear
    from aihwkit.optim import AnalogSGD

    from utils.backend import reseed_aihwkit_tiles

    config = rpu_configs.rpu_config("TT-v1", 0.7)
    config.mapping.learn_out_scaling = False
    layer = AnalogLinear(6, 3, bias=False, rpu_config=config)
    tile = next(layer.analog_tiles())
    tile.set_weights(torch.zeros(3, 6))
    hidden = tile.get_hidden_parameters()
    hidden["hidden_weights_0"] = torch.full((3, 6), 0.3)  # A: each transfer writes a column of C
    tile.set_hidden_parameters(hidden)
    optimizer = AnalogSGD(layer.parameters(), lr=0.05)

    def step_and_columns() -> list[int]:  # no gradient: a step is one transfer
        optimizer.zero_grad()
        (layer(torch.zeros(4, 6)) * torch.zeros(4, 3)).sum().backward()
        optimizer.step()
        return (tile.tile.get_weights() != 0).any(0).nonzero().flatten().tolist()

    assert step_and_columns() == [0] and step_and_columns() == [0, 1]
    before = tile.get_hidden_parameters()
    reseed_aihwkit_tiles(layer)
    after = tile.get_hidden_parameters()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert tile.tile.get_learning_rate() == pytest.approx(0.05)
    assert step_and_columns() == [0, 1, 2]

    zero = _zero_weight_reads_config()
    reader = AnalogLinear(64, 64, bias=False, rpu_config=zero)
    next(reader.analog_tiles()).set_weights(torch.zeros(64, 64))
    x = torch.ones(1000, 64)

    def reseeded_read(_):
        reseed_aihwkit_tiles(reader)
        with torch.no_grad():
            return torch.stack([reader(x) for _ in range(40)])

    assert _noise_mean_chi2(reseeded_read, 10) > 40


# --- batching, state, modes ----------------------------------------------------------------------

def test_batched_runs_equal_single_runs_in_floating_point():
    """FP SGD is deterministic: run 1 of a batch of 3 trains exactly like run 1 alone."""
    config = presets.rpu_config("FP SGD", 1.0)
    batched = build_network("FCN", [config] * 3, TorchBackend(), [0, 1, 2])
    single = build_network("FCN", [config], TorchBackend(), [1])
    g = torch.Generator().manual_seed(0)
    data = [(torch.rand(30, 1, 28, 28, generator=g), torch.randint(0, 10, (30,), generator=g))
            for _ in range(5)]
    for model, runs, pick in ((batched, 3, slice(None)), (single, 1, slice(10, 20))):
        opt = tnn.AnalogSGD(model.parameters(), lr=0.1)
        for x, y in data:
            opt.zero_grad()
            tnn.batched_loss(model(x[pick]), y[pick], runs).backward()
            opt.step()
    for a, b in zip(tnn.analog_layers(batched), tnn.analog_layers(single), strict=True):
        torch.testing.assert_close(a.get_weights()[1:2], b.get_weights(), rtol=1e-5, atol=1e-6)


def test_split_layer_gradients_are_autograds():
    """One autograd node per layer (tile_grid): a floating-point layer split into 2 × 2 tiles
    (600 inputs, 520 outputs, 2 runs), with output scales and bias, gives the outputs and the
    gradients of input, scales and bias that autograd gives for the same sum of scaled matrix
    products, and each tile's stashed error is its output gradient times its scale."""
    config = presets.rpu_config("FP SGD", 1.0)
    config = dataclasses.replace(config, mapping=dataclasses.replace(config.mapping,
                                                                     learn_out_scaling=True))
    layer = tnn.AnalogLinear(600, 520, [config] * 2)
    assert len(layer.tiles) == 4
    g = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(2, 520, 600, generator=g) * 0.05, torch.randn(2, 520, generator=g)
    layer.set_weights(weight, bias)
    scales = torch.rand(4, 2, generator=g) + 0.5
    with torch.no_grad():
        for k, p in enumerate(layer.out_scaling):
            p.copy_(scales[k])
    x = torch.randn(2 * 3, 600, generator=g, requires_grad=True)
    out_grad = torch.randn(2 * 3, 520, generator=g)
    y = layer(x)
    y.backward(out_grad)
    # the reference: tile (o, j) holds weight[:, o-block, j-piece], scaled by scales[2·o + j]
    xr = x.detach().clone().view(2, 3, 600).requires_grad_(True)
    s = scales.clone().requires_grad_(True)
    b = bias.clone().requires_grad_(True)
    blocks = []
    for o, (o0, o1) in enumerate(((0, 260), (260, 520))):
        total = 0
        for j, (i0, i1) in enumerate(((0, 300), (300, 600))):
            part = torch.matmul(xr[..., i0:i1], weight[:, o0:o1, i0:i1].transpose(1, 2))
            total = total + part * s[2 * o + j].view(-1, 1, 1)
        blocks.append(total)
    ref = torch.cat(blocks, -1) + b.unsqueeze(1)
    ref.backward(out_grad.view(2, 3, 520))
    torch.testing.assert_close(y.view(2, 3, 520), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad.view(2, 3, 600), xr.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.bias.grad, b.grad, rtol=1e-5, atol=1e-5)
    for k, p in enumerate(layer.out_scaling):
        torch.testing.assert_close(p.grad, s.grad[k], rtol=1e-4, atol=1e-4)
    stashed_x, stashed_d = layer.tiles[3]._stash[0]  # block 1, piece 1
    torch.testing.assert_close(stashed_x, xr.detach()[..., 300:])
    torch.testing.assert_close(stashed_d, out_grad.view(2, 3, 520)[..., 260:]
                               * scales[3].view(-1, 1, 1))


@pytest.mark.parametrize("padding, stride", [(1, 1), (0, 2)])
def test_floating_point_conv_is_torchs_conv_and_its_update_is_sgd(padding, stride):
    """The patch path: output, input gradient and update of a floating-point AnalogConv2d (2 runs)
    are those of F.conv2d and of SGD on its weight gradient (every (sample, patch) pair is an
    update vector), with and without padding and stride."""
    from torch.nn import functional as F

    conv = tnn.AnalogConv2d(3, 4, 3, [presets.rpu_config("FP SGD", 1.0)] * 2, padding=padding,
                            stride=stride)
    weight, bias = torch.randn(2, 4, 3, 3, 3), torch.randn(2, 4)
    conv.set_weights(weight, bias)
    x = torch.randn(2 * 5, 3, 8, 9, requires_grad=True)
    y = conv(x)
    xs = [x.detach()[5 * r:5 * r + 5].requires_grad_(True) for r in range(2)]
    refs = [F.conv2d(xs[r], weight[r], bias[r], stride=stride, padding=padding) for r in range(2)]
    torch.testing.assert_close(y, torch.cat(refs), rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(y)
    y.backward(grad)
    torch.cat(refs).backward(grad)
    torch.testing.assert_close(x.grad, torch.cat([xr.grad for xr in xs]), rtol=1e-5, atol=1e-5)
    conv.tile.apply_update(0.1)
    for r in range(2):
        w = weight[r].clone().requires_grad_(True)
        F.conv2d(x.detach()[5 * r:5 * r + 5], w, bias[r], stride=stride,
                 padding=padding).backward(grad[5 * r:5 * r + 5])
        torch.testing.assert_close(conv.get_weights()[r].view_as(w), weight[r] - 0.1 * w.grad,
                                   rtol=1e-4, atol=1e-5)


def test_initial_weights_are_those_of_the_aihwkit_backend():

    torch.manual_seed(4)
    theirs = build_network("FCN", [rpu_configs.rpu_config("FP SGD", 1.0)], AIHWKIT)
    ours = build_network("FCN", [presets.rpu_config("FP SGD", 1.0)], TorchBackend(), [4])
    first = [m for m in theirs.modules() if type(m).__name__ == "AnalogLinear"][0]
    w, _ = first.get_weights()
    torch.testing.assert_close(tnn.analog_layers(ours)[0].get_weights()[0], w)


@pytest.mark.parametrize("variant", ["moment", "moment-cpp", "pulse-cpp"])
@pytest.mark.parametrize("setting", ["Analog SGD", "TT-v1"])
def test_run_state_round_trip_and_weights_stay_in_bounds(setting, variant):
    configs = [presets.rpu_config(setting, tau) for tau in (0.3, 0.8)]
    mode, cpp = VARIANTS[variant]
    model = build_network("FCN", configs, TorchBackend(mode), [0, 1])
    opt = tnn.AnalogSGD(model.parameters(), lr=1.0)  # large: drives weights into the bounds
    with cpp_kernels(cpp):
        for _ in range(20):
            opt.zero_grad()
            tnn.batched_loss(model(torch.rand(20, 1, 28, 28)), torch.randint(0, 10, (20,)),
                             2).backward()
            opt.step()
    for tile in tnn.analog_tiles(model):
        arrays = [tile.array] if setting == "Analog SGD" else [tile.fast, tile.slow]
        for a in arrays:
            assert bool((a.weight <= a.max_bound).all() and (a.weight >= a.min_bound).all())
            assert float(a.max_bound[0].mean()) == pytest.approx(0.3, rel=0.05)
    state = model.state_dict()
    again = build_network("FCN", configs, TorchBackend(), [5, 6])
    again.load_state_dict(tnn.stack_states([tnn.run_state(state, 0), tnn.run_state(state, 1)]))
    for key, value in again.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_closed_form_of_n_pulses_equals_pulse_by_pulse_and_is_smooth_at_zero():
    """n soft-bounds pulses of one sign applied one by one (w ← w ± s·(1 − w/b)) against the
    closed form: within n·s²/|b| (e^{−nc} for (1 − c)^n). Around zero counts (the moment mode's
    Gaussian counts may be slightly negative) the closed form is continuous where it switches to
    its series, and n = 0 leaves w exactly."""
    from utils.analog_torch.tile import _soft_bounds_mean

    g = torch.Generator().manual_seed(3)
    shape = (50,)
    s_up, s_down = (0.001 + 0.002 * torch.rand(shape, generator=g) for _ in range(2))
    b_max, b_min = 0.5 + torch.rand(shape, generator=g), -0.5 - torch.rand(shape, generator=g)
    w0 = (torch.rand(shape, generator=g) - 0.5) * 0.8
    n = torch.randint(0, 200, shape, generator=g).to(torch.float32)
    zero = torch.zeros(shape)
    for up in (True, False):
        w = w0.clone()
        for k in range(int(n.max())):
            step = s_up * (1 - w / b_max) if up else -s_down * (1 - w / b_min)
            w = torch.where(k < n, w + step, w)
        closed = _soft_bounds_mean(w0, s_up, s_down, b_max, b_min, n if up else zero,
                                   zero if up else n)
        s, b = (s_up, b_max) if up else (s_down, -b_min)
        assert bool(((closed - w).abs() <= n * s * s / b + 1e-6).all())
        assert float((closed - w0).abs().max()) > 0.05  # the pulses moved the weights
    torch.testing.assert_close(_soft_bounds_mean(w0, s_up, s_down, b_max, b_min, zero, zero), w0,
                               rtol=0, atol=0)
    # near and below zero counts: the float64 formula w·e^{−r} + (1 − e^{−r})/r·n·s, no jump where
    # the implementation switches to its series (|r| = 1e-3)
    c = float(s_up[0] / b_max[0])
    for r in (-0.05, -1.0001e-3, -0.9999e-3, -1e-5, 1e-5, 0.9999e-3, 1.0001e-3, 0.05):
        count = torch.tensor([r / c])
        ours = _soft_bounds_mean(w0[:1], s_up[:1], s_down[:1], b_max[:1], b_min[:1], count,
                                 torch.zeros(1))
        exact = (float(w0[0]) * math.exp(-r)
                 + (1 - math.exp(-r)) / r * float(count[0]) * float(s_up[0]))
        assert abs(float(ours[0]) - exact) < 1e-6, (r, float(ours[0]), exact)


def test_a_step_near_the_bound_shrinks_before_any_clip():
    """Soft bounds act on the step itself, not by clipping after it: from w = 0.95·b_max an up
    step is 0.05 of the same step from w = 0, in the closed form of n pulses and in the pulsed
    device (both modes, 400 runs of each start; ≈ 15 pulses per device, so neither start
    reaches the bound)."""
    from utils.analog_torch.tile import _soft_bounds_mean

    s, b = torch.tensor([0.001]), torch.tensor([0.7])
    n, zero = torch.tensor([15.0]), torch.zeros(1)
    near = _soft_bounds_mean(0.95 * b, s, s, b, -b, n, zero) - 0.95 * b
    free = _soft_bounds_mean(zero, s, s, b, -b, n, zero)
    assert float(near / free) == pytest.approx(0.05, rel=0.02)
    torch.manual_seed(0)
    runs, x, d = 400, torch.ones(1, 1, 1), -torch.full((1, 1, 8), 0.3)  # ΔW = +lr·0.3 per device
    for mode in UPDATE_MODES_TESTED:
        tile = AnalogTile(8, 1, [presets.rpu_config("Analog SGD", 0.7)] * runs, update_mode=mode)
        b_max = tile.array.max_bound
        start = torch.where((torch.arange(runs) < runs // 2).view(-1, 1, 1), 0.95 * b_max, 0.0)
        tile.set_weights(start)
        tile.stash(x.expand(runs, -1, -1), d.expand(runs, -1, -1))
        tile.apply_update(0.05)
        step = (tile.weight - start)[..., 0]  # (runs, 8 devices)
        assert bool((tile.weight < b_max).all()), mode  # no weight reached (or was clipped to) b
        ratio = step[:runs // 2].mean(0) / step[runs // 2:].mean(0)
        assert float(ratio.mean()) == pytest.approx(0.05, abs=0.01), mode


@pytest.mark.parametrize("case", ["large", "small", "signs", "signs-many"])
def test_cpp_moment_update_equals_the_tensor_operations(case):
    """Mean and variance of ΔW over many repeats: the C++ moment update against the tensor
    operations' (the same formulas, other random numbers).

    - "large": 64 samples of large inputs and errors, ~400 coincidences per device and step, so
      the closed form's decay e^{-r} (r up to ~0.9) comes from the C++ exponential; with this many
      mostly non-zero samples the C++ line sums come from matrix products.
    - "small": 4 samples of small ones, a few coincidences per device, so the rates stay below
      0.05 (r ≈ |ΔW|/|bound|, checked on 99.9 % of the repeats) and the C++ update takes its path
      without the exponential (the gain's series, e^{-r} = 1 − r·gain).
    - "signs": 6 samples of inputs and errors of both signs, some inputs zero, 20 outputs: the
      line-by-line sums, 16 outputs in registers and the other 4 in memory.
    - "signs-many": the same with 40 samples and no zero input: the matrix products, with up and
      down pulses on every device."""
    config = analog_sgd_config()
    g = torch.Generator().manual_seed(5)
    samples, outs, scale, trials, mean_tol = {
        "large": (64, 4, 1.0, 3000, 0.005), "small": (4, 4, 0.3, 20000, 0.02),
        "signs": (6, 20, 1.0, 4000, 0.01), "signs-many": (40, 20, 0.5, 3000, 0.01)}[case]
    x = (torch.rand(samples, 5, generator=g) * 0.8 + 0.2) * scale
    d = (torch.rand(samples, outs, generator=g) * 0.4 + 0.2) * scale
    if case.startswith("signs"):  # random signs; "signs": a third of the inputs zero
        x = x * (torch.randint(0, 2, x.shape, generator=g) * 2 - 1)
        d = d * (torch.randint(0, 2, d.shape, generator=g) * 2 - 1)
        if case == "signs":
            x = x * (torch.rand(x.shape, generator=g) > 0.33)
    else:
        d = d * torch.tensor([1.0, -1, 1, -1])
    w0 = (torch.rand(outs, 5, generator=g) * 2 - 1) * 0.3
    out = []
    for cpp in (False, True):
        with cpp_kernels(cpp):
            torch.manual_seed(2)
            tile = AnalogTile(outs, 5, [from_aihwkit(config)] * trials, update_mode="moment")
            tile.set_weights(w0.expand(trials, -1, -1))
            tile.stash(x.expand(trials, -1, -1), d.expand(trials, -1, -1))
            tile.apply_update(0.05)
            out.append(tile.weight - w0)
    tensor_ops, cpp = out
    moved = float(tensor_ops.mean(0).abs().min())
    if case == "large":
        assert moved > 0.1  # every device moved far
    elif case == "small":  # every device moved, by a few steps of dw_min (0.001): r < 0.05
        bound = float(torch.minimum(tile.array.max_bound, -tile.array.min_bound).min())
        assert moved > 0.0005 and float(tensor_ops.abs().quantile(0.999)) / bound < 0.05
    else:  # every device moved, on average by more than half a pulse (dw_min 0.001)
        assert float(tensor_ops.abs().mean(0).min()) > 0.0005
    assert rel(cpp.mean(0), tensor_ops.mean(0)) < mean_tol
    assert rel(cpp.var(0), tensor_ops.var(0)) < TOLERANCE


def test_cpp_io_pass_equals_the_tensor_operations_without_noise():
    """Without output noise the IO pass is deterministic, so the C++ pass must equal the tensor
    operations': on sparse, MNIST-like inputs through weights stored input-major, as a tile
    stores them (its own sum over the non-zero inputs for 64 outputs or more, torch's product
    for fewer), on dense ones (torch's product) with bound management halving the inputs of
    saturated samples, and backwards (transposed weights). Summation order may flip an ADC
    rounding: at most one step."""
    from utils.analog_torch.tile import _res_step, analog_mvm

    io = dataclasses.replace(presets.rpu_config("Analog SGD", 0.7).forward, out_noise=0.0)
    g = torch.Generator().manual_seed(5)
    w = ((torch.rand(3, 50, 80, generator=g) * 2 - 1) * 0.5).transpose(1, 2)  # (R, out, in)
    w[:, 0] = 0.5  # 50 inputs at 1 drive output 0 to 25 > 12: bound management
    few = ((torch.rand(3, 50, 16, generator=g) * 2 - 1) * 0.5).transpose(1, 2)
    sparse = torch.rand(3, 8, 50, generator=g) * (torch.rand(3, 8, 50, generator=g) > 0.85)
    dense = torch.rand(3, 8, 50, generator=g)
    dense[:, 0] = 1.0
    d = torch.randn(3, 8, 80, generator=g)
    cases = [(w, sparse, True), (few, sparse, True), (w, dense, True),
             (w.transpose(-1, -2), d, False)]
    for weight, x, bm in cases:
        ref = analog_mvm(weight, x, io, bound_management=bm)
        with cpp_kernels(True):
            got = analog_mvm(weight, x, io, bound_management=bm)
        one_step = _res_step(io.out_res, io.out_bound) * x.abs().amax(-1, keepdim=True) * 16
        assert bool(((got - ref).abs() <= one_step + 1e-6).all())
        assert float(((got - ref).abs() <= 1e-5).float().mean()) > 0.99
        assert float(ref.abs().max()) > 0
    assert float(analog_mvm(w, dense, io)[:, 0, 0].min()) > 12  # bound management acted


def test_cpp_gaussian_noise_is_standard_normal():
    """The C++ kernels' Gaussian numbers (Box–Muller on hashed counters), read as the output noise
    of a pass through zero weights: 10⁶ of them have a standard normal's mean, variance, kurtosis
    and tails (each bound ≈ 5 standard errors), and neighbours, the two halves of a row (the
    pairs of one transform) and consecutive rows are uncorrelated."""
    from utils.analog_torch.tile import analog_mvm

    io = dataclasses.replace(presets.rpu_config("Analog SGD", 0.7).forward, out_noise=1.0,
                             out_res=-1.0, out_bound=1e9, inp_res=-1.0, w_noise=0.0,
                             noise_management="none", bound_management="none")
    torch.manual_seed(0)
    with cpp_kernels(True):
        y = analog_mvm(torch.zeros(1, 1000, 4), torch.ones(1, 1000, 4), io)[0].double()
    z = y.flatten()
    assert abs(float(z.mean())) < 0.005 and abs(float(z.std()) - 1) < 0.004
    assert abs(float((z ** 4).mean()) / float(z.var()) ** 2 - 3) < 0.025
    for k, p in ((1, 0.317311), (2, 0.045500), (3, 0.002700)):
        assert abs(float((z.abs() > k).double().mean()) - p) < 5 * (p / z.numel()) ** 0.5
    assert float(z.abs().max()) < 5.8

    def corr(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])
    assert abs(corr(z[:-1], z[1:])) < 0.005
    assert abs(corr(y[:, :500], y[:, 500:])) < 0.007
    assert abs(corr(y[:-1], y[1:])) < 0.005


def test_cpp_kernels_repeat_under_a_seed_and_fall_back_when_they_cannot_be_built(monkeypatch,
                                                                                capsys):
    """The C++ kernels draw from torch's generator's seed: in either update mode a seed repeats a
    step exactly, another one does not. Without a buildable source the tiles say so once and use
    tensor operations."""
    config = presets.rpu_config("TT-v1", 0.7)

    def step(seed: int, mode: str = "pulse") -> torch.Tensor:
        model = build_network("FCN", [config], TorchBackend(mode), [0])  # the same initial weights each time
        torch.manual_seed(seed)
        opt = tnn.AnalogSGD(model.parameters(), lr=0.1)
        for _ in range(3):
            opt.zero_grad()
            tnn.batched_loss(model(torch.rand(10, 1, 28, 28)), torch.randint(0, 10, (10,)),
                             1).backward()
            opt.step()
        return torch.cat([t.weight.flatten() for t in tnn.analog_tiles(model)]
                         + [t.fast.weight.flatten() for t in tnn.analog_tiles(model)])
    for mode in ("pulse", "moment"):
        with cpp_kernels(True):
            first, again, other = step(0, mode), step(0, mode), step(1, mode)
        assert torch.equal(first, again), mode
        assert not torch.equal(first, other), mode
    monkeypatch.setattr(native, "_STATE", {"on": True, "module": None, "tried": False})
    monkeypatch.setattr(native, "SOURCE", REPO / "no-such-kernels.cpp")
    assert native.kernels() is None and native.kernels() is None
    said = capsys.readouterr().out
    assert said.count("could not be built") == 1 and "tensor operations" in said
    assert torch.isfinite(step(0)).all()  # and the model still trains


def test_compiled_update_equals_eager():
    """torch.compile's fused moment update (used where the C++ kernels cannot be built). Where
    compiling fails the tile falls back to the eager function (and says so); the test then skips
    by name instead of comparing eager with eager."""
    from utils.analog_torch import tile as tile_module

    config = presets.rpu_config("Analog SGD", 0.7)
    outs = []
    for compiled in (False, True):
        set_compile(compiled)
        native.set_native(False)
        tile_module._COMPILED.pop("moment", None)
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        try:
            tile = AnalogTile(7, 9, [config] * 2)
            tile.set_weights(torch.full((2, 7, 9), 0.1))
            torch.manual_seed(0)
            x = torch.rand(2, 5, 9)
            x[:, :, 3] = 0  # a line that is skipped
            tile.stash(x, torch.randn(2, 5, 7) * 0.1)
            tile.apply_update(0.05)
            outs.append(tile.weight.clone())
            fused = tile_module._COMPILED.get("moment")
        finally:
            set_compile(False)
        # a fallback replaces the compiled call by the eager function; a disabled compiler
        # (TORCHDYNAMO_DISABLE) compiles no graph
        if compiled and (fused in (None, tile_module._moment_update)
                         or torch._dynamo.utils.counters["stats"]["unique_graphs"] <= graphs):
            pytest.skip("torch.compile could not compile the moment update here (it fell back "
                        "to the eager function)")
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-7)
    assert float((outs[0] - 0.1).abs().max()) > 0


@pytest.mark.parametrize("n_in, n_out, lines", [(5, 3, None), (3, 5, None), (1, 4, [2])])
def test_drawn_coincidences_have_the_exact_mean_and_variance(n_in, n_out, lines):
    """The pulse mode's coincidence counts (listed sparsely, whichever side is drawn first, and
    for one column mapped onto line 2 of 3 as in a transfer) against their exact statistics: in
    sample b, device (i, j) counts Binomial(bl_b, p_bj·q_bi) up or down by the sign of x_bj·d_bi.
    2 runs, 3 samples of different train lengths (one of them 0), mixed signs; 6,000 draws."""
    from utils.analog_torch.tile import sparse_counts

    g = torch.Generator().manual_seed(5)
    R, N, draws = 2, 3, 6000
    x = torch.randn(R, N, n_in, generator=g)
    d = torch.randn(R, N, n_out, generator=g)
    p, q = torch.rand(R, N, n_in, generator=g) * 0.8 + 0.1, torch.rand(R, N, n_out, generator=g)
    bl = torch.tensor([[[3.0], [1.0], [0.0]], [[2.0], [4.0], [1.0]]])
    rows = 3 if lines else n_in
    shape = torch.Size((R, rows, n_out))
    line = torch.tensor(lines) if lines else None
    up, down = torch.zeros(draws, shape.numel()), torch.zeros(draws, shape.numel())
    torch.manual_seed(0)
    for k in range(draws):
        fired = sparse_counts(x, d, p, q, bl, line, shape)
        if fired is not None:
            up[k, fired[0]], down[k, fired[0]] = fired[1], fired[2]
    pq = p.unsqueeze(-1) * q.unsqueeze(-2)  # (R, N, in, out): a slot's coincidence probability
    rate, var = bl.unsqueeze(-1) * pq, bl.unsqueeze(-1) * pq * (1 - pq)
    goes_down = (x.unsqueeze(-1) * d.unsqueeze(-2)) > 0
    exact = {}
    for name, mask in (("up", ~goes_down), ("down", goes_down)):
        mean, spread = (torch.zeros(R, rows, n_out) for _ in range(2))
        cols = line if line is not None else torch.arange(n_in)
        mean[:, cols] = (rate * mask).sum(1)
        spread[:, cols] = (var * mask).sum(1)
        exact[name] = mean.reshape(-1), spread.reshape(-1)
    for name, counts in (("up", up), ("down", down)):
        mean, variance = exact[name]
        assert bool((counts[:, mean == 0] == 0).all()), name  # nothing where nothing can fire
        live = mean > 0
        assert live.sum() >= 4
        se = (variance[live] / draws).sqrt()
        assert float(((counts.mean(0)[live] - mean[live]) / se).abs().max()) < 4.5, name
        assert rel(counts.var(0)[live], variance[live]) < 0.06, name


@pytest.mark.parametrize("mode", ["moment", "pulse"])
def test_lines_without_input_are_skipped_and_left_exactly_as_they_are(mode):
    """Run 0 sees inputs 1 and 4 zero throughout, run 1 only input 4: the skipped devices keep
    their weights bit for bit; every device on a line with input moves."""
    torch.manual_seed(0)
    tile = AnalogTile(6, 8, [presets.rpu_config("Analog SGD", 0.7)] * 2, update_mode=mode)
    w0 = torch.rand(2, 6, 8) * 0.4 - 0.2
    tile.set_weights(w0)
    w0 = tile.weight.clone()
    x = torch.rand(2, 3, 8) + 0.5
    x[0, :, 1] = 0
    x[:, :, 4] = 0
    tile.stash(x, torch.randn(2, 3, 6) * 2)  # large errors: every live device gets pulses
    tile.apply_update(0.05)
    moved = tile.weight != w0
    live = (x != 0).any(dim=1)  # (R, in)
    assert not moved[0][:, [1, 4]].any() and not moved[1][:, 4].any()
    assert bool(moved.transpose(1, 2)[live].all())


# --- the scripts ---------------------------------------------------------------------------------

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


# A learnable stand-in: 4 balanced classes (majority share 0.25), 16 inputs, Gaussian prototypes
# with noise of std 1.5; one bias-free analog layer, 2 epochs of 400 samples in batches of 10.
STAND_IN = {"classes": 4, "inputs": 16, "train": 400, "test": 2000, "noise": 1.5, "epochs": 2,
            "batch": 10, "lr": 0.1}


def stand_in_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    k, m = STAND_IN["classes"], STAND_IN["inputs"]
    prototypes = torch.randn(k, m, generator=torch.Generator().manual_seed(0))
    y = torch.arange(n) % k
    noise = torch.randn(n, m, generator=torch.Generator().manual_seed(seed))
    return prototypes[y] + STAND_IN["noise"] * noise, y


def stand_in_accuracies(setting: str, backend: str, runs: int) -> list[float]:
    """Test accuracy of ``runs`` runs of ``setting`` trained on the stand-in from the same initial
    weights and the same batches: AIHWKit one after the other (unseeded noise), the torch backend
    as one batched, seeded model."""
    import torch.nn.functional as F

    x, y = stand_in_data(STAND_IN["train"], 1)
    x_test, y_test = stand_in_data(STAND_IN["test"], 2)
    out_size, in_size = STAND_IN["classes"], STAND_IN["inputs"]
    w0 = torch.randn(out_size, in_size, generator=torch.Generator().manual_seed(3)) * 0.1
    order = torch.Generator().manual_seed(0)
    batches = [idx for _ in range(STAND_IN["epochs"])
               for idx in torch.randperm(len(x), generator=order).split(STAND_IN["batch"])]
    config = rpu_configs.rpu_config(setting, 0.7)
    if backend == "aihwkit":
        from aihwkit.optim import AnalogSGD

        accuracies = []
        for _ in range(runs):
            layer, _ = aihwkit_layer(config, in_size, out_size)
            layer.set_weights(w0)
            opt = AnalogSGD(layer.parameters(), lr=STAND_IN["lr"])
            for idx in batches:
                opt.zero_grad()
                F.cross_entropy(layer(x[idx]), y[idx]).backward()
                opt.step()
            with torch.no_grad():
                accuracies.append(float((layer(x_test).argmax(1) == y_test).float().mean()))
        return accuracies
    torch.manual_seed(0)
    layer = tnn.AnalogLinear(in_size, out_size, [from_aihwkit(config)] * runs, bias=False)
    layer.set_weights(w0.expand(runs, -1, -1))
    opt = tnn.AnalogSGD(layer.parameters(), lr=STAND_IN["lr"])
    for idx in batches:
        opt.zero_grad()
        (F.cross_entropy(layer(x[idx].repeat(runs, 1)), y[idx].repeat(runs)) * runs).backward()
        opt.step()
    with torch.no_grad():
        hits = layer(x_test.repeat(runs, 1)).argmax(1) == y_test.repeat(runs)
    return hits.float().view(runs, -1).mean(1).tolist()


FLOOR = 0.45  # above the majority-class share (0.25) and the initial weights' accuracy (0.325)


def test_fp_sgd_trains_exactly_like_aihwkit():
    """FP SGD is deterministic in both backends: the same accuracy on the stand-in."""
    ours, theirs = (stand_in_accuracies("FP SGD", b, 1)[0] for b in ("torch", "aihwkit"))
    assert ours == pytest.approx(theirs, abs=1 / STAND_IN["test"]) and ours > FLOOR


@pytest.mark.parametrize("setting, margin", [("Analog SGD", 0.05), ("TT-v1", 0.1)])
def test_torch_backend_learns_like_aihwkit(setting, margin):
    """Analog SGD and Tiki-Taka v1 learn on the stand-in (every run above FLOOR, which neither a
    one-class predictor nor the initial weights reach), and the torch backend's mean accuracy over
    3 seeded runs lies within ``margin`` of AIHWKit's over 3 runs.

    The torch runs are seeded, so their accuracies are fixed numbers; only AIHWKit's runtime noise
    (not seedable) is random. Over 20 AIHWKit repeats (``python tests/measure_stand_in.py``) the
    accuracy had mean 0.871, std 0.006 (Analog SGD) and mean 0.596, std 0.019 (TT-v1); the torch
    backend's seeded 3-run means are 0.867 and 0.564. With AIHWKit's std taken 1.5 times the
    measured one (0.009, 0.028): a run falls below FLOOR at ≥ 5.3 std (p < 1e-7 per run), and
    AIHWKit's 3-run mean (std 0.005, 0.016) leaves the band around the torch mean at
    (0.05 − 0.005)/0.005 = 8.9 std (Analog SGD) and (0.1 − 0.032)/0.016 = 4.2 std (TT-v1, p ≈ 1e-5):
    failure probability below 1e-4 per run of this test."""
    ours = stand_in_accuracies(setting, "torch", 3)
    theirs = stand_in_accuracies(setting, "aihwkit", 3)
    assert min(ours + theirs) > FLOOR, (ours, theirs)
    assert abs(sum(ours) / 3 - sum(theirs) / 3) < margin, (ours, theirs)


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


# --- Table 2 (A12) ---------------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["Resnet18", "Resnet50"])
@pytest.mark.parametrize("setting", presets.SETTINGS)
def test_lr_groups_are_aihwkits(model, setting):
    """The authors' positional lr rule gives each head parameter the same lr in both backends
    (the torch head lists its parameters in AIHWKit's order; ResNet-50's head is 4 tiles)."""
    from utils.finetune import DW_MIN_STATES, lr_groups
    from utils.models import build_resnet

    dw_min = 0.8 / DW_MIN_STATES
    theirs = build_resnet(model, rpu_configs.rpu_config(setting, 0.8, dw_min), AIHWKIT,
                          freeze_backbone=True)
    ours = build_resnet(model, presets.rpu_config(setting, 0.8, dw_min), TorchBackend("moment"),
                        freeze_backbone=True)
    summary = [[(g["name"], g["lr"], len(g["params"])) for g in lr_groups(m, 0.075)]
               for m in (theirs, ours)]
    assert summary[0] == summary[1]


def test_a12_trains_with_the_torch_backend(tmp_path):
    from utils.data import write_synthetic_cifar10

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
