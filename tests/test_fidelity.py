"""The torch backend (utils/analog_torch) against AIHWKit, the reference.

Configs: ours equal AIHWKit's converted, devices drawn with its spreads, the same initial weights
and learning rates. Exact where the simulation is exact: the IO pass without noise within one ADC
step, Tiki-Taka's transfer order. Statistical where AIHWKit's runtime noise cannot be seeded: one
update or transfer repeated many times from the same weights gives the per-element mean and
variance of AIHWKit's, the forward and backward passes the same output mean and variance, short
training runs on a learnable stand-in learn as AIHWKit's do; each such test states its chance of
failing by noise alone (docs/testing.md, "Randomness"). The shared experiments: utils/fidelity.py.
"""

from __future__ import annotations

import math

import pytest
import torch

from utils import rpu_configs
from utils.analog_torch import nn as tnn
from utils.analog_torch import presets
from utils.analog_torch.config import from_aihwkit
from utils.analog_torch.tile import AnalogTile, SoftBoundsArray
from utils.backend import AIHWKIT, TorchBackend
from utils.fidelity import (
    COMPARISONS,
    STAND_IN,
    UPDATE_MODES_TESTED,
    aihwkit_layer,
    analog_sgd_config,
    copy_devices,
    cpp_kernels,
    stand_in_accuracies,
)
from utils.models import build_network

# --- settings ---------------------------------------------------------------------------------

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


def test_initial_weights_are_those_of_the_aihwkit_backend():
    torch.manual_seed(4)
    theirs = build_network("FCN", [rpu_configs.rpu_config("FP SGD", 1.0)], AIHWKIT)
    ours = build_network("FCN", [presets.rpu_config("FP SGD", 1.0)], TorchBackend(), [4])
    first = [m for m in theirs.modules() if type(m).__name__ == "AnalogLinear"][0]
    w, _ = first.get_weights()
    torch.testing.assert_close(tnn.analog_layers(ours)[0].get_weights()[0], w)


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


# --- one update, many times -------------------------------------------------------------------

def assert_within_limits(name: str) -> None:
    """One trial of the comparison ``name`` of utils.fidelity.COMPARISONS: every distance within
    its limit."""
    distances, limit = COMPARISONS[name]
    for what, distance in distances().items():
        assert distance <= limit(what), (name, what, distance, limit(what))


@pytest.mark.parametrize("mode", ["moment", "pulse"])
def test_update_mean_and_variance_match_aihwkit(mode):
    """MNIST-like samples (utils.fidelity.update_case): some samples hit the 31-pulse cap, two
    inputs are zero throughout (their lines are skipped). Each mode with tensor operations and
    with the C++ kernels: per-element mean and variance of ΔW within 5 %.

    10,000 updates of ours per variant, 40,000 of AIHWKit's. Moment mode: measured with ``python
    tests/measure_margins.py update-moment 10`` (10 trials, each with a new AIHWKit tile; ours
    seeded): the distance nearest its limit, moment var, had mean 0.0137, std 0.0015, max
    0.0163, so the limit 0.05 lies 24.5 std above its mean (the other 3 distances: 25.9 std or
    more). With each std taken 1.5 times the measured one, the Gaussian tails summed over the 4
    distances give a failure probability by AIHWKit's noise alone below 1e-12. Pulse mode:
    measured with ``python tests/measure_margins.py update-pulse 10`` (10 trials, each with a
    new AIHWKit tile; ours seeded): the distance nearest its limit, pulse var, had mean 0.0150,
    std 0.0024, max 0.0184, so the limit 0.05 lies 14.6 std above its mean (the other 3
    distances: 18.5 std or more). With each std taken 1.5 times the measured one, the Gaussian
    tails summed over the 4 distances give a failure probability by AIHWKit's noise alone below
    1e-12."""
    assert_within_limits(f"update-{mode}")


def test_update_of_a_saturated_sample_matches_aihwkit():
    """One sample far beyond the pulse cap (k ≈ 150): the update is truncated at 31 pulses, and
    bit-length management scales d down. Per-element mean and variance of ΔW within 5 %.

    16,000 updates of ours per variant, 64,000 of AIHWKit's. Measured with ``python
    tests/measure_margins.py saturated 10`` (10 trials, each with a new AIHWKit tile; ours
    seeded): the distance nearest its limit, moment-cpp var, had mean 0.0093, std 0.0031, max
    0.0138, so the limit 0.05 lies 13.2 std above its mean (the other 5 distances: 16.7 std or
    more). With each std taken 1.5 times the measured one, the Gaussian tails summed over the 6
    distances give a failure probability by AIHWKit's noise alone below 1e-12."""
    assert_within_limits("saturated")


