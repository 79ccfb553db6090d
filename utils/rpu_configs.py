"""AIHWKit RPU-config builders for every experiment of the paper.

Every parameter an experiment depends on is set here explicitly, with AIHWKit's field names, so results
do not move when a library release changes a default. The values are those of the authors' code;
where they relied on AIHWKit 0.9.0 defaults, those defaults are written out.

The device is AIHWKit's ``SoftBoundsReferenceDevice`` with bounds ±τ: one pulse moves a weight by
``dw_min·(1 − w/τ)`` up or ``dw_min·(1 + w/τ)`` down, which in expectation is the paper's asymmetric
linear device (ALD) ``w ← w + Δ − (|Δ|/τ)·w`` (the paper).
"""

from __future__ import annotations

import copy

from utils.cli import UserError


class AIHWKitMissing(UserError, ImportError):
    """AIHWKit does not import: a one-line UserError for the scripts, an ImportError for code that
    falls back to the torch backend's own settings (utils.backend.TorchBackend.rpu_config)."""


# The one place the default backend first imports AIHWKit: a missing or broken install ends here.
try:
    from aihwkit.simulator.configs import (
        FloatingPointRPUConfig,
        IOParameters,
        MappingParameter,
        SingleRPUConfig,
        UnitCellRPUConfig,
        UpdateParameters,
    )
    from aihwkit.simulator.configs.devices import (
        FloatingPointDevice,
        SoftBoundsReferenceDevice,
        TransferCompound,
    )
    from aihwkit.simulator.parameters.enums import (
        AnalogMVType,
        BoundManagementType,
        NoiseManagementType,
        PulseType,
        WeightNoiseType,
    )
except ImportError as err:
    reason = (str(err).splitlines() or [type(err).__name__])[0]
    raise AIHWKitMissing(
        f"the default --backend aihwkit needs AIHWKit 1.1.0, which does not import here ({reason}); "
        "pip installs its wheel on Linux x86_64 with Python 3.10-3.12 (pip install -r "
        "requirements.txt), conda installs aihwkit-gpu (environment.yml); anywhere else run with "
        "--backend torch") from None

# One list of settings and constants for both backends (the torch backend's presets need no AIHWKit).
from utils.analog_torch.presets import (  # noqa: E402, F401 - re-exported
    MNIST_DEVICE_SEED,
    SETTINGS,
    TT_COMPOUND_SEED,
    TT_FAST_LR,
    TT_READS_PER_TRANSFER,
)


def check_tau(tau: float) -> None:
    if not tau > 0:
        raise ValueError(f"tau (the device bound τ) must be > 0, got {tau}")


def soft_bounds_device(
    tau: float,
    dw_min: float,
    *,
    dw_min_dtod: float = 0.0,
    dw_min_std: float = 0.0,
    up_down_dtod: float = 0.0,
    w_bound_dtod: float = 0.0,
    subtract_symmetry_point: bool = False,
    reset_std: float = 0.0,
    construction_seed: int = MNIST_DEVICE_SEED,
) -> SoftBoundsReferenceDevice:
    """The τ-bounded soft-bounds device with every field set. The defaults are the ideal device of the
    least-squares experiments (no device-to-device or cycle-to-cycle variation, no reference offset).

    dw_min         response step size Δw_min (one pulse at w = 0)
    dw_min_dtod    relative device-to-device spread of dw_min
    dw_min_std     relative cycle-to-cycle (per-pulse) spread, additive
    up_down_dtod   device-to-device spread of the up/down step asymmetry
    w_bound_dtod   relative device-to-device spread of the bounds ±τ
    """
    check_tau(tau)
    if not dw_min > 0:
        raise ValueError(f"dw_min must be > 0, got {dw_min}")
    return SoftBoundsReferenceDevice(
        construction_seed=construction_seed,
        dw_min=dw_min,
        dw_min_dtod=dw_min_dtod,
        dw_min_dtod_log_normal=False,
        dw_min_std=dw_min_std,
        up_down=0.0,
        up_down_dtod=up_down_dtod,
        w_max=tau,
        w_min=-tau,
        w_max_dtod=w_bound_dtod,
        w_min_dtod=w_bound_dtod,
        slope_up_dtod=0.0,
        slope_down_dtod=0.0,
        mult_noise=False,
        write_noise_std=0.0,
        apply_write_noise_on_set=False,
        reference_mean=0.0,
        reference_std=0.0,
        subtract_symmetry_point=subtract_symmetry_point,
        corrupt_devices_prob=0.0,
        corrupt_devices_range=0.0,
        reset=0.0,
        reset_dtod=0.0,
        reset_std=reset_std,
        perfect_bias=False,
        enforce_consistency=True,
        lifetime=0.0,
        lifetime_dtod=0.0,
        diffusion=0.0,
        diffusion_dtod=0.0,
        count_pulses=False,
    )


