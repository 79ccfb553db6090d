"""The torch backend's core rules on hand-made cases (utils/analog_torch/tile.py, tensor operations).

Each expected value is worked out from AIHWKit's definitions (EXPERIMENTS.md §1.5), not from the
code under test: the IO pass's DAC, ADC, noise and bound management; the pulse trains'
probabilities and lengths; the coincidence counts; the soft-bounds closed form; both update modes;
the Tiki-Taka transfer. The cases are deterministic: pulse probabilities of 0 or 1 make the trains
certain, and where a rule adds Gaussian noise the noise is replaced by a constant, so that its
scale is checked exactly. No AIHWKit import: these tests are the mutation campaign's runner for
tile.py (mutmut_config.py, docs/testing.md), so they must be fast.
"""

from __future__ import annotations

import math

import pytest
import torch

from utils.analog_torch import native
from utils.analog_torch import tile as T
from utils.analog_torch.config import (
    IOParameters,
    SingleRPUConfig,
    SoftBoundsReferenceDevice,
    TransferCompound,
    UnitCellRPUConfig,
    UpdateParameters,
)

F64 = torch.float64


@pytest.fixture(autouse=True)
def tensor_operations():
    """The tensor operations, not the C++ kernels (another test may have turned them on)."""
    was = native._STATE["on"]
    native.set_native(False)
    yield
    native.set_native(was)


def exact_io(**changes) -> IOParameters:
    """An IO without noise, management or bounds in the way, changed by ``changes``."""
    base = dict(inp_res=0.0, out_res=0.0, out_noise=0.0, inp_bound=1.0, out_bound=100.0,
                noise_management="none", bound_management="none")
    return IOParameters(**{**base, **changes})


def device(**changes) -> SoftBoundsReferenceDevice:
    """A device without device-to-device or cycle-to-cycle spread: every device steps dw_min."""
    base = dict(dw_min=0.01, dw_min_dtod=0.0, dw_min_std=0.0, up_down_dtod=0.0, w_max=1.0,
                w_min=-1.0, w_max_dtod=0.0, w_min_dtod=0.0)
    return SoftBoundsReferenceDevice(**{**base, **changes})


def closed_form(w, s_up, s_down, b_max, b_min, n_up, n_down) -> float:
    """n_up up and n_down down soft-bounds pulses in the continuous limit: the weight relaxes
    towards w* = drive/r at rate r (each up pulse moves by s_up·(1 − w/b_max), each down pulse by
    s_down·(1 − w/b_min), so dw/dn is linear in w)."""
    r = n_up * s_up / b_max + n_down * s_down / -b_min
    drive = n_up * s_up - n_down * s_down
    if r == 0:
        return w + drive
    return drive / r + (w - drive / r) * math.exp(-r)


# --- the IO pass ------------------------------------------------------------------------------------

@pytest.mark.parametrize("res, bound, step", [
    (0.0, 1.0, 0.0), (-1.0, 1.0, 0.0),        # no quantisation
    (1 / 126, 1.0, 2 / 126), (126, 1.0, 2 / 126),  # a fraction, or a number of steps over ±bound
    (0.25, 3.0, 1.5), (2, 3.0, 3.0), (4, 1.0, 0.5), (1.0, 2.0, 4.0),
])
def test_resolution_step_spans_the_signed_range(res, bound, step):
    assert T._res_step(res, bound) == pytest.approx(step, rel=1e-12)


def test_quantize_rounds_to_the_step_and_step_zero_is_exact():
    x = torch.tensor([0.3, -0.8, 1.4, 0.0])
    assert torch.equal(T._quantize(x, 0.0), x)
    torch.testing.assert_close(T._quantize(x, 0.5), torch.tensor([0.5, -1.0, 1.5, 0.0]))


def test_one_pass_quantises_clips_and_flags_saturation():
    """DAC step 0.5 (inp_res 0.25 over ±1), ADC step 0.5 (out_res 0.125 over ±2).
    x = (0.3, −0.8, 1.4) → DAC (0.5, −1, 1.5) → clipped to ±1: (0.5, −1, 1).
    Rows: (0.9, 0.1, 0) → 0.35 → 0.5; (2, 0, 3) → 4 → 2 (over); (−2, 0, −3) → −2 (over only with
    bm_test_negative_bound); (0.2, 0, 0.3) → 0.4 → 0.5."""
    io = exact_io(inp_res=0.25, out_res=0.125, out_bound=2.0)
    x = torch.tensor([[[0.3, -0.8, 1.4]]])
    w = torch.tensor([[[0.9, 0.1, 0.0], [2.0, 0.0, 3.0], [-2.0, 0.0, -3.0], [0.2, 0.0, 0.3]]])
    y, over = T._one_pass(w, x, io)
    torch.testing.assert_close(y, torch.tensor([[[0.5, 2.0, -2.0, 0.5]]]))
    assert over.shape == (1, 1, 1) and bool(over)
    _, over = T._one_pass(w[:, 2:], x, io)
    assert bool(over)  # the negative bound tested (AIHWKit's default)
    _, over = T._one_pass(w[:, 2:], x, exact_io(inp_res=0.25, out_res=0.125, out_bound=2.0,
                                                bm_test_negative_bound=False))
    assert not bool(over)
    _, over = T._one_pass(w[:, :1], x, io)
    assert not bool(over)