@pytest.mark.parametrize("mode", ["moment", "pulse"])
def test_update_covariance_between_devices_matches_aihwkit(mode):
    """The devices of one row (column) share that row's (column's) pulse train, so their updates
    are correlated: the off-diagonal covariances of ΔW within 30 % of AIHWKit's (relative
    Frobenius norm); independent devices would be 100 % off.

    8,000 updates of ours per variant, 32,000 of AIHWKit's. Moment mode: measured with ``python
    tests/measure_margins.py covariance-moment 10`` (10 trials, each with a new AIHWKit tile;
    ours seeded): the distance nearest its limit, moment covariance, had mean 0.1011, std
    0.0024, max 0.1054, so the limit 0.3 lies 82.7 std above its mean (the other 1 distances:
    85.3 std or more). With each std taken 1.5 times the measured one, the Gaussian tails summed
    over the 2 distances give a failure probability by AIHWKit's noise alone below 1e-12. Pulse
    mode: measured with ``python tests/measure_margins.py covariance-pulse 10`` (10 trials, each
    with a new AIHWKit tile; ours seeded): the distance nearest its limit, pulse-cpp covariance,
    had mean 0.1012, std 0.0032, max 0.1069, so the limit 0.3 lies 62.3 std above its mean (the
    other 1 distances: 72.8 std or more). With each std taken 1.5 times the measured one, the
    Gaussian tails summed over the 2 distances give a failure probability by AIHWKit's noise
    alone below 1e-12."""
    assert_within_limits(f"covariance-{mode}")


# --- Tiki-Taka's transfer ---------------------------------------------------------------------

def test_tiki_taka_transfer_matches_aihwkit():
    """A step without gradient pulses is one transfer: column 0 of A, read through the noisy,
    quantised transfer IO, written onto C by pulses at transfer_lr × lr. No other column of C
    moves, in either backend; per-element mean and variance of ΔC within 5 % in every variant.

    20,000 transfers of ours per variant, 80,000 of AIHWKit's. Measured with ``python
    tests/measure_margins.py transfer 8`` (8 trials, each with a new AIHWKit tile; ours seeded):
    the distance nearest its limit, pulse-cpp var, had mean 0.0201, std 0.0074, max 0.0328, so
    the limit 0.05 lies 4.0 std above its mean (the other 7 distances: 6.1 std or more). That is
    p ≈ 3e-5 with the measured std, but about 4e-3 with the std taken 1.5 times: this test does
    not yet reach 1e-4 by that rule."""
    assert_within_limits("transfer")


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


# --- forward and backward ---------------------------------------------------------------------

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
    last sample drives outputs past the ADC bound, so bound management acts. Mean and variance of
    the outputs and input gradients within 5 %, tensor operations and C++.

    64,000 passes in each backend. Measured with ``python tests/measure_margins.py io 10`` (10
    trials, each with a new AIHWKit tile; ours seeded): the distance nearest its limit, out var
    (C++), had mean 0.0107, std 0.0048, max 0.0202, so the limit 0.05 lies 8.2 std above its
    mean (the other 7 distances: 11.3 std or more). With each std taken 1.5 times the measured
    one, the Gaussian tails summed over the 8 distances give a failure probability by AIHWKit's
    noise alone below 1e-7."""
    assert_within_limits("io")


def test_conv_training_step_matches_aihwkit():
    """One whole training step of an analog convolution (forward and backward through the IO
    periphery per patch, every (sample, patch) pair an update vector, the learned output scale at
    1.5) against AIHWKit's AnalogConv2d, repeated from the same weights: mean of ΔW within 5 %,
    its variance within 10 %. 36 update vectors, most of their inputs non-zero, so the C++ moment
    update takes its line sums from matrix products.

    2,500 steps of ours per variant, 5,000 of AIHWKit's. Measured with ``python
    tests/measure_margins.py conv 10`` (10 trials, each with a new AIHWKit tile; ours seeded):
    the distance nearest its limit, moment var, had mean 0.0659, std 0.0051, max 0.0754, so the
    limit 0.1 lies 6.6 std above its mean (the other 5 distances: 8.3 std or more). With each
    std taken 1.5 times the measured one, the Gaussian tails summed over the 6 distances give a
    failure probability by AIHWKit's noise alone below 1e-5."""
    assert_within_limits("conv")


# --- AIHWKit's CPU noise ----------------------------------------------------------------------

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


# --- training on a learnable stand-in ---------------------------------------------------------

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