def mnist_device(tau: float, dw_min: float = 1e-3) -> SoftBoundsReferenceDevice:
    """The device of the MNIST (dw_min 1e-3) and CIFAR (dw_min τ/600) runs: AIHWKit 0.9.0's
    soft-bounds defaults written out (30 % spread of step size and bounds, 30 % pulse noise,
    1 % up/down spread), bounds ±τ, construction seed 10 (as in the authors' code)."""
    return soft_bounds_device(tau, dw_min, dw_min_dtod=0.3, dw_min_std=0.3, up_down_dtod=0.01,
                              w_bound_dtod=0.3, reset_std=0.01)


def _io(**fields: object) -> IOParameters:
    """IOParameters with every field this project relies on set; ``fields`` override."""
    values: dict[str, object] = dict(
        is_perfect=False, mv_type=AnalogMVType.ONE_PASS,
        inp_bound=1.0, inp_noise=0.0, inp_res=1 / (2**7 - 2), inp_sto_round=False, inp_asymmetry=0.0,
        out_bound=12.0, out_noise=0.06, out_noise_std=0.0, out_res=1 / (2**9 - 2),
        out_sto_round=False, out_scale=1.0, out_asymmetry=0.0,
        noise_management=NoiseManagementType.ABS_MAX, bound_management=BoundManagementType.ITERATIVE,
        max_bm_factor=1000, max_bm_res=0.25, bm_test_negative_bound=True, nm_thres=0.0,
        w_noise=0.0, w_noise_type=WeightNoiseType.NONE,
        ir_drop=0.0, ir_drop_g_ratio=1 / 0.35 / 5e-6,
        out_nonlinearity=0.0, out_nonlinearity_std=0.0, slope_calibration=0.0,
        v_offset_std=0.0, v_offset_w_min=-1.0, r_series=0.0, w_read_asymmetry_dtod=0.0,
    )
    values.update(fields)
    return IOParameters(**values)


def default_io() -> IOParameters:
    """The MNIST/CIFAR forward/backward IO: AIHWKit 0.9.0's defaults written out: 7-bit DAC
    (inp_res 1/126, inp_bound 1), 9-bit ADC (out_res 1/510, out_bound 12), output noise 0.06,
    ABS_MAX noise management, ITERATIVE bound management (as in the authors' code)."""
    return _io()


def least_squares_io(w_noise: float, managed: bool = False) -> IOParameters:
    """IO of the least-squares runs (as in the authors' code).

    managed=False: "IO-A" (S1, S2, S3.1, S3.2): inputs and outputs clipped at ±10, no DAC/ADC
    quantisation, no input/output noise, no noise or bound management, additive weight noise of std
    ``w_noise`` on every read (each output gets N(0, (w_noise·‖x‖₂)²)).
    managed=True: "IO-B" (S3.3): the same but inp_bound 1 with ABS_MAX / ITERATIVE management.
    """
    if not w_noise >= 0:
        raise ValueError(f"w_noise must be >= 0, got {w_noise}")
    return _io(
        inp_bound=1.0 if managed else 10.0, out_bound=10.0, inp_res=0.0, out_res=0.0, out_noise=0.0,
        w_noise=w_noise, w_noise_type=WeightNoiseType.ADDITIVE_CONSTANT, ir_drop_g_ratio=0.0,
        noise_management=NoiseManagementType.ABS_MAX if managed else NoiseManagementType.NONE,
        bound_management=BoundManagementType.ITERATIVE if managed else BoundManagementType.NONE,
        v_offset_w_min=-1.0 if managed else 0.0,
    )


def update_parameters(desired_bl: int = 31, sto_round: bool = False) -> UpdateParameters:
    """Stochastic-compressed pulse trains of at most ``desired_bl`` pulses, with bit-length and
    update management (AIHWKit's pulsed-update scheme)."""
    return UpdateParameters(
        desired_bl=desired_bl, fixed_bl=True, pulse_type=PulseType.STOCHASTIC_COMPRESSED, res=0,
        x_res_implicit=0, d_res_implicit=0, d_sparsity=False, sto_round=sto_round,
        update_bl_management=True, update_management=True, um_grad_scale=1.0,
    )


