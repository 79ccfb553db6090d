"""The torch backend's simulator (utils/analog_torch) on its own: pulse trains and updates
against their exact statistics, soft bounds before any clip, Tiki-Taka's transfer rate and the main
array's soft bounds, the IO pass's DAC and ADC steps from first principles, batched runs and the
floating-point layers against torch, and the C++ kernels and torch.compile against the tensor
operations. Every test is seeded; the comparisons with AIHWKit are in tests/test_fidelity.py.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from utils.analog_torch import native, presets
from utils.analog_torch import nn as tnn
from utils.analog_torch.config import from_aihwkit
from utils.analog_torch.tile import AnalogTile, set_compile
from utils.backend import TorchBackend
from utils.fidelity import TOLERANCE, UPDATE_MODES_TESTED, VARIANTS, analog_sgd_config, cpp_kernels, rel
from utils.models import build_network

REPO = Path(__file__).resolve().parent.parent


# --- pulse trains and updates -----------------------------------------------------------------

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


# --- bounds -----------------------------------------------------------------------------------

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


# --- Tiki-Taka's transfer ---------------------------------------------------------------------

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


# --- the IO pass ------------------------------------------------------------------------------

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


# --- batching and floating-point layers -------------------------------------------------------

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


# --- C++ kernels and torch.compile against the tensor operations ------------------------------

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