def test_one_pass_noise_terms_have_their_configured_scales(monkeypatch):
    """With the standard normal draws replaced by 2: output noise adds 2·out_noise, additive
    weight noise adds 2·w_noise·‖x‖ per sample (‖x‖ = 2 and 1, inp_bound 2); another weight-noise
    type adds none."""
    monkeypatch.setattr(T, "gaussian_like", lambda y, noise_list=None: torch.full_like(y, 2.0))
    x = torch.tensor([[[1.2, 1.6], [0.6, 0.8]]])
    w = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    clean = torch.tensor([[[1.2, 1.6, 2.8], [0.6, 0.8, 1.4]]])
    y, _ = T._one_pass(w, x, exact_io(inp_bound=2.0, out_noise=0.25))
    torch.testing.assert_close(y, clean + 0.5)
    y, _ = T._one_pass(w, x, exact_io(inp_bound=2.0, w_noise=0.5,
                                      w_noise_type="additive_constant"))
    torch.testing.assert_close(y, clean + torch.tensor([[[2.0], [1.0]]]))
    y, _ = T._one_pass(w, x, exact_io(inp_bound=2.0, w_noise=0.5, w_noise_type="none"))
    torch.testing.assert_close(y, clean)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_an_output_exactly_at_the_bound_is_not_managed(sign, monkeypatch):
    """AIHWKit tests ``y > out_bound`` (and ``y < −out_bound``), strictly: an output of exactly
    ±1 (0.75 plus output noise 0.25 with the draw at ±1) is read once; one just above (0.875 +
    0.25) is redone at half the input (0.4375 + 0.25, times 2 = 1.375). A redo shows because the
    noise does not halve with the input."""
    monkeypatch.setattr(T, "gaussian_like", lambda y, noise_list=None: torch.full_like(y, sign))
    io = exact_io(out_bound=1.0, out_noise=0.25, bound_management="iterative")
    w = torch.tensor([[[1.0]]])
    x = sign * torch.tensor([[[0.75], [0.875]]])
    torch.testing.assert_close(T.analog_mvm(w, x, io), sign * torch.tensor([[[1.0], [1.375]]]))


def test_analog_mvm_noise_management_divides_by_the_largest_input():
    """ABS_MAX: x = (2, −4) becomes (0.5, −1) before the DAC (step 0.5: 0.5 stays, −1 stays) and
    the output is scaled back by 4; without it, x clips at ±1 first. An all-zero input gives 0.
    is_perfect is the plain product."""
    w = torch.tensor([[[1.0, 0.25]]])
    x = torch.tensor([[[2.0, -4.0], [0.0, 0.0]]])
    y = T.analog_mvm(w, x, exact_io(inp_res=0.25, noise_management="abs_max"))
    torch.testing.assert_close(y, torch.tensor([[[1.0], [0.0]]]))  # (0.5 − 0.25)·4
    y = T.analog_mvm(w, x, exact_io(inp_res=0.25))
    torch.testing.assert_close(y, torch.tensor([[[0.75], [0.0]]]))  # 1 − 0.25
    y = T.analog_mvm(w, x, IOParameters(is_perfect=True))
    torch.testing.assert_close(y, torch.tensor([[[1.0], [0.0]]]))
    # inputs below 1 are scaled up: (0.25, −0.5) → (0.5, −1) → 0.25, times 0.5
    y = T.analog_mvm(w, torch.tensor([[[0.25, -0.5]]]),
                     exact_io(inp_res=0.25, noise_management="abs_max"))
    torch.testing.assert_close(y, torch.tensor([[[0.125]]]))


def test_bound_management_halves_the_input_until_the_output_fits():
    """ITERATIVE bound management (out_bound 1): an output of 3 passes at input/4 (0.75) and is
    scaled back to 3 exactly; one of 0.5 is read once; a sample is redone alone (the other keeps
    its first read). The reduction stops once it exceeds max_bm_factor (2: reads at 1, 2, 4, then
    no more; an output of 10 ends at 4·1 = 4) or max_bm_res/inp_step;
    without bound management it stays clipped at 1. Negative outputs are managed alike."""
    w = torch.tensor([[[30.0]]])
    x = torch.tensor([[[0.1], [1 / 60], [-0.1], [1 / 3], [1.0]]])  # outputs 3, 0.5, −3, 10, 30
    io = exact_io(out_bound=1.0, bound_management="iterative", max_bm_factor=1000)
    torch.testing.assert_close(T.analog_mvm(w, x, io, bound_management=False),
                               torch.tensor([[[1.0], [0.5], [-1.0], [1.0], [1.0]]]))
    torch.testing.assert_close(T.analog_mvm(w, x, io), 30 * x)
    io = exact_io(out_bound=1.0, bound_management="iterative", max_bm_factor=2)
    torch.testing.assert_close(T.analog_mvm(w, x, io),
                               torch.tensor([[[3.0], [0.5], [-3.0], [4.0], [4.0]]]))
    # inp_res 1/16: an input step of 1/8, so max_bm_res 0.5 limits the reduction to 4 (→ 8)
    io = exact_io(out_bound=1.0, bound_management="iterative", max_bm_factor=1000,
                  max_bm_res=0.5, inp_res=1 / 16)
    w = torch.tensor([[[100.0]]])  # reads at 1, 2, 4, 8 (12.5, clipped to 1): 1·8
    torch.testing.assert_close(T.analog_mvm(w, torch.tensor([[[1.0]]]), io),
                               torch.tensor([[[8.0]]]))
    io = exact_io(out_bound=1.0, bound_management="none")
    torch.testing.assert_close(T.analog_mvm(w, torch.tensor([[[1.0]]]), io),
                               torch.tensor([[[1.0]]]))
    # several inputs and outputs: the reduction is per sample, over all its outputs
    io = exact_io(out_bound=1.0, bound_management="iterative")
    w = torch.tensor([[[1.0, 1.0, 1.0], [0.5, 0.0, 0.0]]])
    x = torch.tensor([[[1.0, 1.0, 1.0], [0.2, 0.2, 0.2]]])
    torch.testing.assert_close(T.analog_mvm(w, x, io), torch.tensor([[[3.0, 0.5], [0.6, 0.1]]]))