def mapping_parameters(learn_out_scaling: bool = False) -> MappingParameter:
    """Digital bias, no weight remapping, tiles of at most 512×512. ``learn_out_scaling`` adds one
    learnable digital gain per tile (the MNIST/CIFAR runs use it). The authors also set
    weight_scaling_columnwise=True there, a no-op while weight_scaling_omega is 0."""
    return MappingParameter(
        digital_bias=True, weight_scaling_omega=0.0, weight_scaling_columnwise=False,
        weight_scaling_lr_compensation=False, learn_out_scaling=learn_out_scaling,
        out_scaling_columnwise=False, max_input_size=512, max_output_size=512,
    )


def least_squares_config(tau: float, dw_min: float, w_noise: float, desired_bl: int, *,
                         managed_io: bool = False,
                         subtract_symmetry_point: bool = False) -> SingleRPUConfig:
    """Analog SGD on the ideal τ-bounded device, as in the least-squares figures (S1–S3)."""
    io = least_squares_io(w_noise, managed=managed_io)
    return SingleRPUConfig(
        device=soft_bounds_device(tau, dw_min, subtract_symmetry_point=subtract_symmetry_point),
        forward=io, backward=io, update=update_parameters(desired_bl, sto_round=True),
        mapping=mapping_parameters(learn_out_scaling=False),
    )


def tiki_taka_config(device: SoftBoundsReferenceDevice, fast_lr: float = TT_FAST_LR,
                     n_reads_per_transfer: int = TT_READS_PER_TRANSFER,
                     construction_seed: int = TT_COMPOUND_SEED,
                     learn_out_scaling: bool = True) -> UnitCellRPUConfig:
    """Tiki-Taka v1 (AIHWKit's TransferCompound), as the authors' ``build_config('ttv1')`` makes it.

    Two copies of ``device``: A (fast, receives the gradient pulses at the constant rate ``fast_lr``,
    β in the paper) and C (slow, the visible weight since γ = 0). After every mini-batch the next
    ``n_reads_per_transfer`` columns of A are read through ``transfer_forward`` (no noise or bound
    management) and written onto C at rate transfer_lr × the scheduled SGD lr (α in the paper).
    """
    compound = TransferCompound(
        unit_cell_devices=[copy.deepcopy(device), copy.deepcopy(device)],
        construction_seed=construction_seed,
        gamma=0.0,
        transfer_every=1.0,
        no_self_transfer=True,
        units_in_mbatch=True,
        n_reads_per_transfer=n_reads_per_transfer,
        transfer_columns=True,
        with_reset_prob=0.0,
        random_selection=False,
        fast_lr=fast_lr,
        transfer_lr=1.0,
        scale_transfer_lr=True,
        transfer_forward=_io(noise_management=NoiseManagementType.NONE,
                             bound_management=BoundManagementType.NONE),
        transfer_update=update_parameters(),
    )
    return UnitCellRPUConfig(device=compound, forward=default_io(), backward=default_io(),
                             update=update_parameters(),
                             mapping=mapping_parameters(learn_out_scaling=learn_out_scaling))


def rpu_config(setting: str, tau: float, dw_min: float = 1e-3):
    """The RPU config of one ``--SETTING`` of the MNIST and CIFAR experiments (as in the authors' code).

    "FP SGD": ideal floating-point tiles (exact SGD); "Analog SGD": one soft-bounds(τ) device per
    weight, pulsed updates, the default IO; "TT-v1": Tiki-Taka v1 on two such devices.
    """
    if setting == "FP SGD":
        return FloatingPointRPUConfig(device=FloatingPointDevice(diffusion=0.0, lifetime=0.0),
                                      mapping=mapping_parameters(learn_out_scaling=False))
    device = mnist_device(tau, dw_min)
    if setting == "Analog SGD":
        return SingleRPUConfig(device=device, forward=default_io(), backward=default_io(),
                               update=update_parameters(),
                               mapping=mapping_parameters(learn_out_scaling=True))
    if setting == "TT-v1":
        return tiki_taka_config(device)
    raise ValueError(f"unknown setting {setting!r}; choose one of {', '.join(SETTINGS)}")


def aihwkit_has_cuda() -> bool:
    """Whether this AIHWKit was built with CUDA (conda-forge's aihwkit-gpu; the PyPI wheel is not)."""
    from aihwkit.simulator.rpu_base import cuda

    return bool(cuda.is_compiled())
