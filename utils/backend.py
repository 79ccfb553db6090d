"""The one seam between the two simulators: AIHWKit (``--backend aihwkit``, the default) and the
torch backend (``--backend torch``, utils/analog_torch).

Everything that differs between them is a method of :class:`Backend`: the RPU configs of a setting
and τ, converting the digital networks of utils.models into analog ones, the analog linear layer
(ResNet head, least-squares model), the optimizer, loading a saved state, the weights and device
states Figure 7 reads, the process-wide switches (the torch backend's C++ kernels and noise lists,
AIHWKit's tile reseeding) and the suffix of the run folders. :func:`from_args` chooses the backend
once from a script's flags; every other module asks the object it returns and never tests which
backend runs.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from utils.cli import UserError

BACKENDS = ("aihwkit", "torch")


class Backend:
    """What both backends offer; :class:`AIHWKitBackend` and :class:`TorchBackend` implement it."""

    name: str
    batched: bool  # trains many runs as one model (the runs of a seed/τ grid at once)
    label: str  # how titles and tables name the simulator

    # --- names ------------------------------------------------------------------------------------
    @property
    def suffix(self) -> str:
        """What the backend appends to an experiment's runs/ folder."""
        raise NotImplementedError

    @property
    def flags(self) -> str:
        """The command-line flags that select this backend (" --backend torch ..."; "" the default)."""
        raise NotImplementedError

    def record(self) -> dict[str, Any]:
        """What a run's config.json adds about the backend."""
        raise NotImplementedError

    least_squares_suffix: str  # of the least-squares figures and tables (the mode is not in it)
    least_squares_ignore: tuple[str, ...]  # flags left out of a least-squares run folder's name

    # --- process and devices ----------------------------------------------------------------------
    def require(self) -> None:
        """Raise UserError (one line: why, and what to do) if the backend cannot run here."""

    def activate(self) -> None:
        """Set the process-wide switches of the backend (before any tile is built)."""

    def training_device(self, cuda: int) -> torch.device:
        """The torch.device of ``--CUDA`` for a model whose every layer runs on it (UserError if
        it cannot)."""
        raise NotImplementedError

    def head_device(self, device: torch.device) -> torch.device:
        """Where an analog head next to a digital backbone on ``device`` runs."""
        return device

    # --- configs and models -----------------------------------------------------------------------
    def rpu_config(self, setting: str, tau: float, dw_min: float = 1e-3) -> Any:
        """The config of one ``--SETTING`` of the MNIST / CIFAR experiments."""
        raise NotImplementedError

    def least_squares_config(self, tau: float, dw_min: float, w_noise: float, desired_bl: int, *,
                             managed_io: bool = False, subtract_symmetry_point: bool = False) -> Any:
        """Analog SGD on the ideal τ-bounded device of S1–S3 (utils.rpu_configs)."""
        return self._least_squares_builder()(tau, dw_min, w_noise, desired_bl, managed_io=managed_io,
                                             subtract_symmetry_point=subtract_symmetry_point)

    def _least_squares_builder(self) -> Callable[..., Any]:
        raise NotImplementedError

    def convert(self, digitals: Sequence[nn.Sequential], configs: Sequence[Any]) -> nn.Module:
        """One analog network from R digital twins (run r's initial weights are ``digitals[r]``'s)."""
        raise NotImplementedError

    def linear(self, in_features: int, out_features: int, config: Any) -> nn.Module:
        """One analog linear layer (digital bias) with torch's default init of nn.Linear."""
        raise NotImplementedError

    def set_linear_weights(self, layer: nn.Module, weight: Tensor, bias: Tensor) -> None:
        """Program a :meth:`linear` layer: ``weight`` (out, in), ``bias`` (out,)."""
        raise NotImplementedError

    def linear_weights(self, layer: nn.Module) -> tuple[Tensor, Tensor]:
        """(weight (out, in), bias (out,)) of a :meth:`linear` layer, read exactly."""
        raise NotImplementedError

    def head_parameters(self, head: nn.Module, prefix: str) -> list[tuple[str, nn.Parameter]]:
        """The named parameters of an analog head in the order AIHWKit's AnalogLinear lists them."""
        return list(head.named_parameters(prefix))

    def optimizer(self, params: Iterable, lr: float) -> torch.optim.Optimizer:
        """AnalogSGD over ``params`` (tensors or param groups)."""
        raise NotImplementedError

    def model_optimizer(self, model: nn.Module, lr: float) -> torch.optim.Optimizer:
        """AnalogSGD with one group over every parameter of ``model`` (the authors' MNIST loop)."""
        return self.optimizer(model.parameters(), lr)

    def least_squares_optimizer(self, model: nn.Module, lr: float) -> torch.optim.Optimizer:
        """AnalogSGD of a least-squares :meth:`linear` layer."""
        return self.optimizer(model.parameters(), lr)

    def load_state(self, model: nn.Module, state_dict: dict[str, Any]) -> None:
        """``model.load_state_dict`` with what the backend needs besides."""
        model.load_state_dict(state_dict)

    # --- Figure 7 ---------------------------------------------------------------------------------
    def weight_values(self, model: nn.Module) -> np.ndarray:
        """Every analog weight of a one-run model as its layer applies it (times the tile's learned
        output scale)."""
        raise NotImplementedError

    def device_states(self, model: nn.Module, setting: str) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """(weights, upper bounds, lower bounds) of every tile's devices of a one-run model;
        Tiki-Taka: its main array C."""
        raise NotImplementedError