# --- the pulse trains -------------------------------------------------------------------------------

def test_pulse_probabilities_by_hand():
    """lr/dw_min = 10, x = (0.5, −1), d = (0.2, −0.4) (x_max 1, d_max 0.4), desired_bl 31:
    - both managements: k = 10·1·0.4 = 4 slots; x scaled by √(10/4·0.4/1) = 1, d by
      √(10/4·1/0.4) = 2.5: p = (0.5, 1), q = (0.5, 1);
    - without update management both sides are scaled by √(10/4) (p clips at 1): the mean count
      4·p·q is still 10·|x d| = 1 on device (0, 0);
    - without bit-length management: 31 slots, both scaled by √(10/31)·…: 31·p·q = 10·|x d|;
    - um_grad_scale 0.5 halves q; lr 0.1 gives k = 40 > 31: 31 slots, d_max scaled by 31/40 so
      x's largest element fires in every slot (p = 1), q = |d|·√(100/31/0.31) clipped at 1."""
    dw = torch.full((1, 1, 1), 1e-3)
    x, d = torch.tensor([[[0.5, -1.0]]]), torch.tensor([[[0.2, -0.4]]])
    want = 10 * (d.transpose(-1, -2) * x).abs()  # (out, in) expected counts
    p, q, bl = T.pulse_probabilities(x, d, 0.01, dw, 31)
    assert float(bl) == 4
    torch.testing.assert_close(p, torch.tensor([[[0.5, 1.0]]]))
    torch.testing.assert_close(q, torch.tensor([[[0.5, 1.0]]]))
    p, q, bl = T.pulse_probabilities(x, d, 0.01, dw, 31, update_management=False)
    assert float(bl) == 4
    torch.testing.assert_close(p, torch.tensor([[[0.5 * math.sqrt(2.5), 1.0]]]))  # clipped at 1
    torch.testing.assert_close(q, torch.tensor([[[0.2, 0.4]]]) * math.sqrt(2.5))
    assert float(bl * q[0, 0, 0] * p[0, 0, 0]) == pytest.approx(1.0)
    p, q, bl = T.pulse_probabilities(x, d, 0.01, dw, 31, bl_management=False)
    assert float(bl) == 31
    torch.testing.assert_close(p, torch.tensor([[[0.5, 1.0]]]) * math.sqrt(4 / 31))
    torch.testing.assert_close(bl * q.transpose(-1, -2) * p, want)
    _, q, _ = T.pulse_probabilities(x, d, 0.01, dw, 31, um_grad_scale=0.5)
    torch.testing.assert_close(q, torch.tensor([[[0.25, 0.5]]]))
    p, q, bl = T.pulse_probabilities(x, d, 0.1, dw, 31)
    assert float(bl) == 31
    torch.testing.assert_close(p, torch.tensor([[[0.5, 1.0]]]))
    torch.testing.assert_close(q, torch.tensor([[[0.2 * 10 / 3.1, 1.0]]]))
    # a small step: k = 10·0.1·0.04 = 0.04 → one slot
    p, q, bl = T.pulse_probabilities(x * 0.1, d * 0.1, 0.01, dw, 31)
    assert float(bl) == 1


@pytest.mark.parametrize("bl_management", [True, False])
@pytest.mark.parametrize("update_management", [True, False])
def test_pulse_probabilities_of_a_sample_without_input_or_error_are_zero(bl_management,
                                                                         update_management):
    """A sample whose input (or error) is all zero fires no pulse: p = q = 0 and no slot, finite
    (no 0/0) under every management setting; the live sample beside it is unaffected."""
    dw = torch.full((1, 1, 1), 1e-3)
    x = torch.tensor([[[0.5, -1.0], [0.0, 0.0], [0.5, 1.0], [0.0, 0.0]]])
    d = torch.tensor([[[0.2, -0.4], [0.2, 0.4], [0.0, 0.0], [0.0, 0.0]]])
    p, q, bl = T.pulse_probabilities(x, d, 0.01, dw, 31, bl_management, update_management)
    assert bl.flatten().tolist() == [4.0 if bl_management else 31.0, 0.0, 0.0, 0.0]
    assert float(p[:, 1:].abs().sum() + q[:, 1:].abs().sum()) == 0
    assert torch.isfinite(p).all() and torch.isfinite(q).all()
    assert float(p[0, 0, 1]) > 0 and float(q[0, 0, 1]) > 0


def dense(fired, shape) -> tuple[torch.Tensor, torch.Tensor]:
    """(devices, up, down) of :func:`sparse_counts` as dense (R, in, out) up and down counts."""
    up, down = torch.zeros(shape), torch.zeros(shape)
    if fired is not None:
        devices, n_up, n_down = fired
        up.view(-1)[devices] = n_up.float()
        down.view(-1)[devices] = n_down.float()
    return up, down


