"""The torch backend's settings: small dataclasses that use AIHWKit's class and field names, so a
setting reads the same in both backends, and :func:`from_aihwkit` to convert an AIHWKit RPU config.

Only what the paper's experiments use is modelled. A converted AIHWKit config whose other fields
are not at their neutral value (IR drop, write noise, a non-stochastic pulse type, …) is refused with
a ValueError that names the field, rather than silently simulated as something else.

This module imports torch-free Python only; AIHWKit is imported inside :func:`from_aihwkit`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class IOParameters:
    """Forward / backward pass of a tile (AIHWKit's IOParameters): inputs are divided by their
    max-abs (noise_management "abs_max"), clipped to ±inp_bound and rounded to the DAC grid
    (inp_res), multiplied by the weights with additive weight noise of std w_noise·‖x‖₂
    (w_noise_type "additive_constant"), output noise of std out_noise is added, outputs are
    clipped to ±out_bound and rounded to the ADC grid (out_res). bound_management "iterative"
    repeats a saturated pass with the input halved. res ≤ 0 means no quantisation."""

    is_perfect: bool = False
    inp_bound: float = 1.0
    inp_res: float = 1 / (2**7 - 2)
    inp_noise: float = 0.0
    out_bound: float = 12.0
    out_res: float = 1 / (2**9 - 2)
    out_noise: float = 0.06
    noise_management: str = "abs_max"      # "abs_max" | "none"
    bound_management: str = "iterative"    # "iterative" | "none"
    max_bm_factor: int = 1000
    max_bm_res: float = 0.25
    bm_test_negative_bound: bool = True
    nm_thres: float = 0.0
    w_noise: float = 0.0
    w_noise_type: str = "none"             # "none" | "additive_constant"


@dataclass
class UpdateParameters:
    """The pulsed update (AIHWKit's UpdateParameters): per sample, stochastic pulse trains of at most
    desired_bl slots whose coincidences move each device one pulse, with bit-length (BL) and
    update management."""

    desired_bl: int = 31
    fixed_bl: bool = True
    pulse_type: str = "stochastic_compressed"
    res: float = 0.0
    sto_round: bool = False
    update_bl_management: bool = True
    update_management: bool = True
    um_grad_scale: float = 1.0


@dataclass
class SoftBoundsReferenceDevice:
    """AIHWKit's soft-bounds device: an up pulse moves a weight by ``s_up·(1 − w/b_max)``, a down
    pulse by ``−s_down·(1 − w/b_min)``, each with cycle-to-cycle noise ``s·dw_min_std·ξ``; s and b
    vary from device to device (``*_dtod``, relative spreads)."""

    dw_min: float = 0.001
    dw_min_dtod: float = 0.3
    dw_min_std: float = 0.3
    up_down: float = 0.0
    up_down_dtod: float = 0.01
    w_max: float = 0.6
    w_min: float = -0.6
    w_max_dtod: float = 0.3
    w_min_dtod: float = 0.3
    reference_mean: float = 0.0
    reference_std: float = 0.0
    subtract_symmetry_point: bool = False
    construction_seed: int = 0


@dataclass
class TransferCompound:
    """Tiki-Taka v1 (AIHWKit's TransferCompound) on two devices: A (index 0) gets the gradient
    pulses at rate fast_lr, C (index 1) is the visible weight (gamma 0); once every
    transfer_every mini-batches the next n_reads_per_transfer columns of A are read through
    transfer_forward and written onto C at transfer_lr × the current lr (scale_transfer_lr)."""

    unit_cell_devices: list = field(default_factory=list)
    gamma: float = 0.0
    transfer_every: float = 1.0
    units_in_mbatch: bool = True
    n_reads_per_transfer: int = 1
    transfer_columns: bool = True
    fast_lr: float = 1.0
    transfer_lr: float = 1.0
    scale_transfer_lr: bool = True
    transfer_forward: IOParameters = field(default_factory=IOParameters)
    transfer_update: UpdateParameters = field(default_factory=UpdateParameters)
    construction_seed: int = 0


@dataclass
class MappingParameter:
    """How a layer maps onto tiles: digital bias, one learnable output gain per tile
    (learn_out_scaling), tiles of at most max_input_size × max_output_size."""

    digital_bias: bool = True
    learn_out_scaling: bool = False
    max_input_size: int = 512
    max_output_size: int = 512


@dataclass
class FloatingPointRPUConfig:
    """Ideal tiles: exact matrix products and exact SGD (the "FP SGD" setting)."""

    mapping: MappingParameter = field(default_factory=MappingParameter)


@dataclass
class SingleRPUConfig:
    """One pulsed device per weight (the "Analog SGD" setting)."""

    device: SoftBoundsReferenceDevice = field(default_factory=SoftBoundsReferenceDevice)
    forward: IOParameters = field(default_factory=IOParameters)
    backward: IOParameters = field(default_factory=IOParameters)
    update: UpdateParameters = field(default_factory=UpdateParameters)
    mapping: MappingParameter = field(default_factory=MappingParameter)


@dataclass
class UnitCellRPUConfig:
    """A compound device per weight (the "TT-v1" setting, device = TransferCompound)."""

    device: TransferCompound = field(default_factory=TransferCompound)
    forward: IOParameters = field(default_factory=IOParameters)
    backward: IOParameters = field(default_factory=IOParameters)
    update: UpdateParameters = field(default_factory=UpdateParameters)
    mapping: MappingParameter = field(default_factory=MappingParameter)


RPUConfig = FloatingPointRPUConfig | SingleRPUConfig | UnitCellRPUConfig


# --- conversion from AIHWKit -----------------------------------------------------------------------

_NEUTRAL_IO = {  # AIHWKit IO fields this backend does not simulate, and the value it requires
    "inp_noise": 0.0, "inp_sto_round": False, "inp_asymmetry": 0.0, "out_noise_std": 0.0,
    "out_sto_round": False, "out_scale": 1.0, "out_asymmetry": 0.0, "ir_drop": 0.0,
    "out_nonlinearity": 0.0, "out_nonlinearity_std": 0.0, "slope_calibration": 0.0,
    "v_offset_std": 0.0, "r_series": 0.0, "w_read_asymmetry_dtod": 0.0,
}
_NEUTRAL_UPDATE = {"res": 0.0, "x_res_implicit": 0.0, "d_res_implicit": 0.0, "d_sparsity": False}
_NEUTRAL_DEVICE = {
    "dw_min_dtod_log_normal": False, "slope_up_dtod": 0.0, "slope_down_dtod": 0.0,
    "mult_noise": False, "write_noise_std": 0.0, "corrupt_devices_prob": 0.0, "lifetime": 0.0,
    "diffusion": 0.0, "reset": 0.0, "reset_dtod": 0.0,
}
_NEUTRAL_TRANSFER = {"with_reset_prob": 0.0, "random_selection": False}
_NEUTRAL_MAPPING = {"weight_scaling_omega": 0.0, "out_scaling_columnwise": False}


def _plain(value: Any) -> Any:
    """AIHWKit enums become their lower-case names ("ABS_MAX" -> "abs_max")."""
    name = getattr(value, "name", None)
    return name.lower() if name is not None and not isinstance(value, (bool, int, float)) else value


def _convert(source: Any, target_type: type, neutral: dict[str, Any], what: str) -> Any:
    for name, required in neutral.items():
        if hasattr(source, name) and _plain(getattr(source, name)) != required:
            raise ValueError(f"{what}.{name} = {getattr(source, name)!r} is not simulated by the "
                             f"torch backend (it needs {required!r})")
    values = {f.name: _plain(getattr(source, f.name)) for f in dataclasses.fields(target_type)
              if hasattr(source, f.name) and f.name not in ("unit_cell_devices",
                                                             "transfer_forward", "transfer_update")}
    return target_type(**values)


def _io(source: Any, what: str) -> IOParameters:
    io = _convert(source, IOParameters, _NEUTRAL_IO, what)
    if _plain(source.mv_type) != "one_pass":
        raise ValueError(f"{what}.mv_type = {source.mv_type!r} is not simulated (needs ONE_PASS)")
    if io.w_noise > 0 and io.w_noise_type not in ("additive_constant", "none"):
        raise ValueError(f"{what}.w_noise_type = {io.w_noise_type!r} is not simulated")
    if io.noise_management not in ("abs_max", "none"):
        raise ValueError(f"{what}.noise_management = {io.noise_management!r} is not simulated")
    if io.bound_management not in ("iterative", "none"):
        raise ValueError(f"{what}.bound_management = {io.bound_management!r} is not simulated")
    return io


def _update(source: Any, what: str) -> UpdateParameters:
    update = _convert(source, UpdateParameters, _NEUTRAL_UPDATE, what)
    if update.pulse_type not in ("stochastic_compressed", "stochastic"):
        raise ValueError(f"{what}.pulse_type = {update.pulse_type!r} is not simulated")
    return update


def _device(source: Any, what: str) -> SoftBoundsReferenceDevice:
    name = type(source).__name__
    if name not in ("SoftBoundsReferenceDevice", "SoftBoundsDevice"):
        raise ValueError(f"{what} is a {name}; the torch backend simulates soft-bounds devices only")
    return _convert(source, SoftBoundsReferenceDevice, _NEUTRAL_DEVICE, what)


def from_aihwkit(config: Any) -> RPUConfig:
    """The torch-backend equivalent of an AIHWKit RPU config (FloatingPointRPUConfig,
    SingleRPUConfig with a soft-bounds device, or UnitCellRPUConfig with a TransferCompound of two
    soft-bounds devices). Raises ValueError for anything this backend does not simulate."""
    kind = type(config).__name__
    mapping = _convert(config.mapping, MappingParameter, _NEUTRAL_MAPPING, "mapping")
    if kind == "FloatingPointRPUConfig":
        return FloatingPointRPUConfig(mapping=mapping)
    common = dict(forward=_io(config.forward, "forward"), backward=_io(config.backward, "backward"),
                  update=_update(config.update, "update"), mapping=mapping)
    if kind == "SingleRPUConfig":
        return SingleRPUConfig(device=_device(config.device, "device"), **common)
    if kind == "UnitCellRPUConfig" and type(config.device).__name__ == "TransferCompound":
        source = config.device
        if len(source.unit_cell_devices) != 2:
            raise ValueError("the torch backend simulates Tiki-Taka on exactly two devices")
        compound = _convert(source, TransferCompound, _NEUTRAL_TRANSFER, "device")
        compound.unit_cell_devices = [_device(d, f"device.unit_cell_devices[{i}]")
                                      for i, d in enumerate(source.unit_cell_devices)]
        compound.transfer_forward = _io(source.transfer_forward, "device.transfer_forward")
        compound.transfer_update = _update(source.transfer_update, "device.transfer_update")
        if compound.gamma != 0 or not compound.transfer_columns:
            raise ValueError("the torch backend simulates Tiki-Taka with gamma 0 and column reads")
        return UnitCellRPUConfig(device=compound, **common)
    raise ValueError(f"{kind} is not simulated by the torch backend")