class AIHWKitBackend(Backend):
    """IBM's AIHWKit 1.1.0 (the authors' simulator): one run at a time. ``reseed_every`` > 0 gives
    every tile a new random generator after every that many steps (its CPU tiles only;
    docs/aihwkit_cpu_noise.md)."""

    name, batched, label = "aihwkit", False, "AIHWKit"
    least_squares_suffix = ""
    # AIHWKit runs keep the folder names they had before --backend existed
    least_squares_ignore = ("backend", "update_mode")

    def __init__(self, reseed_every: int = 0) -> None:
        self.reseed_every = reseed_every

    @property
    def suffix(self) -> str:
        """"" or "-reseed<K>" (--reseed-noise-every K)."""
        return f"-reseed{self.reseed_every}" if self.reseed_every else ""

    @property
    def flags(self) -> str:
        return f" --reseed-noise-every {self.reseed_every}" if self.reseed_every else ""

    def record(self) -> dict[str, Any]:
        return {"reseed_noise_every": self.reseed_every} if self.reseed_every else {}

    def require(self) -> None:
        """AIHWKit must import (utils.rpu_configs says in one line why it does not)."""
        import utils.rpu_configs  # noqa: F401

    def training_device(self, cuda: int) -> torch.device:
        """A GPU needs an AIHWKit built with CUDA (the PyPI wheel is CPU-only)."""
        from utils.cli import torch_device
        from utils.rpu_configs import aihwkit_has_cuda  # a missing AIHWKit is reported there

        device = torch_device(cuda)
        if device.type == "cuda" and not aihwkit_has_cuda():
            raise UserError(f"--CUDA {cuda}: this AIHWKit was built without CUDA (the PyPI wheel is "
                            "CPU-only; install aihwkit-gpu from conda-forge); use --CUDA -1 (CPU) or "
                            "--backend torch")
        return device

    def head_device(self, device: torch.device) -> torch.device:
        """The PyPI AIHWKit has CPU tiles only: the head then stays on the CPU next to a GPU
        backbone."""
        if device.type != "cuda":
            return device
        from utils.rpu_configs import aihwkit_has_cuda

        return device if aihwkit_has_cuda() else torch.device("cpu")

    def rpu_config(self, setting: str, tau: float, dw_min: float = 1e-3) -> Any:
        from utils.rpu_configs import rpu_config

        return rpu_config(setting, tau, dw_min)

    def _least_squares_builder(self) -> Callable[..., Any]:
        from utils.rpu_configs import least_squares_config

        return least_squares_config

    def convert(self, digitals: Sequence[nn.Sequential], configs: Sequence[Any]) -> nn.Module:
        """AIHWKit's convert_to_analog (as the authors convert the FCN): a layer with more than 512
        inputs is split into tiles whose outputs are summed digitally."""
        from aihwkit.nn.conversion import convert_to_analog

        if len(digitals) != 1 or len(configs) != 1:
            raise ValueError("AIHWKit builds one run at a time")
        return convert_to_analog(digitals[0], configs[0])

    def linear(self, in_features: int, out_features: int, config: Any) -> nn.Module:
        from aihwkit.nn import AnalogLinear

        return AnalogLinear(in_features, out_features, bias=True, rpu_config=config)

    def set_linear_weights(self, layer: nn.Module, weight: Tensor, bias: Tensor) -> None:
        layer.set_weights(weight, bias)

    def linear_weights(self, layer: nn.Module) -> tuple[Tensor, Tensor]:
        return layer.get_weights()

    def optimizer(self, params: Iterable, lr: float) -> torch.optim.Optimizer:
        from aihwkit.optim import AnalogSGD

        return AnalogSGD(params, lr=lr)  # no regroup_param_groups (as the authors)

    def model_optimizer(self, model: nn.Module, lr: float) -> torch.optim.Optimizer:
        optimizer = self.optimizer(model.parameters(), lr)
        if self.reseed_every:
            steps = [0]

            def after_step(*_) -> None:
                steps[0] += 1
                if steps[0] % self.reseed_every == 0:
                    reseed_aihwkit_tiles(model)
            optimizer.register_step_post_hook(after_step)
        return optimizer

    def least_squares_optimizer(self, model: nn.Module, lr: float) -> torch.optim.Optimizer:
        optimizer = self.optimizer(model.parameters(), lr)
        optimizer.regroup_param_groups(model)
        return optimizer

    def load_state(self, model: nn.Module, state_dict: dict[str, Any]) -> None:
        load_model_state(model, state_dict)

    def weight_values(self, model: nn.Module) -> np.ndarray:
        return np.concatenate([layer.get_weights()[0].flatten().numpy()
                               for layer in model.analog_layers()])

    def device_states(self, model: nn.Module, setting: str) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        suffix = "_1" if setting == "TT-v1" else ""  # C is device 1
        for tile in model.analog_tiles():
            hidden = tile.get_hidden_parameters()
            w = hidden["hidden_weights_1"] if suffix else tile.tile.get_weights()
            yield w, hidden[f"max_bound{suffix}"], hidden[f"min_bound{suffix}"]