@pytest.mark.parametrize("n_in, n_out", [(3, 2), (2, 3), (24, 12), (12, 24)])
def test_certain_pulse_trains_meet_on_every_slot(n_in, n_out):
    """Probabilities 1 on some lines, 0 on the others: every slot of a sample fires on the same
    lines, so a device on two firing lines counts bl pulses, down where x_j·d_i > 0. Two runs of
    two samples (bl 3 and 2), counted per run; the larger arrays take the sparse path."""
    R, N = 2, 2
    x = torch.zeros(R, N, n_in)
    d = torch.zeros(R, N, n_out)
    x[0, 0, 0], x[0, 0, 1], d[0, 0, 0], d[0, 0, 1] = 1.0, -2.0, 0.5, -0.5  # run 0, sample 0, bl 3
    x[0, 1, 1], d[0, 1, 1] = 1.0, 1.0                                       # run 0, sample 1, bl 2
    x[1, 0, 0], d[1, 0, 1] = -1.0, 2.0                                      # run 1, sample 0, bl 3
    p, q = (x != 0).float(), (d != 0).float()
    bl = torch.tensor([3.0, 2.0]).view(1, N, 1).expand(R, N, 1)
    up, down = dense(T.sparse_counts(x, d, p, q, bl, None, torch.Size((R, n_in, n_out))),
                     (R, n_in, n_out))
    want_up, want_down = torch.zeros(R, n_in, n_out), torch.zeros(R, n_in, n_out)
    want_down[0, 0, 0] = 3   # x 1 · d 0.5 > 0
    want_up[0, 0, 1] = 3     # x 1 · d −0.5
    want_up[0, 1, 0] = 3     # x −2 · d 0.5
    want_down[0, 1, 1] = 3 + 2  # x −2 · d −0.5, then sample 1: x 1 · d 1
    want_up[1, 0, 1] = 3     # x −1 · d 2
    torch.testing.assert_close(up, want_up)
    torch.testing.assert_close(down, want_down)


def test_a_transfer_column_drives_its_own_line():
    """x's one input drives the array's line ``lines[0]`` (here 2 of 3)."""
    x, d = torch.ones(1, 1, 1), torch.tensor([[[1.0, -1.0]]])
    shape = torch.Size((1, 3, 2))
    up, down = dense(T.sparse_counts(x, d, torch.ones(1, 1, 1), torch.ones(1, 1, 2),
                                     torch.full((1, 1, 1), 2.0), torch.tensor([2]), shape), shape)
    want_up, want_down = torch.zeros(shape), torch.zeros(shape)
    want_down[0, 2, 0], want_up[0, 2, 1] = 2, 2
    torch.testing.assert_close(up, want_up)
    torch.testing.assert_close(down, want_down)


@pytest.mark.parametrize("n_in, n_out", [(1, 1), (1, 3), (3, 1)])
def test_a_single_coincidence_is_counted(n_in, n_out):
    """One slot, one firing line on each side (the first of each): exactly one pulse, down."""
    x, d = torch.zeros(1, 1, n_in), torch.zeros(1, 1, n_out)
    x[0, 0, 0], d[0, 0, 0] = 1.0, 1.0
    shape = torch.Size((1, n_in, n_out))
    up, down = dense(T.sparse_counts(x, d, (x != 0).float(), (d != 0).float(), torch.ones(1, 1, 1),
                                     None, shape), shape)
    want = torch.zeros(shape)
    want[0, 0, 0] = 1
    assert torch.equal(down, want) and float(up.abs().sum()) == 0


def test_no_pulse_gives_none():
    x, d = torch.ones(1, 1, 2), torch.ones(1, 1, 2)
    shape = torch.Size((1, 2, 2))
    assert T.sparse_counts(x, d, torch.ones(1, 1, 2), torch.ones(1, 1, 2), torch.zeros(1, 1, 1),
                           None, shape) is None
    assert T.sparse_counts(x, d, torch.zeros(1, 1, 2), torch.ones(1, 1, 2), torch.ones(1, 1, 1),
                           None, shape) is None
    assert T.sparse_counts(x, d, torch.ones(1, 1, 2), torch.zeros(1, 1, 2), torch.ones(1, 1, 1),
                           None, shape) is None


