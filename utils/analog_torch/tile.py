"""Analog tiles in plain PyTorch: R independent runs of one crossbar, simulated together.

A tile holds, for each of R runs, an ``out × in`` weight matrix on pulsed soft-bounds devices
(or ideal floating-point weights), and implements AIHWKit's semantics (EXPERIMENTS.md §1.5):

* :func:`analog_mvm`: the forward / backward matrix-vector product with the IO non-idealities:
  ABS_MAX noise management, ITERATIVE bound management, DAC / ADC resolution and bounds, output
  noise, additive weight noise. The noise is drawn fresh, or (:func:`set_noise_list`) from fixed
  lists as AIHWKit's CPU simulator draws it.
* :meth:`AnalogTile.apply_update`: the pulsed SGD update ``W ← W − lr·Σ_b d_b x_bᵀ`` as AIHWKit
  does it: per sample b, stochastic pulse trains of BL_b ≤ desired_bl slots with update management,
  each coincidence one soft-bounds pulse. Two modes:

  - ``"pulse"``: every pulse train is drawn (:func:`sparse_counts`); the coincidence counts of
    each device are exact, only the devices that got a pulse are touched, and a device's up and
    down pulses of one mini-batch are applied through the closed form of n soft-bounds pulses
    (exact for pulses of one sign; with both signs their order, which AIHWKit takes sample by
    sample, is averaged: at most ≈ n·dw_min/τ of the step).
  - ``"moment"``: no pulse trains; the coincidence counts of each device come from four matrix
    products over the mini-batch (:func:`count_moments`): their exact mean plus the noise that the
    devices of one row or column share through their common pulse train (drawn once per sample
    and line), and the variance of the rest. The closed form moves the weight by these counts, and
    zero-mean noise of the remaining variance (each device's own part of the coincidence noise,
    and the pulses' cycle-to-cycle noise) is added through the soft-bounds slope. With
    torch.compile (:func:`set_compile`) the elementwise part is one fused loop.

  On a CPU both modes' updates and the IO pass run as C++ (utils/analog_torch/native.py), the
  pulse mode pulse by pulse as AIHWKit applies them.

* Tiki-Taka v1 (TransferCompound): gradient pulses onto A at fast_lr, then each mini-batch a
  cyclic column read of A through ``transfer_forward`` written onto C by a pulsed update.

Every per-run tensor has the run index as its leading dimension, so one run's state is a slice
(see utils.analog_torch.nn.run_state / stack_states).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from utils.analog_torch.config import (
    FloatingPointRPUConfig,
    IOParameters,
    RPUConfig,
    SingleRPUConfig,
    SoftBoundsReferenceDevice,
    UnitCellRPUConfig,
    UpdateParameters,
)
from utils.analog_torch.native import kernels_for, set_native

UPDATE_MODES = ("pulse", "moment")
_ALL_LINES = torch.empty(0, dtype=torch.long)  # the C++ update's "x drives every line"
OUT_BOUND_MASK = 0.999  # outputs with |y| ≥ this × out_bound pass no error backwards (as AIHWKit)


# --- forward / backward: the IO pass -----------------------------------------------------------------

def _quantize(x: Tensor, step: float) -> Tensor:
    return x if step <= 0 else torch.round(x / step) * step


def _res_step(res: float, bound: float) -> float:
    """AIHWKit's resolution: a value > 1 is a number of steps; the step spans the full signed
    range 2·bound (e.g. inp_res 1/126 with inp_bound 1 is a step of 2/126)."""
    if res <= 0:
        return 0.0
    if res > 1:
        res = 1.0 / res
    return res * 2 * bound


def gaussian_like(y: Tensor, noise_list: Tensor | None = None) -> Tensor:
    """Standard normal noise shaped like ``y`` (R, ...): fresh draws, or with ``noise_list``
    (R, L) numbers picked from run r's fixed list at random (see :func:`set_noise_list`)."""
    if noise_list is None:
        return torch.randn_like(y)
    R, size = noise_list.shape
    picks = torch.randint(0, size, (R, y[0].numel()), device=y.device)
    return noise_list.gather(1, picks).view(y.shape).to(y.dtype)