def load_model_state(model: nn.Module, state_dict: dict[str, Any]) -> None:
    """``model.load_state_dict`` plus a workaround for the AIHWKit tiles it holds (the state of
    any other model loads as it is): AIHWKit 1.1.0 restores a tile's hidden parameters *before*
    its weights, and TransferCompound.set_weights zeroes the fast array A, so a resumed Tiki-Taka
    run would restart with A = 0. The saved hidden parameters are set again."""
    model.load_state_dict(state_dict)
    for name, module in model.named_modules():
        state = state_dict.get(f"{name}.analog_tile_state")
        if state is not None:
            module.tile.set_hidden_parameters(state["analog_tile_hidden_parameters"])


def reseed_aihwkit_tiles(model: nn.Module) -> None:
    """Give every AIHWKit tile of ``model`` a new random generator, so the mean its read noise
    keeps changes (docs/aihwkit_cpu_noise.md). The simulator tile is rebuilt from the tile's
    state (a copy of the C++ object alone would keep its seed, hence its list of Gaussian numbers):
    weights, devices, learning rate and Tiki-Taka's transfer position carry over, and the hidden
    parameters are set again because rebuilding zeroes A (as loading a state does, Deviation 18)."""
    for tile in model.analog_tiles():
        hidden = tile.get_hidden_parameters()
        tile.tile = copy.deepcopy(tile).tile
        tile.set_hidden_parameters(hidden)