def test_count_moments_by_hand():
    """One device, p = q = 0.5, bl = 4, a down pulse (x·d > 0): mean count bl·p·q = 1, the
    independent part's variance bl·p(1−p)·q(1−q) = 0.25. With the shared draws at 1, the trains'
    shared deviations A = √(bl·p(1−p)) = 1 and B = √(bl·q(1−q)) = 1 add q·A + p·B = 1: count 2.
    An up pulse (x·d < 0) counts with sign −1; a second sample adds."""
    p, q, bl = torch.full((1, 1, 1), 0.5), torch.full((1, 1, 1), 0.5), torch.full((1, 1, 1), 4.0)
    one, zero = torch.ones(1, 1, 1), torch.zeros(1, 1, 1)
    total, signed, var, var_signed = T.count_moments(one, one, p, q, bl, zero, zero)
    assert [float(t) for t in (total, signed, var, var_signed)] == [1.0, 1.0, 0.25, 0.25]
    total, signed, var, var_signed = T.count_moments(one, -one, p, q, bl, one, one)
    assert [float(t) for t in (total, signed, var, var_signed)] == [2.0, -2.0, 0.25, -0.25]
    total, signed, _, _ = T.count_moments(one, one, p, q, bl, one, zero)
    assert (float(total), float(signed)) == (1.5, 1.5)
    total, signed, _, _ = T.count_moments(one, one, p, q, bl, zero, one)
    assert (float(total), float(signed)) == (1.5, 1.5)
    x2 = torch.tensor([[[1.0], [-1.0]]])
    p2, q2, bl2 = (t.expand(1, 2, 1) for t in (p, q, bl))
    total, signed, var, var_signed = T.count_moments(x2, torch.ones(1, 2, 1), p2, q2, bl2,
                                                     torch.zeros(1, 2, 1), torch.zeros(1, 2, 1))
    assert [float(t) for t in (total, signed, var, var_signed)] == [2.0, 0.0, 0.5, 0.0]
    # devices differ: p = (0.5, 1) on two inputs, q = 0.25 on one output, bl 1
    total, _, var, _ = T.count_moments(torch.ones(1, 1, 2), torch.ones(1, 1, 1),
                                       torch.tensor([[[0.5, 1.0]]]), torch.full((1, 1, 1), 0.25),
                                       torch.ones(1, 1, 1), torch.zeros(1, 1, 2),
                                       torch.zeros(1, 1, 1))
    torch.testing.assert_close(total, torch.tensor([[[0.125], [0.25]]]))
    torch.testing.assert_close(var, torch.tensor([[[0.25 * 0.1875], [0.0]]]))


# --- the soft-bounds closed form -------------------------------------------------------------------

@pytest.mark.parametrize("w, s_up, s_down, b_max, b_min, n_up, n_down", [
    (0.0, 0.1, 0.1, 1.0, -1.0, 2.0, 0.0),     # r = 0.2: up towards b_max
    (0.3, 0.05, 0.2, 0.8, -0.5, 0.0, 3.0),    # down towards b_min
    (0.3, 0.05, 0.2, 0.8, -0.5, 4.0, 1.0),    # both
    (-0.2, 0.1, 0.1, 1.0, -2.0, 0.005, 0.0),  # r = 5e-4: the series branch
    (0.5, 0.1, 0.1, 1.0, -1.0, 0.0, 0.0),     # no pulse
])
def test_closed_form_of_soft_bounds_pulses(w, s_up, s_down, b_max, b_min, n_up, n_down):
    args = [torch.tensor([v], dtype=F64) for v in (w, s_up, s_down, b_max, b_min, n_up, n_down)]
    got = float(T._soft_bounds_mean(*args))
    assert got == pytest.approx(closed_form(w, s_up, s_down, b_max, b_min, n_up, n_down),
                                rel=1e-12, abs=1e-10)  # the series: r²/6 of the drive


def test_closed_form_is_pulse_by_pulse_for_small_steps():
    """30 up pulses of 10⁻⁴ from w = 0.5 (b_max 1): pulse by pulse w ← w + s(1 − w)."""
    w = 0.5
    for _ in range(30):
        w += 1e-4 * (1 - w)
    one = torch.ones(1, dtype=F64)
    got = T._soft_bounds_mean(0.5 * one, 1e-4 * one, 1e-4 * one, one, -one, 30 * one, 0 * one)
    assert float(got) == pytest.approx(w, rel=1e-6)  # e^{−ns} for (1 − s)^n: O(n·s²)


# --- the pulsed update in both modes ----------------------------------------------------------------

DW_MIN = 2.0 ** -6  # exact in float32: lr/dw_min lands on a whole number of slots


def spread_array(runs: int, out_size: int, in_size: int, c2c: float = 0.0,
                 seed: int = 0) -> T.SoftBoundsArray:
    """An array whose devices all differ (steps, bounds, weights), so that a device read or
    written in the wrong place shows."""
    array = T.SoftBoundsArray([device(dw_min=DW_MIN, dw_min_std=c2c)] * runs, out_size,
                               in_size)
    g = torch.Generator().manual_seed(seed)

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(runs, out_size, in_size, generator=g)

    array.scale_up.copy_(uniform(0.005, 0.02))
    array.scale_down.copy_(uniform(0.005, 0.02))
    array.max_bound.copy_(uniform(0.5, 1.5))
    array.min_bound.copy_(uniform(-1.5, -0.5))
    array.weight.copy_(uniform(-0.4, 0.4))
    return array


def expected_update(array: T.SoftBoundsArray, x: torch.Tensor, d: torch.Tensor, lr: float,
                    column: int | None = None) -> torch.Tensor:
    """``W ← W − lr·Σ_b d_b x_bᵀ`` by soft-bounds pulses: device (i, j) of run r gets
    lr·|x_j d_i|/dw_min pulses per sample (no bit-length cap in these cases), down where
    x_j·d_i > 0, and moves by the closed form; x's input k drives line ``column`` if given."""
    new = array.weight.clone()
    R, n_out, n_in = new.shape
    for r in range(R):
        for i in range(n_out):
            for j in range(n_in) if column is None else [column]:
                k = 0 if column is not None else j
                prod = x[r, :, k] * d[r, :, i]
                counts = lr * prod.abs() / DW_MIN
                n_down, n_up = float(counts[prod > 0].sum()), float(counts[prod < 0].sum())
                args = [float(t[r, i, j]) for t in (array.weight, array.scale_up,
                                                     array.scale_down, array.max_bound,
                                                     array.min_bound)]
                w = closed_form(*args, n_up, n_down)
                new[r, i, j] = min(max(w, args[4]), args[3])
    return new


