"""The RPU configs of the paper's experiments in the torch backend's types, built without AIHWKit.

They are the same values as utils.rpu_configs (which builds AIHWKit's configs); the test suite checks
that ``from_aihwkit(utils.rpu_configs.rpu_config(s, τ)) == rpu_config(s, τ)``, so the two never drift.
The torch backend (utils.backend) converts utils.rpu_configs' config when AIHWKit is importable and
falls back to these presets when it is not.
"""

from __future__ import annotations

import copy

from utils.analog_torch.config import (
    FloatingPointRPUConfig,
    IOParameters,
    MappingParameter,
    RPUConfig,
    SingleRPUConfig,
    SoftBoundsReferenceDevice,
    TransferCompound,
    UnitCellRPUConfig,
    UpdateParameters,
)

SETTINGS = ("FP SGD", "Analog SGD", "TT-v1")
"""The training algorithms of the MNIST and CIFAR experiments, named as the authors' --SETTING flag."""

MNIST_DEVICE_SEED = 10  # construction_seed of the soft-bounds device (as in the authors' code)
TT_COMPOUND_SEED = 123  # construction_seed of the TT-v1 compound
TT_FAST_LR = 0.01       # β, the learning rate of A; not scheduled
TT_READS_PER_TRANSFER = 1


def mnist_device(tau: float, dw_min: float = 1e-3) -> SoftBoundsReferenceDevice:
    """AIHWKit 0.9.0's soft-bounds defaults written out, bounds ±τ (see utils.rpu_configs)."""
    if not tau > 0:
        raise ValueError(f"tau (the device bound τ) must be > 0, got {tau}")
    return SoftBoundsReferenceDevice(
        dw_min=dw_min, dw_min_dtod=0.3, dw_min_std=0.3, up_down=0.0, up_down_dtod=0.01,
        w_max=tau, w_min=-tau, w_max_dtod=0.3, w_min_dtod=0.3, reference_mean=0.0,
        reference_std=0.0, subtract_symmetry_point=False, construction_seed=MNIST_DEVICE_SEED)


def least_squares_io(w_noise: float, managed: bool = False) -> IOParameters:
    """IO-A (managed=False) / IO-B (managed=True) of the least-squares runs (see utils.rpu_configs)."""
    return IOParameters(
        inp_bound=1.0 if managed else 10.0, out_bound=10.0, inp_res=0.0, out_res=0.0,
        out_noise=0.0, w_noise=w_noise, w_noise_type="additive_constant",
        noise_management="abs_max" if managed else "none",
        bound_management="iterative" if managed else "none")


def least_squares_config(tau: float, dw_min: float, w_noise: float, desired_bl: int, *,
                         managed_io: bool = False,
                         subtract_symmetry_point: bool = False) -> SingleRPUConfig:
    """Analog SGD on the ideal τ-bounded device of S1–S3 (see utils.rpu_configs)."""
    device = SoftBoundsReferenceDevice(
        dw_min=dw_min, dw_min_dtod=0.0, dw_min_std=0.0, up_down=0.0, up_down_dtod=0.0,
        w_max=tau, w_min=-tau, w_max_dtod=0.0, w_min_dtod=0.0,
        subtract_symmetry_point=subtract_symmetry_point, construction_seed=MNIST_DEVICE_SEED)
    io = least_squares_io(w_noise, managed_io)
    return SingleRPUConfig(device=device, forward=io, backward=copy.deepcopy(io),
                           update=UpdateParameters(desired_bl=desired_bl, sto_round=True),
                           mapping=MappingParameter(learn_out_scaling=False))


def rpu_config(setting: str, tau: float, dw_min: float = 1e-3) -> RPUConfig:
    """The config of one ``--SETTING`` of the MNIST / CIFAR experiments (see utils.rpu_configs)."""
    if setting == "FP SGD":
        return FloatingPointRPUConfig(mapping=MappingParameter(learn_out_scaling=False))
    device = mnist_device(tau, dw_min)
    if setting == "Analog SGD":
        return SingleRPUConfig(device=device, forward=IOParameters(), backward=IOParameters(),
                               update=UpdateParameters(),
                               mapping=MappingParameter(learn_out_scaling=True))
    if setting == "TT-v1":
        compound = TransferCompound(
            unit_cell_devices=[copy.deepcopy(device), copy.deepcopy(device)], gamma=0.0,
            transfer_every=1.0, units_in_mbatch=True, n_reads_per_transfer=TT_READS_PER_TRANSFER,
            transfer_columns=True, fast_lr=TT_FAST_LR, transfer_lr=1.0, scale_transfer_lr=True,
            transfer_forward=IOParameters(noise_management="none", bound_management="none"),
            transfer_update=UpdateParameters(), construction_seed=TT_COMPOUND_SEED)
        return UnitCellRPUConfig(device=compound, forward=IOParameters(), backward=IOParameters(),
                                 update=UpdateParameters(),
                                 mapping=MappingParameter(learn_out_scaling=True))
    raise ValueError(f"unknown setting {setting!r}; choose one of {', '.join(SETTINGS)}")