class TorchBackend(Backend):
    """The torch backend (utils/analog_torch): many runs batched as one model. ``update_mode``
    "moment" | "pulse"; ``noise_list`` > 0 draws the read noise from fixed lists of that many
    numbers; ``compile`` turns the C++ kernels and torch.compile on or off (None: left as is)."""

    name, batched = "torch", True
    least_squares_suffix, least_squares_ignore = "_torch", ()

    def __init__(self, update_mode: str = "moment", noise_list: int = 0,
                 compile: bool | None = None) -> None:
        self.update_mode, self.noise_list, self.compile = update_mode, noise_list, compile

    @property
    def label(self) -> str:
        return f"torch backend, {self.update_mode}"

    @property
    def suffix(self) -> str:
        """"-torch" (moment-matched updates) or "-torch-pulse" (exact pulses), then "-list<N>" when
        the read noise comes from fixed lists of N numbers (--noise-list)."""
        return ("-torch" + ("-pulse" if self.update_mode == "pulse" else "")
                + (f"-list{self.noise_list}" if self.noise_list else ""))

    @property
    def flags(self) -> str:
        return (f" --backend torch --update-mode {self.update_mode}"
                + (f" --noise-list {self.noise_list}" if self.noise_list else ""))

    def record(self) -> dict[str, Any]:
        record: dict[str, Any] = {"backend": "torch", "update_mode": self.update_mode}
        if self.noise_list:
            record["noise_list"] = self.noise_list
        return record

    def activate(self) -> None:
        from utils.analog_torch.tile import set_compile, set_noise_list

        if self.compile is not None:
            set_compile(self.compile)
            set_noise_list(self.noise_list)

    def training_device(self, cuda: int) -> torch.device:
        from utils.cli import torch_device

        return torch_device(cuda)

    def rpu_config(self, setting: str, tau: float, dw_min: float = 1e-3) -> Any:
        """utils.rpu_configs' AIHWKit config converted when AIHWKit is importable (one source of
        settings), else the torch backend's own presets (a torch-only install)."""
        try:
            from utils import rpu_configs
        except ImportError:
            from utils.analog_torch.presets import rpu_config

            return rpu_config(setting, tau, dw_min)
        from utils.analog_torch.config import from_aihwkit

        return from_aihwkit(rpu_configs.rpu_config(setting, tau, dw_min))

    def _least_squares_builder(self) -> Callable[..., Any]:
        from utils.analog_torch.presets import least_squares_config

        return least_squares_config

    def convert(self, digitals: Sequence[nn.Sequential], configs: Sequence[Any]) -> nn.Module:
        from utils.analog_torch.nn import convert

        return convert(digitals, configs, self.update_mode)

    def linear(self, in_features: int, out_features: int, config: Any) -> nn.Module:
        from utils.analog_torch.nn import AnalogLinear

        digital = nn.Linear(in_features, out_features)  # the same init as AIHWKit's AnalogLinear
        layer = AnalogLinear(in_features, out_features, [config], update_mode=self.update_mode)
        layer.set_weights(digital.weight.detach()[None], digital.bias.detach()[None])
        return layer

    def set_linear_weights(self, layer: nn.Module, weight: Tensor, bias: Tensor) -> None:
        layer.set_weights(weight[None], bias[None])

    def linear_weights(self, layer: nn.Module) -> tuple[Tensor, Tensor]:
        return layer.get_weights()[0], layer.bias[0].detach()

    def head_parameters(self, head: nn.Module, prefix: str) -> list[tuple[str, nn.Parameter]]:
        return head.aihwkit_parameter_order(prefix)

    def optimizer(self, params: Iterable, lr: float) -> torch.optim.Optimizer:
        from utils.analog_torch.nn import AnalogSGD

        return AnalogSGD(params, lr=lr)

    def weight_values(self, model: nn.Module) -> np.ndarray:
        from utils.analog_torch.nn import analog_layers

        values = []
        for layer in analog_layers(model):
            for k, tile in enumerate(layer.tiles):
                scale = 1.0 if layer.out_scaling is None else float(layer.out_scaling[k][0])
                values.append((tile.weight[0] * scale).flatten().detach().numpy())
        return np.concatenate(values)

    def device_states(self, model: nn.Module, setting: str) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        from utils.analog_torch.nn import analog_tiles

        for tile in analog_tiles(model):
            array = tile.slow if setting == "TT-v1" else tile.array
            yield array.weight[0], array.max_bound[0], array.min_bound[0]


AIHWKIT = AIHWKitBackend()


def make_backend(name: str = "aihwkit", update_mode: str = "moment", noise_list: int = 0,
                 reseed_every: int = 0, compile: bool | None = None) -> Backend:
    """The backend ``name`` ("aihwkit" | "torch") with its settings (the others are ignored)."""
    if name == "aihwkit":
        return AIHWKitBackend(reseed_every)
    if name == "torch":
        return TorchBackend(update_mode, noise_list, compile)
    raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")


def from_args(args: argparse.Namespace) -> Backend:
    """The backend of a script's parsed flags (--backend, --update-mode and, where the script has
    them, --no-compile, --noise-list, --reseed-noise-every), checked: a flag the chosen backend
    cannot honour is a UserError. Nothing is switched on here (see :meth:`Backend.activate`)."""
    name = getattr(args, "backend", "aihwkit")
    noise_list = getattr(args, "noise_list", 0) or 0
    reseed = getattr(args, "reseed_noise_every", 0) or 0
    if noise_list and name != "torch":
        raise UserError("--noise-list needs --backend torch (AIHWKit's own CPU tiles always draw "
                        "their noise from such lists)")
    if reseed and (name != "aihwkit" or getattr(args, "CUDA", -1) != -1):
        raise UserError("--reseed-noise-every acts on AIHWKit's CPU tiles only (--backend aihwkit, "
                        "--CUDA -1); the torch backend and AIHWKit on a GPU draw fresh noise")
    compile = (not args.no_compile) if hasattr(args, "no_compile") else None
    return make_backend(name, getattr(args, "update_mode", "moment"), noise_list, reseed, compile)