@pytest.fixture
def no_update_noise(monkeypatch):
    """The moment mode's shared draws at 0 and its remaining noise at 0."""
    monkeypatch.setattr(T.torch, "randn_like", lambda t: torch.zeros_like(t))
    monkeypatch.setattr(T, "unit_noise", lambda octets, shape: torch.zeros(shape))


@pytest.mark.parametrize("mode", ["moment", "pulse"])
def test_update_moves_each_device_by_its_count_of_soft_bounds_pulses(mode, no_update_noise):
    """Two runs, two samples with inputs of ±1 or 0 and errors of ±0.5 or 0 (and the reverse), lr
    4·dw_min (k = 2 slots, every probability 0 or 1: certain pulse trains, exact counts in pulse mode
    too); inputs silent in a whole run (line 1 of both runs, line 2 of run 1) leave their devices
    exactly as they are. Moment mode: any values, the mean counts."""
    R, n_out, n_in = 2, 3, 4
    array = spread_array(R, n_out, n_in)
    x = torch.tensor([[[1.0, 0.0, -1.0, 1.0], [0.5, 0.0, 0.5, 0.0]],
                      [[-1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, -0.5]]])
    d = torch.tensor([[[0.5, -0.5, 0.0], [-1.0, 1.0, 1.0]],
                      [[0.5, 0.5, -0.5], [1.0, 0.0, -1.0]]])
    want = expected_update(array, x, d, 4 * DW_MIN)
    before = array.weight.clone()
    array.update(x, d, 4 * DW_MIN, UpdateParameters(), mode)
    torch.testing.assert_close(array.weight, want, rtol=1e-5, atol=1e-6)
    assert torch.equal(array.weight[:, :, 1], before[:, :, 1])
    assert torch.equal(array.weight[1, :, 2], before[1, :, 2])


def test_moment_update_of_any_values_moves_by_the_mean_counts(no_update_noise):
    """Three runs (the counts of all runs come from one batched product), any inputs and errors,
    a silent line."""
    g = torch.Generator().manual_seed(1)
    array = spread_array(3, 5, 6)
    x, d = torch.randn(3, 3, 6, generator=g), torch.randn(3, 3, 5, generator=g)
    x[:, :, 4] = 0  # a silent line
    want = expected_update(array, x, d, 0.003)
    array.update(x, d, 0.003, UpdateParameters(), "moment")
    torch.testing.assert_close(array.weight, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["moment", "pulse"])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_update_clips_at_the_bounds(mode, sign, monkeypatch):
    """16 pulses towards a bound from 0.9 of it, with a cycle-to-cycle spread of 5 and every
    noise draw at ±1 (towards the bound; the moment mode's shared draws at 0): the weight would
    overshoot and is clipped exactly at the bound (1, or −0.8 below)."""
    shared = sign if mode == "pulse" else 0.0
    monkeypatch.setattr(T.torch, "randn_like", lambda t: torch.full_like(t, shared))
    monkeypatch.setattr(T, "unit_noise", lambda octets, shape: torch.full(shape, sign))
    array = T.SoftBoundsArray([device(dw_min=DW_MIN, dw_min_std=5.0, w_min=-0.8)], 1, 1)
    bound = 1.0 if sign > 0 else -0.8
    array.weight.fill_(0.9 * bound)
    array.update(torch.ones(1, 1, 1), -sign * torch.ones(1, 1, 1), 16 * DW_MIN,
                 UpdateParameters(), mode)
    assert float(array.weight) == float(array.max_bound if sign > 0 else array.min_bound)


def test_moment_update_noise_terms_by_hand(monkeypatch):
    """One device, x = d = 1 at lr/dw_min = 0.25: one slot, p = q = 0.5, a mean of 0.25 down
    pulses. With the shared draws at +1 the count becomes p·(q + √(q(1−q))) + √(p(1−p))·q = 0.75
    (:func:`count_moments`); the remaining noise, at +1, adds its std: √(a²·v + c2c²·s²·n) with a
    = s·(1 − w'/b_min) the step of one down pulse at the new weight w', v = p(1−p)q(1−q) = 1/16
    the independent part's variance and c2c = 0.5 the cycle-to-cycle spread."""
    monkeypatch.setattr(T.torch, "randn_like", lambda t: torch.ones_like(t))
    monkeypatch.setattr(T, "unit_noise", lambda octets, shape: torch.ones(shape))
    array = T.SoftBoundsArray([device(dw_min_std=0.5, w_min=-0.5)], 1, 1)
    array.weight.fill_(0.2)
    array.update(torch.ones(1, 1, 1), torch.ones(1, 1, 1), 0.0025, UpdateParameters(), "moment")
    mean = closed_form(0.2, 0.01, 0.01, 1.0, -0.5, 0.0, 0.75)
    a = 0.01 * (1 + mean / 0.5)  # b_min = −0.5
    want = mean + math.sqrt(a * a / 16 + 0.25 * 1e-4 * 0.75)
    assert float(array.weight) == pytest.approx(want, rel=1e-6)