def _one_pass(weight: Tensor, x: Tensor, io: IOParameters,
              noise_list: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One pass through the array: DAC, matrix product, weight and output noise, ADC. Returns the
    outputs and, per sample, whether an output fell outside ±out_bound (before clipping)."""
    x = _quantize(x, _res_step(io.inp_res, io.inp_bound)).clamp(-io.inp_bound, io.inp_bound)
    y = torch.matmul(x, weight.transpose(-1, -2))
    if io.w_noise > 0 and io.w_noise_type == "additive_constant":
        y = y + io.w_noise * x.norm(dim=-1, keepdim=True) * gaussian_like(y, noise_list)
    if io.out_noise > 0:
        y = y + io.out_noise * gaussian_like(y, noise_list)
    y = _quantize(y, _res_step(io.out_res, io.out_bound))
    over = y > io.out_bound
    if io.bm_test_negative_bound:
        over = over | (y < -io.out_bound)
    return y.clamp(-io.out_bound, io.out_bound), over.any(dim=-1, keepdim=True)


def native_io(io: IOParameters, bound_management: bool) -> tuple:
    """The IO settings as the C++ ``io_pass`` takes them (after the weights and the inputs)."""
    inp_step = _res_step(io.inp_res, io.inp_bound)
    additive = io.w_noise > 0 and io.w_noise_type == "additive_constant"
    return (io.inp_bound, inp_step, io.out_bound, _res_step(io.out_res, io.out_bound),
            io.out_noise, io.w_noise if additive else 0.0, io.noise_management == "abs_max",
            bound_management and io.bound_management == "iterative",
            min(io.max_bm_factor, io.max_bm_res / inp_step if inp_step > 0 else math.inf),
            io.bm_test_negative_bound)


def analog_mvm(weight: Tensor, x: Tensor, io: IOParameters, bound_management: bool = True,
               noise_list: Tensor | None = None) -> Tensor:
    """``x @ weightᵀ`` through the analog periphery: weight (R, out, in), x (R, N, in) → (R, N, out).
    Per sample: divide by max|x| (ABS_MAX; an all-zero input gives 0), one pass, and with ITERATIVE
    bound management repeat it with the input halved (fresh noise) while an output saturates, up to
    a reduction of max_bm_factor or until the input grid would exceed max_bm_res; then scale back.
    For the backward pass call it with ``weight.transpose(-1, -2)`` and ``bound_management=False``
    (AIHWKit turns bound management off there). ``noise_list``: see :func:`gaussian_like`."""
    if io.is_perfect:
        return torch.matmul(x, weight.transpose(-1, -2))
    native = kernels_for(weight, x)
    if native is not None:
        return native.io_pass(weight.transpose(-1, -2), x, *native_io(io, bound_management),
                              noise_list)
    scale = None
    if io.noise_management == "abs_max":
        scale = x.abs().amax(dim=-1, keepdim=True)
        x = x / torch.where(scale > 0, scale, torch.ones_like(scale))
    y, over = _one_pass(weight, x, io, noise_list)
    if bound_management and io.bound_management == "iterative":
        bm = torch.ones_like(x[..., :1])
        inp_step = _res_step(io.inp_res, io.inp_bound)
        limit = min(io.max_bm_factor, io.max_bm_res / inp_step if inp_step > 0 else math.inf)
        while True:
            redo = over & (bm <= limit)
            if not bool(redo.any()):
                break
            bm = torch.where(redo, bm * 2, bm)
            y_new, over_new = _one_pass(weight, x / bm, io, noise_list)
            y = torch.where(redo, y_new * bm, y)
            over = redo & over_new
    return y if scale is None else y * scale


# --- the pulsed update --------------------------------------------------------------------------------

def pulse_probabilities(x: Tensor, d: Tensor, lr: Tensor | float, dw_min: Tensor, desired_bl: int,
                        bl_management: bool = True, update_management: bool = True,
                        um_grad_scale: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample pulse probabilities and train lengths of the stochastic pulsed update.

    x (R, N, in), d (R, N, out), dw_min (R, 1, 1). Returns (p, q, bl): p (R, N, in) and q (R, N, out)
    the probabilities of a pulse in each slot, bl (R, N, 1) the number of slots (0: no update),
    such that the expected coincidence count ``bl·p_j·q_i`` is ``lr·|x_j d_i|/dw_min`` up to
    desired_bl pulses per sample; beyond, d's side is scaled so that x's largest element always
    fires, and q clips at 1 (AIHWKit's update and bit-length management).
    """
    # The per-sample scales in float64, as the C++ kernels compute them: in float32 a tiny d_max
    # (a denormal gradient at a large step) makes x_max/d_max overflow to inf, and 0·inf gave NaN
    # pulse probabilities, hence NaN weights, where the exact scale is finite.
    x_max = x.abs().amax(dim=-1, keepdim=True).double()
    d_max = d.abs().amax(dim=-1, keepdim=True).double()
    live = ((x_max > 0) & (d_max > 0)).double()
    x_max = x_max + (1 - live)  # 1 where dead: no 0/0
    d_max = d_max + (1 - live)
    lr_dw = torch.as_tensor(lr, dtype=torch.float64, device=x.device) / dw_min.double()
    if bl_management:
        k = lr_dw * x_max * d_max
        bl = torch.ceil(k).clamp(1, desired_bl)
        d_max = d_max * (desired_bl / k).clamp(max=1)
    else:
        bl = torch.full_like(x_max, float(desired_bl))
    base = lr_dw / bl
    if update_management:
        scale_x, scale_d = torch.sqrt(base * d_max / x_max), torch.sqrt(base * x_max / d_max)
    else:
        scale_x = scale_d = torch.sqrt(base)
    live, bl = live.to(x.dtype), bl.to(x.dtype)
    p = (x.abs() * scale_x.to(x.dtype)).clamp(max=1) * live
    q = (d.abs() * (scale_d * um_grad_scale).to(x.dtype)).clamp(max=1) * live
    return p, q, bl * live


def _pair(a: Tensor, b: Tensor) -> Tensor:
    """Σ_k a_k ⊗ b_k over samples: a (R, K, m), b (R, K, n) → (R, m, n)."""
    return torch.matmul(a.transpose(-1, -2), b)


def sparse_counts(x: Tensor, d: Tensor, p: Tensor, q: Tensor, bl: Tensor, lines: Tensor | None,
                  shape: torch.Size) -> tuple[Tensor, Tensor, Tensor] | None:
    """Draw every pulse train and list the coincidences: returns (devices, up, down), the flat
    indices into an input-major array of ``shape`` (R, in, out) of the devices that got a pulse
    and their up and down counts, or None if none did. x's input k drives the array's line
    ``lines[k]`` (all lines in order if None). p, q, bl: see :func:`pulse_probabilities`.

    The cost grows with the number of pulses more than with the number of devices, as in AIHWKit:
    with BL ≈ 1 and small errors a mini-batch of the MNIST FCN fires some hundreds to thousands of
    coincidences on its 2.3·10⁵ devices. The side with fewer lines (usually the outputs) is drawn
    first, for every sample and slot; the other side only in the slots where the first fired
    (elsewhere its pulses meet nothing: the trains are independent, so this leaves the counts'
    distribution exact). In each such slot every fired line of one side meets every fired line of
    the other."""
    R, N, n_in = x.shape
    n_out = d.shape[-1]
    slots = int(bl.max().item()) if bl.numel() else 0
    if slots == 0:
        return None
    outputs_first = n_out <= n_in
    (pa, na), (pb, nb) = ((q, n_out), (p, n_in)) if outputs_first else ((p, n_in), (q, n_out))
    active = (torch.arange(slots, device=x.device) < bl).unsqueeze(-1)  # (R, N, T, 1)
    fired_a = ((torch.rand(R, N, slots, na, device=x.device, dtype=pa.dtype) < pa.unsqueeze(2))
               & active).view(-1, na).nonzero()  # (slot key, line), slot key = (r·N + n)·T + t
    if fired_a.shape[0] == 0:
        return None
    keys, per_key = torch.unique_consecutive(fired_a[:, 0], return_counts=True)
    sample = keys // slots  # r·N + n
    fired_b = (torch.rand(keys.shape[0], nb, device=x.device, dtype=pb.dtype)
               < pb.reshape(-1, nb).index_select(0, sample)).nonzero()  # (key index, line)
    if fired_b.shape[0] == 0:
        return None
    key_b, line_b = fired_b.unbind(1)
    partners = per_key.index_select(0, key_b)  # lines of side a each fired line of b meets
    pairs = int(partners.sum().item())
    bi = torch.repeat_interleave(torch.arange(key_b.shape[0], device=x.device), partners,
                                 output_size=pairs)
    key = key_b.index_select(0, bi)  # each pair: the slot of its line on side b, ...
    ai = (torch.arange(pairs, device=x.device) - (partners.cumsum(0) - partners).index_select(0, bi)
          + (per_key.cumsum(0) - per_key).index_select(0, key))  # ... and its line on side a
    line_a, line_b = fired_a[:, 1].index_select(0, ai), line_b.index_select(0, bi)
    sample = sample.index_select(0, key)
    i, j = (line_a, line_b) if outputs_first else (line_b, line_a)
    # a device moves down where x_j·d_i > 0 (W ← W − lr·d xᵀ)
    down = ((x.reshape(-1).take(sample * n_in + j) > 0)
            == (d.reshape(-1).take(sample * n_out + i) > 0)).to(x.dtype)
    flat = ((sample // N) * shape[1] + (j if lines is None else lines.take(j))) * shape[2] + i
    if pairs * 16 < shape.numel():  # few pulses: sort them by device
        devices, which = torch.unique(flat, return_inverse=True)
        total = torch.bincount(which, minlength=devices.shape[0]).to(x.dtype)
        n_down = torch.bincount(which, weights=down, minlength=devices.shape[0])
        return devices, total - n_down, n_down
    total = torch.bincount(flat, minlength=shape.numel())  # many: count on the whole array
    devices = total.nonzero().squeeze(1)
    n_down = torch.bincount(flat, weights=down, minlength=shape.numel()).index_select(0, devices)
    return devices, total.index_select(0, devices).to(x.dtype) - n_down, n_down


def count_moments(x: Tensor, d: Tensor, p: Tensor, q: Tensor, bl: Tensor, shared_x: Tensor,
                  shared_d: Tensor) -> tuple[Tensor, ...]:
    """Each device's (up, down) coincidence counts to second order, input-major (R, in, out),
    including the covariances between devices.

    In sample b, device (i, j) counts c = Σ_t X_jt·D_it over bl slots, X_jt ~ Bernoulli(p_j) the
    pulse train of input line j (shared by all devices of that line) and D_it ~ Bernoulli(q_i)
    that of output line i. With A_j = Σ_t (X_jt − p_j) and B_i = Σ_t (D_it − q_i),

        c = bl·p_j·q_i + q_i·A_j + p_j·B_i + Σ_t (X_jt − p_j)(D_it − q_i),

    the mean and three uncorrelated parts of zero mean: the first two shared along a line (they
    correlate the devices of one row or column, as in AIHWKit), the last one independent per
    device. ``shared_x`` (R, N, in) and ``shared_d`` (R, N, out) are standard normal draws that
    become A and B (Gaussian with the trains' variances bl·p(1 − p), bl·q(1 − q)), so the first
    three terms are summed here, ``p_j·(bl·q_i + B_i) + A_j·q_i``; the independent part is left to
    the caller as its variance bl·p(1 − p)·q(1 − q). Returns (counts total, counts signed, variance
    total, variance signed), sums over the samples, where signed weighs a sample by s = +1 for a
    down pulse (x_j d_i > 0) and −1 for an up pulse. Four matrix products over the samples (two
    of rank 2N, two of rank N), in two batched calls."""
    sx, sd = x.sign(), d.sign()
    p_var, q_var = p * (1 - p), q * (1 - q) * bl
    a = shared_x * (bl * p_var).sqrt()     # A_j of each sample
    qb = q * bl + shared_d * q_var.sqrt()  # bl·q_i + B_i
    counts = _pair(torch.cat([torch.cat([p, a], 1), torch.cat([p * sx, a * sx], 1)]),
                   torch.cat([torch.cat([qb, q], 1), torch.cat([qb * sd, q * sd], 1)]))
    var = _pair(torch.cat([p_var, p_var * sx]), torch.cat([q_var, q_var * sd]))
    return (*counts.chunk(2), *var.chunk(2))  # each (R, in, out)


def _soft_bounds_mean(w: Tensor, s_up: Tensor, s_down: Tensor, b_max: Tensor, b_min: Tensor,
                      n_up: Tensor, n_down: Tensor) -> Tensor:
    """The weight after n_up up and n_down down soft-bounds pulses: the closed form
    ``w* + (w − w*)·e^{−r}`` with r = n_up·s_up/b_max + n_down·s_down/|b_min| and w* the weight the
    pulses drive towards; exact for pulses of one sign up to O(r·s/b) (e^{−r} for (1 − s/b)^n),
    both signs mixed evenly. Counts may be slightly negative (Gaussian noise on a small mean);
    the formula stays smooth there. Devices whose bound lies within one step of 0 end at it."""
    c_up, c_down = s_up / b_max, s_down / -b_min  # relative step per pulse
    rate = n_up * c_up + n_down * c_down
    decay = torch.exp(-rate)
    drive = n_up * s_up - n_down * s_down
    # (1 − e^{−r})/r, by its series where |r| is small (no 0/0)
    small = rate.abs() <= 1e-3
    gain = torch.where(small, 1 - rate * 0.5, (1 - decay) / torch.where(small, 1.0, rate))
    return w * decay + gain * drive


def _rows(t: Tensor, rows: Tensor | None) -> Tensor:
    """The input lines ``rows`` (R, K) of an input-major array (R, in, out); all if None."""
    return t if rows is None else t.gather(1, rows.unsqueeze(-1).expand(-1, -1, t.shape[-1]))


def _store(w: Tensor, new: Tensor, rows: Tensor | None) -> None:
    """Write ``new`` back into the input lines ``rows`` of ``w`` (all of them if None): one copy
    per line (index_copy_ on the (R·in, out) view), not one indexed write per element."""
    if rows is None:
        w.copy_(new)
    else:
        R, n_in, n_out = w.shape
        lines = (rows + n_in * torch.arange(R, device=rows.device).unsqueeze(-1)).reshape(-1)
        w.view(R * n_in, n_out).index_copy_(0, lines, new.reshape(-1, n_out))


def _moment_update(w: Tensor, s_up: Tensor, s_down: Tensor, b_max: Tensor, b_min: Tensor,
                   c2c_var: Tensor, dw_min: Tensor, x: Tensor, d: Tensor, lr: Tensor,
                   shared_x: Tensor, shared_d: Tensor, octets: Tensor, rows: Tensor | None,
                   desired_bl: int, bl_management: bool, update_management: bool,
                   um_grad_scale: float) -> Tensor | None:
    """The moment-matched pulsed update of one input-major array (R, in, out) on the input lines
    ``rows`` (R, K) only (all if None; x is then (R, N, K)); fused by torch.compile when it is on.
    With ``rows`` None it updates ``w`` in place and returns None; else it returns the lines' new
    weights (R, K, out) for the caller to write back (:func:`_store`). ``shared_x``, ``shared_d``
    (standard normal, see :func:`count_moments`) and ``octets`` (:func:`random_bytes`, one per
    updated device) supply the noise."""
    w, s_up, s_down, b_max, b_min = (_rows(t, rows) for t in (w, s_up, s_down, b_max, b_min))
    p, q, bl = pulse_probabilities(x, d, lr, dw_min, desired_bl, bl_management,
                                   update_management, um_grad_scale)
    count_total, count_signed, var_total, var_signed = count_moments(
        x, d, p, q, bl, shared_x, shared_d)
    n_up, n_down = (count_total - count_signed) * 0.5, (count_total + count_signed) * 0.5
    v_up, v_down = (var_total - var_signed) * 0.5, (var_total + var_signed) * 0.5
    # the closed form at the counts with their shared noise: to first order that noise moves the
    # weight by one pulse's step at the new weight per count, as it does pulse by pulse
    new = _soft_bounds_mean(w, s_up, s_down, b_max, b_min, n_up, n_down)
    a_up, a_down = s_up * (1 - new / b_max), s_down * (1 - new / b_min)
    var = (a_up * a_up * v_up + a_down * a_down * v_down
           + c2c_var * (s_up * s_up * n_up.clamp(min=0) + s_down * s_down * n_down.clamp(min=0)))
    new = new + var.clamp(min=0).sqrt() * unit_noise(octets, w.shape)
    new = torch.minimum(torch.maximum(new, b_min), b_max)
    if rows is not None:
        return new  # written back by the caller: a scatter in here would copy all of w twice
    w.copy_(new)  # all lines: w is the array itself
    return None


def active_inputs(x: Tensor, worth: float = 0.9) -> Tensor | None:
    """The input lines that carry a non-zero input in some sample, per run: (R, K) indices, or
    None when more than ``worth`` of them do (then updating all is cheaper). Devices on the other
    lines get no pulse (their coincidence counts are 0 in every slot) and are left exactly as they
    are, so skipping them changes nothing; on MNIST about half of layer 1's lines are skipped.
    Runs with fewer than K live lines are padded with dead ones (distinct, so no line is written
    twice)."""
    live = (x != 0).any(dim=1)  # (R, in)
    k = int(live.sum(dim=-1).max())
    if k > worth * x.shape[-1]:
        return None
    order = torch.argsort((~live).to(torch.int8), dim=-1, stable=True)  # live lines first
    return order[:, :k]


AIHWKIT_CPU_NOISE_LIST = 32768  # AIHWKit's CPU random generator: its Gaussian list's length
_NOISE_LIST = {"size": 0}


def set_noise_list(size: int) -> None:
    """How tiles built from now on draw the Gaussian noise of their reads (output and weight noise).

    0 (the default): fresh numbers on every read, as AIHWKit does on a GPU. ``size`` > 0: as
    AIHWKit's CPU simulator does (size :data:`AIHWKIT_CPU_NOISE_LIST`), each number is picked at
    random from a list of ``size`` standard normal numbers drawn once per tile (and run). That
    tile's noise then keeps the list's sample mean, ≈ N(0, 1/size), on every read of the whole run:
    ±0.55 % of the noise's std at 32,768, the same sign everywhere. Summed over the patches of a
    convolution this is a systematic error (docs/aihwkit_cpu_noise.md)."""
    if size < 0:
        raise ValueError(f"the noise list's size must be >= 0, got {size}")
    _NOISE_LIST["size"] = int(size)


_COMPILE = {"on": False}
_COMPILED: dict[str, object] = {}


def set_compile(on: bool) -> None:
    """Turn on (or off) the fast paths: the C++ kernels for tiles on a CPU, and torch.compile's
    fusion of the moment-matched update (one loop over the array instead of ~40 passes) where the
    kernels do not run (a GPU, a CPU without a C++ compiler; the first step of each tile shape
    then takes seconds). Off by default; the training scripts turn it on unless --no-compile."""
    _COMPILE["on"] = bool(on)
    set_native(on)


def _fused(name: str, fn):
    """``fn`` compiled by torch.compile when compilation is on, else ``fn``. If compiling fails
    (no compiler, an unsupported platform), it says so once and falls back to ``fn``: the same
    math, unfused."""
    if not _COMPILE["on"]:
        return fn
    if name not in _COMPILED:
        compiled = torch.compile(fn, dynamic=True)

        def call(*args):
            if _COMPILED[name] is fn:
                return fn(*args)
            try:
                return compiled(*args)
            except Exception as err:  # noqa: BLE001 - any compiler failure: run unfused
                print(f"torch.compile failed ({type(err).__name__}); the update runs unfused")
                _COMPILED[name] = fn
                return fn(*args)
        _COMPILED[name] = call
    return _COMPILED[name]


def random_bytes(numel: int, device: torch.device) -> Tensor:
    """``numel`` uniformly random bytes (uint8), from full-range int64 draws: one draw per 8."""
    words = torch.empty((numel + 7) // 8, dtype=torch.int64, device=device).random_(-2**63, None)
    return words.view(torch.uint8)[:numel]


def unit_noise(octets: Tensor, shape: torch.Size) -> Tensor:
    """Zero-mean, unit-variance noise of ``shape`` from :func:`random_bytes`, cheaply: uniform on
    256 levels (~6× faster than torch.randn on a CPU, and fused into the update when compiled).
    Only its mean and variance matter to the moment-matched update."""
    return (octets.view(shape).to(torch.float32) - 127.5) * (1 / 73.900271)  # std of 0…255


class SoftBoundsArray(nn.Module):
    """The devices of one array for R runs: per-device step sizes and bounds (device-to-device
    spread drawn once, from the device's construction_seed) and the weights they hold.

    They are stored input-major, (R, in, out) (buffers ``*_t``), so that the devices of one input
    line are contiguous and an update can skip the lines whose input was zero in the whole
    mini-batch (:func:`active_inputs`); ``weight``, ``scale_up``, ``scale_down``, ``max_bound`` and
    ``min_bound`` are (R, out, in) views of them, the layout of AIHWKit's weights."""

    STORED = ("weight", "scale_up", "scale_down", "max_bound", "min_bound")

    def __init__(self, devices: Sequence[SoftBoundsReferenceDevice], out_size: int, in_size: int,
                 salt: int = 0) -> None:
        super().__init__()
        shape = (out_size, in_size)
        up, down, b_max, b_min = [], [], [], []
        for dev in devices:
            g = torch.Generator().manual_seed(int(dev.construction_seed) * 1_000_003 + salt)
            xi = [torch.randn(shape, generator=g) for _ in range(4)]
            hi = (dev.w_max * (1 + dev.w_max_dtod * xi[0])).abs()
            lo = -(dev.w_min * (1 + dev.w_min_dtod * xi[1])).abs()
            gain, r = 1 + dev.dw_min_dtod * xi[2], dev.up_down_dtod * xi[3]
            up.append(((gain + r) * dev.dw_min).abs())
            down.append(((gain - r) * dev.dw_min).abs())
            b_max.append(hi)
            b_min.append(lo)
        for name, values in (("scale_up", up), ("scale_down", down), ("max_bound", b_max),
                             ("min_bound", b_min)):
            self.register_buffer(f"{name}_t", torch.stack(values).transpose(1, 2).contiguous())
        self.register_buffer("dw_min", torch.tensor([d.dw_min for d in devices]).view(-1, 1, 1))
        self.register_buffer("dw_min_std", torch.tensor([d.dw_min_std for d in devices])
                             .view(-1, 1, 1))
        self.register_buffer("weight_t", torch.zeros(len(devices), in_size, out_size))

    def __getattr__(self, name: str):
        if name in SoftBoundsArray.STORED:  # the (R, out, in) view of an input-major buffer
            return super().__getattr__(f"{name}_t").transpose(1, 2)
        return super().__getattr__(name)

    def set_weights(self, weight: Tensor) -> None:
        """Program the weights (R, out, in), clipped to each device's bounds (as AIHWKit's
        set_weights)."""
        self.weight.copy_(torch.minimum(torch.maximum(weight, self.min_bound), self.max_bound))

    def update(self, x: Tensor, d: Tensor, lr: float, up: UpdateParameters, mode: str,
               column: int | None = None) -> None:
        """``W ← W − lr·Σ_b d_b x_bᵀ`` by pulses (see the module docstring for the two modes).
        With ``column``, x holds that one input (R, N, 1) and only that column of devices is
        updated (a Tiki-Taka transfer)."""
        if mode not in UPDATE_MODES:
            raise ValueError(f"unknown update mode {mode!r}; choose one of {UPDATE_MODES}")
        buffers = self._buffers
        stored = [buffers[f"{name}_t"] for name in SoftBoundsArray.STORED]  # weight first
        c2c_std = self.dw_min_std
        flags = (up.desired_bl, up.update_bl_management, up.update_management, up.um_grad_scale)
        native = kernels_for(x, d)
        if native is not None:  # C++: the pulse mode pulse by pulse, the moment mode line by line
            kernel, devices = ((native.pulse_update, self._packed(stored[1:])) if mode == "pulse"
                               else (native.moment_update, self._planes(stored[1:])))
            kernel(stored[0], devices, self.dw_min, c2c_std, x, d, float(lr), *flags,
                   _ALL_LINES if column is None else torch.tensor([column]))
        elif mode == "pulse":
            self._pulse_step(stored, x, d, lr, flags, c2c_std, column)
        else:
            self._moment_step(stored, x, d, lr, flags, c2c_std, column)

    def _pulse_step(self, stored: list[Tensor], x: Tensor, d: Tensor, lr: float, flags: tuple,
                    c2c_std: Tensor, column: int | None) -> None:
        """Every pulse train drawn; only the devices that got a pulse are read and written (with
        tensor operations; the C++ kernels apply them pulse by pulse, as AIHWKit)."""
        p, q, bl = pulse_probabilities(x, d, lr, self.dw_min, *flags)
        lines = None if column is None else torch.tensor([column], device=x.device)
        fired = sparse_counts(x, d, p, q, bl, lines, stored[0].shape)
        if fired is None:
            return
        devices, n_up, n_down = fired
        w, s_up, s_down, b_max, b_min = (t.view(-1).index_select(0, devices) for t in stored)
        new = _soft_bounds_mean(w, s_up, s_down, b_max, b_min, n_up, n_down)
        run = devices // stored[0][0].numel()
        var = c2c_std.square().view(-1).index_select(0, run) * (s_up.square() * n_up
                                                                + s_down.square() * n_down)
        new = new + var.sqrt() * torch.randn_like(new)
        stored[0].view(-1).index_copy_(0, devices, torch.minimum(torch.maximum(new, b_min), b_max))

    def _packed(self, params: list[Tensor]) -> Tensor:
        """The devices' s_up, s_down, b_max, b_min side by side, (R, in, out, 4), for the C++
        pulse update (a pulse then reads one cache line, not four)."""
        return self._cached("_packed_cache", params, lambda: torch.stack(params, dim=-1))

    def _planes(self, params: list[Tensor]) -> Tensor:
        """The devices' s_up, s_down, b_max, b_min, s_up/b_max and s_down/|b_min| as planes,
        (6, R, in, out), for the C++ moment update (its loop over a line then divides once)."""
        s_up, s_down, b_max, b_min = params
        return self._cached("_planes_cache", params, lambda: torch.stack(
            [s_up, s_down, b_max, b_min, s_up / b_max, s_down / -b_min]))

    def _cached(self, name: str, params: list[Tensor], build) -> Tensor:
        """``build()`` (contiguous), kept until one of ``params`` is written (a loaded state,
        copied-in devices): keyed on their version counters."""
        key = tuple((t.data_ptr(), t._version) for t in params)
        cached = self.__dict__.get(name)
        if cached is None or cached[0] != key:
            cached = (key, build().contiguous())
            self.__dict__[name] = cached
        return cached[1]

    def _moment_step(self, stored: list[Tensor], x: Tensor, d: Tensor, lr: float, flags: tuple,
                     c2c_std: Tensor, column: int | None) -> None:
        """Moment-matched counts on every device of a live input line (the lines whose x is
        zero throughout get no pulse and are skipped), with tensor operations."""
        rows = None
        if column is not None:
            stored = [t[:, column:column + 1] for t in stored]
        else:
            rows = active_inputs(x)
            if rows is not None:
                if rows.shape[1] == 0:
                    return  # no input at all: no pulse
                x = x.gather(-1, rows.unsqueeze(1).expand(-1, x.shape[1], -1))
        lr_t = torch.tensor(lr, dtype=x.dtype, device=x.device)
        count = stored[0].numel() if rows is None else rows.numel() * stored[0].shape[-1]
        new = _fused("moment", _moment_update)(
            *stored, c2c_std.square(), self.dw_min, x, d, lr_t, torch.randn_like(x),
            torch.randn_like(d), random_bytes(count, x.device), rows, *flags)
        if new is not None:
            _store(stored[0], new, rows)


class AnalogTile(nn.Module):
    """One crossbar of ``out_size × in_size`` weights for R runs (one config per run; the runs may
    differ only in their devices, e.g. τ). ``ctx`` is the parameter that puts the tile on the
    autograd graph and in the optimizer; the optimizer calls :meth:`apply_update`."""

    def __init__(self, out_size: int, in_size: int, configs: Sequence[RPUConfig],
                 update_mode: str = "moment", salt: int = 0) -> None:
        super().__init__()
        if update_mode not in UPDATE_MODES:
            raise ValueError(f"unknown update mode {update_mode!r}; choose one of {UPDATE_MODES}")
        first = configs[0]
        kinds = {type(c) for c in configs}
        if len(kinds) != 1:
            raise ValueError("the runs of one batched tile must use one kind of RPU config")
        for c in configs[1:]:
            if not isinstance(c, FloatingPointRPUConfig) and (
                    c.forward, c.backward, c.update) != (first.forward, first.backward, first.update):
                raise ValueError("the runs of one batched tile may differ only in their devices")
        self.out_size, self.in_size, self.runs = out_size, in_size, len(configs)
        self.update_mode = update_mode
        self.config = first
        self.kind = {FloatingPointRPUConfig: "fp", SingleRPUConfig: "single",
                     UnitCellRPUConfig: "transfer"}[type(first)]
        self.ctx = nn.Parameter(torch.zeros(self.runs, 0))
        self.ctx.analog_tile = self  # how the optimizer finds the tile
        if self.kind == "fp":
            self.register_buffer("fp_weight", torch.zeros(self.runs, out_size, in_size))
        elif self.kind == "single":
            self.array = SoftBoundsArray([c.device for c in configs], out_size, in_size, salt)
        else:
            self.fast = SoftBoundsArray([c.device.unit_cell_devices[0] for c in configs],
                                        out_size, in_size, 2 * salt)
            self.slow = SoftBoundsArray([c.device.unit_cell_devices[1] for c in configs],
                                        out_size, in_size, 2 * salt + 1)
            self.register_buffer("transfer_column", torch.zeros(self.runs, dtype=torch.long))
            self.register_buffer("batches_seen", torch.zeros(self.runs, dtype=torch.long))
        size = _NOISE_LIST["size"]
        # not saved: a resumed run draws a new list, as AIHWKit's generator does on loading
        self.register_buffer("noise_list", torch.randn(self.runs, size)
                             if size and self.kind != "fp" else None, persistent=False)
        self._stash: list[tuple[Tensor, Tensor]] = []

    # -- weights

    @property
    def device(self) -> torch.device:
        return self.ctx.device

    @property
    def weight(self) -> Tensor:
        """The visible weights (R, out, in): what forward and backward read."""
        if self.kind == "fp":
            return self.fp_weight
        return self.array.weight if self.kind == "single" else self.slow.weight

    @torch.no_grad()
    def set_weights(self, weight: Tensor) -> None:
        """Program the visible weights (R, out, in); for Tiki-Taka A is zeroed (as AIHWKit)."""
        if self.kind == "fp":
            self.fp_weight.copy_(weight)
        elif self.kind == "single":
            self.array.set_weights(weight)
        else:
            self.slow.set_weights(weight)
            self.fast.weight.zero_()
            self.transfer_column.zero_()

    # -- passes

    def forward_pass(self, x: Tensor) -> Tensor:
        if self.kind == "fp":
            return torch.matmul(x, self.weight.transpose(-1, -2))
        return analog_mvm(self.weight, x, self.config.forward, noise_list=self.noise_list)

    def backward_pass(self, d: Tensor) -> Tensor:
        if self.kind == "fp":
            return torch.matmul(d, self.weight)
        return analog_mvm(self.weight.transpose(-1, -2), d, self.config.backward,
                          bound_management=False, noise_list=self.noise_list)

    def read(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """The forward pass (R, N, in) → (R, N, out), and where its outputs are at the ADC's
        bound (None where none is, or without an ADC): AIHWKit passes no error back through
        them (the update still uses the full error)."""
        y = self.forward_pass(x)
        if self.kind == "fp" or self.config.forward.is_perfect:
            return y, None
        threshold = OUT_BOUND_MASK * self.config.forward.out_bound
        native = kernels_for(y)  # C++: None where no output is at the bound
        return y, (y.abs() >= threshold if native is None else native.saturated(y, threshold))

    def forward(self, x: Tensor) -> Tensor:
        """(R, N, in) → (R, N, out); in training mode the backward pass stashes (x, d)."""
        return tile_grid(x, [self], [self.in_size], [self.out_size], self.ctx)

    def stash(self, x: Tensor, d: Tensor) -> None:
        self._stash.append((x, d))

    # -- update

    @torch.no_grad()
    def apply_update(self, lr: float) -> None:
        """Update with everything stashed since the last call, at SGD learning rate ``lr``."""
        if not self._stash:
            return
        if len(self._stash) == 1:
            x, d = self._stash[0]
        else:
            x = torch.cat([s[0] for s in self._stash], dim=1)
            d = torch.cat([s[1] for s in self._stash], dim=1)
        self._stash.clear()
        if self.kind == "fp":
            self.fp_weight.sub_(lr * _pair(d, x))
        elif self.kind == "single":
            self.array.update(x, d, lr, self.config.update, self.update_mode)
        else:
            self._tiki_taka(x, d, lr)

    def _tiki_taka(self, x: Tensor, d: Tensor, lr: float) -> None:
        compound = self.config.device
        fast_lr = compound.fast_lr if compound.fast_lr > 0 else lr
        self.fast.update(x, d, fast_lr, self.config.update, self.update_mode)
        self.batches_seen += 1
        every = max(1, math.ceil(compound.transfer_every))
        if int(self.batches_seen[0]) % every:
            return
        transfer_lr = compound.transfer_lr * (lr if compound.scale_transfer_lr else 1.0)
        one = x.new_ones(self.runs, 1, 1)
        for _ in range(compound.n_reads_per_transfer):
            col = int(self.transfer_column[0])  # the runs of a batch step in lockstep
            # reading column c with the one-hot input e_c through the transfer IO: the other
            # inputs are 0, so this is the one-input pass of that column
            read = analog_mvm(self.fast.weight[:, :, col:col + 1], one,
                              compound.transfer_forward, noise_list=self.noise_list)  # (R, 1, out)
            # C ← C + transfer_lr·A[:, c]: a pulsed update with x = e_c and d = −A[:, c]
            self.slow.update(one, -read, transfer_lr, compound.transfer_update, self.update_mode,
                             column=col)
            self.transfer_column.fill_((col + 1) % self.in_size)


def tile_grid(x: Tensor, tiles: Sequence[AnalogTile], in_sizes: Sequence[int],
              out_sizes: Sequence[int], token: Tensor, bias: Tensor | None = None,
              scales: Sequence[Tensor] = ()) -> Tensor:
    """R runs through a grid of tiles (R, N, Σ in_sizes) → (R, N, Σ out_sizes): the input split
    into pieces of ``in_sizes``, the output into blocks of ``out_sizes``, tile k = (block o, piece
    j) in row-major order; block o = Σ_j α_k·tile_k(x_j) + bias, with α_k = ``scales[k]`` (R,)
    when given. One autograd node for all of it (a node per tile, scale and sum cost more than
    the small passes themselves on a CPU). ``token``: a parameter that requires a gradient, so
    that the backward pass (which stashes each tile's (x, d) for the update) always runs."""
    return _GridFunction.apply(x, (tiles, in_sizes, out_sizes), token, bias, *scales)


class _GridFunction(torch.autograd.Function):
    """Forward through the tiles' forward passes; backward through their backward passes,
    stashing each tile's (input, output-gradient) pair for the pulsed update (AIHWKit's weights
    get no autograd gradient)."""

    @staticmethod
    def forward(ctx, x: Tensor, grid: tuple, token: Tensor, bias: Tensor | None,
                *scales: Tensor) -> Tensor:
        tiles, in_sizes, out_sizes = grid
        ctx.grid = grid
        xs = x.split(in_sizes, dim=-1) if len(in_sizes) > 1 else (x,)
        blocks, saved, k = [], [], 0
        with torch.no_grad():
            for _ in out_sizes:
                total = None
                for j in range(len(in_sizes)):
                    y, saturated = tiles[k].read(xs[j])
                    saved += [y if scales else None, saturated]
                    if scales:
                        y = y * scales[k].view(-1, 1, 1)
                    total = y if total is None else total.add_(y)
                    k += 1
                blocks.append(total)
            out = torch.cat(blocks, dim=-1) if len(blocks) > 1 else blocks[0]
            if bias is not None:
                out = out + bias.unsqueeze(1)
        ctx.save_for_backward(x, *scales, *saved)
        ctx.scaled = bool(scales)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        tiles, in_sizes, out_sizes = ctx.grid
        x, *rest = ctx.saved_tensors
        n = len(tiles)
        scales, saved = (rest[:n], rest[n:]) if ctx.scaled else ((), rest)
        xs = x.split(in_sizes, dim=-1) if len(in_sizes) > 1 else (x,)
        grads = grad.split(out_sizes, dim=-1) if len(out_sizes) > 1 else (grad,)
        need_x = ctx.needs_input_grad[0]
        grad_xs: list[Tensor | None] = [None] * len(in_sizes)
        grad_scales: list[Tensor | None] = [None] * len(scales)
        k = 0
        for block in grads:
            for j in range(len(in_sizes)):
                tile, y, saturated = tiles[k], saved[2 * k], saved[2 * k + 1]
                d = block * scales[k].view(-1, 1, 1) if scales else block
                if tile.training:
                    tile.stash(xs[j].detach(), d.detach())
                if scales and ctx.needs_input_grad[4 + k]:
                    grad_scales[k] = (block * y).sum(dim=(1, 2)).view(scales[k].shape)
                if need_x:
                    g = tile.backward_pass(d if saturated is None else d.masked_fill(saturated, 0))
                    grad_xs[j] = g if grad_xs[j] is None else grad_xs[j] + g
                k += 1
        grad_x = None
        if need_x:
            grad_x = torch.cat(grad_xs, dim=-1) if len(grad_xs) > 1 else grad_xs[0]
        grad_bias = grad.sum(dim=1) if ctx.needs_input_grad[3] else None
        # the token only puts the tiles on the graph: no gradient
        return grad_x, None, None, grad_bias, *grad_scales