def test_moment_update_noise_of_an_up_pulse_by_hand(monkeypatch):
    """As above with x·d < 0 (an up pulse) at w = −0.2 (b_max 0.8, s_up 0.02): a = s_up·(1 − w'/b_max)."""
    monkeypatch.setattr(T.torch, "randn_like", lambda t: torch.zeros_like(t))
    monkeypatch.setattr(T, "unit_noise", lambda octets, shape: torch.ones(shape))
    array = T.SoftBoundsArray([device(dw_min_std=0.5)], 1, 1)
    array.weight.fill_(-0.2)
    array.max_bound.fill_(0.8)
    array.scale_up.fill_(0.02)
    array.update(torch.ones(1, 1, 1), -torch.ones(1, 1, 1), 0.0025, UpdateParameters(), "moment")
    mean = closed_form(-0.2, 0.02, 0.01, 0.8, -1.0, 0.25, 0.0)
    a = 0.02 * (1 - mean / 0.8)
    want = mean + math.sqrt(a * a / 16 + 0.25 * 4e-4 * 0.25)
    assert float(array.weight) == pytest.approx(want, rel=1e-6)


def test_pulse_mode_cycle_to_cycle_noise_by_hand(monkeypatch):
    """Certain trains (x = d = ±1, lr/dw_min = 2: two pulses per device): the weight moves by the
    closed form plus c2c·√(s_up²·n_up + s_down²·n_down) with the Gaussian draw at +1; the two runs
    have c2c 0.1 and 0.4."""
    monkeypatch.setattr(T.torch, "randn_like", lambda t: torch.ones_like(t))
    array = T.SoftBoundsArray([device(dw_min=DW_MIN, dw_min_std=c2c) for c2c in (0.1, 0.4)], 1, 2)
    array.weight.fill_(0.1)
    array.scale_up.fill_(0.02)
    x = torch.tensor([[[1.0, -1.0]], [[1.0, -1.0]]])
    array.update(x, torch.ones(2, 1, 1), 2 * DW_MIN, UpdateParameters(), "pulse")
    down = closed_form(0.1, 0.02, DW_MIN, 1.0, -1.0, 0.0, 2.0)  # x·d > 0
    up = closed_form(0.1, 0.02, DW_MIN, 1.0, -1.0, 2.0, 0.0)
    for r, c2c in enumerate((0.1, 0.4)):
        want = [down + c2c * DW_MIN * math.sqrt(2), up + c2c * 0.02 * math.sqrt(2)]
        torch.testing.assert_close(array.weight[r, 0], torch.tensor(want), rtol=1e-5, atol=1e-7)


def test_active_inputs_lists_the_live_lines_first():
    """Live lines in order, a run with fewer padded with its first dead lines; None when more
    than 90 % of the lines are live (9 of 10 is not, 10 of 10 is)."""
    x = torch.zeros(2, 2, 10)
    x[0, 0, [1, 3, 4, 5, 6, 7, 8, 9]] = 1.0
    x[0, 1, 0] = -1.0     # run 0: 9 live lines, line 2 dead
    x[1, 1, [2, 5]] = 1.0  # run 1: 2 live lines
    rows = T.active_inputs(x)
    assert rows.tolist() == [[0, 1, 3, 4, 5, 6, 7, 8, 9], [2, 5, 0, 1, 3, 4, 6, 7, 8]]
    x[0, 0, 2] = 1.0
    assert T.active_inputs(x) is None
    assert T.active_inputs(torch.zeros(1, 1, 4)).shape == (1, 0)


# --- the tile: plain updates and the Tiki-Taka transfer ---------------------------------------------

def test_floating_point_tile_update_is_sgd_on_every_stashed_sample():
    """W ← W − lr·Σ_b d_b x_bᵀ over the samples of every stash since the last update; an update
    without a stash changes nothing."""
    from utils.analog_torch.config import FloatingPointRPUConfig

    tile = T.AnalogTile(2, 2, [FloatingPointRPUConfig()])
    tile.set_weights(torch.tensor([[[1.0, 2.0], [3.0, 4.0]]]))
    tile.apply_update(0.5)
    torch.testing.assert_close(tile.weight, torch.tensor([[[1.0, 2.0], [3.0, 4.0]]]))
    tile.stash(torch.tensor([[[1.0, 0.0]]]), torch.tensor([[[2.0, 0.0]]]))
    tile.stash(torch.tensor([[[0.0, 1.0]]]), torch.tensor([[[0.0, 4.0]]]))
    tile.apply_update(0.5)
    torch.testing.assert_close(tile.weight, torch.tensor([[[0.0, 2.0], [3.0, 2.0]]]))
    tile.apply_update(0.5)  # the stash was used up
    torch.testing.assert_close(tile.weight, torch.tensor([[[0.0, 2.0], [3.0, 2.0]]]))


def single_tile(mode: str, seed: int = 0) -> T.AnalogTile:
    tile = T.AnalogTile(3, 4, [SingleRPUConfig(device=device(dw_min=DW_MIN))] * 2,
                        update_mode=mode)
    tile.array = spread_array(2, 3, 4, seed=seed)
    return tile


@pytest.mark.parametrize("mode", ["moment", "pulse"])
def test_single_device_tile_updates_with_both_stashes(mode, no_update_noise):
    tile = single_tile(mode)
    x1 = torch.tensor([[[1.0, 0.0, -1.0, 1.0]], [[-1.0, 0.0, 0.0, 1.0]]])
    d1 = torch.tensor([[[0.5, -0.5, 0.0]], [[0.5, 0.5, -0.5]]])
    x2 = torch.tensor([[[0.5, 0.0, 0.5, 0.0]], [[0.0, 0.0, 0.0, -0.5]]])
    d2 = torch.tensor([[[-1.0, 1.0, 1.0]], [[1.0, 0.0, -1.0]]])
    want = expected_update(tile.array, torch.cat([x1, x2], 1), torch.cat([d1, d2], 1),
                           4 * DW_MIN)
    tile.stash(x1, d1)
    tile.stash(x2, d2)
    tile.apply_update(4 * DW_MIN)
    torch.testing.assert_close(tile.weight, want, rtol=1e-5, atol=1e-6)


def tiki_taka_tile(mode: str = "moment", n_in: int = 3, **compound) -> T.AnalogTile:
    """A Tiki-Taka tile whose transfer reads A exactly (no noise, no quantisation); A held at
    distinct values away from 0 (an update without error does not move it)."""
    unit = [device(dw_min=DW_MIN), device(dw_min=DW_MIN)]
    settings = dict(fast_lr=0.5, transfer_lr=2.0, transfer_forward=exact_io())
    config = UnitCellRPUConfig(device=TransferCompound(unit_cell_devices=unit,
                                                       **{**settings, **compound}))
    tile = T.AnalogTile(2, n_in, [config], update_mode=mode)
    tile.slow = spread_array(1, 2, n_in, seed=3)
    tile.fast.weight.copy_(torch.tensor([[0.3, -0.2, 0.1, 0.4][:n_in], [-0.1, 0.25, 0.2, -0.3][:n_in]]))
    return tile


def transfer(tile: T.AnalogTile, lr: float) -> None:
    """One mini-batch without error: only the transfer writes."""
    tile.stash(torch.zeros(1, 1, tile.in_size), torch.zeros(1, 1, tile.out_size))
    tile.apply_update(lr)


@pytest.mark.parametrize("mode", ["moment", "pulse"])
def test_transfer_writes_a_column_of_a_onto_c_in_order_and_wraps(mode, no_update_noise):
    """Each mini-batch writes column c of A onto column c of C, c = 0, 1, 2, 0: C ← C + lr_t·A[:, c]
    by soft-bounds pulses, lr_t = transfer_lr·lr (scale_transfer_lr) = 2·lr; the other columns
    stay as they are. In pulse mode A's entries give uncertain trains, so there only the order
    (which column moved) is checked, at a larger lr (≈ 4 pulses per device; seeded)."""
    torch.manual_seed(0)
    tile = tiki_taka_tile(mode)
    lr = 0.01 if mode == "moment" else 0.1
    for col in (0, 1, 2, 0):
        before = tile.weight.clone()
        a = tile.fast.weight[:, :, col:col + 1].clone()
        want = expected_update(tile.slow, torch.ones(1, 1, 1), -a.transpose(1, 2), 2 * lr,
                               column=col)
        transfer(tile, lr)
        moved = (tile.weight != before)[0].any(0).nonzero().flatten().tolist()
        assert moved == [col]
        if mode == "moment":
            torch.testing.assert_close(tile.weight, want, rtol=1e-5, atol=1e-7)


def test_transfer_rate_follows_the_scheduled_lr_only_when_scaled(no_update_noise):
    """With scale_transfer_lr off the transfer writes at transfer_lr (0.05) whatever the SGD lr."""
    for lr in (0.01, 0.02):
        tile = tiki_taka_tile(scale_transfer_lr=False, transfer_lr=0.05)
        a = tile.fast.weight[:, :, :1].clone()
        want = expected_update(tile.slow, torch.ones(1, 1, 1), -a.transpose(1, 2), 0.05,
                               column=0)
        transfer(tile, lr)
        torch.testing.assert_close(tile.weight, want, rtol=1e-5, atol=1e-7)


def test_transfer_every_and_reads_per_transfer(no_update_noise):
    """transfer_every 1.5 rounds up to 2: mini-batches 2 and 4 transfer; n_reads_per_transfer 2
    writes two columns each time (0, 1, then 2, 0)."""
    tile = tiki_taka_tile(transfer_every=1.5, n_reads_per_transfer=2)
    moved = []
    for _ in range(4):
        before = tile.weight.clone()
        transfer(tile, 0.01)
        moved.append((tile.weight != before)[0].any(0).nonzero().flatten().tolist())
    assert moved == [[], [0, 1], [], [0, 2]]


@pytest.mark.parametrize("fast_lr, used", [(0.5, 0.5), (0.0, 4 * DW_MIN)])
def test_gradient_is_written_onto_a_at_fast_lr(fast_lr, used, no_update_noise):
    """A takes the pulsed update at fast_lr (or at the SGD lr where fast_lr is 0); then the
    transfer reads the new A. x = (1, 0, −1), d = (0.5, −0.5)."""
    tile = tiki_taka_tile(fast_lr=fast_lr)
    x, d = torch.tensor([[[1.0, 0.0, -1.0]]]), torch.tensor([[[0.5, -0.5]]])
    want_a = expected_update(tile.fast, x, d, used)
    tile.stash(x, d)
    tile.apply_update(4 * DW_MIN)
    torch.testing.assert_close(tile.fast.weight, want_a, rtol=1e-5, atol=1e-7)
