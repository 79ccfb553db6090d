"""Analog layers, the conversion of a digital network and the optimizer of the torch backend, for
R runs at once.

A batched network takes the R runs' mini-batches stacked along the batch dimension, run r's
samples in rows r·B … (r+1)·B − 1, and returns their outputs the same way. Layers that are not
analog (activations, pooling) treat the R·B rows as one batch; analog layers view them as (R, B, …)
and give each run its own tiles. Since no parameter is shared between runs, the gradient of the
sum of the runs' losses (:func:`batched_loss`) gives each run exactly its own gradient.

As in AIHWKit: a linear layer with more than ``max_input_size`` inputs (``max_output_size``
outputs) is split into tiles of near-equal size whose partial outputs are summed digitally; each
tile has its own learnable output gain when ``mapping.learn_out_scaling``; the bias is digital;
convolutions are never split; the update vectors of a convolution are its (sample, patch) pairs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.optim import Optimizer

from utils.analog_torch.config import RPUConfig
from utils.analog_torch.tile import AnalogTile, tile_grid


def _chunks(size: int, limit: int) -> list[int]:
    n = max(1, math.ceil(size / limit))
    return [len(c) for c in torch.arange(size).tensor_split(n)]


class AnalogLinear(nn.Module):
    """``y = Σ_tiles α_t·tile_t(x_t) + b`` for R runs; x (R·B, in) → (R·B, out)."""

    def __init__(self, in_features: int, out_features: int, configs: Sequence[RPUConfig],
                 bias: bool = True, update_mode: str = "moment", salt: int = 0) -> None:
        super().__init__()
        self.in_features, self.out_features, self.runs = in_features, out_features, len(configs)
        mapping = configs[0].mapping
        self.in_sizes = _chunks(in_features, mapping.max_input_size)
        self.out_sizes = _chunks(out_features, mapping.max_output_size)
        self.tiles = nn.ModuleList(
            AnalogTile(o, i, configs, update_mode, salt=salt * 64 + k)
            for k, (o, i) in enumerate((o, i) for o in self.out_sizes for i in self.in_sizes))
        self.out_scaling = (nn.ParameterList(nn.Parameter(torch.ones(self.runs))
                                             for _ in self.tiles)
                            if mapping.learn_out_scaling else None)
        self.bias = nn.Parameter(torch.zeros(self.runs, out_features)) if bias else None

    def aihwkit_parameter_order(self, prefix: str = "") -> list[tuple[str, nn.Parameter]]:
        """The named parameters in the order AIHWKit's AnalogLinear lists them (one tile: tile,
        bias, output scale; split: bias, then tile and output scale of each tile), for rules that
        depend on the position of a parameter (the authors' learning-rate groups of Table 2)."""
        params = dict(self.named_parameters(prefix.rstrip(".") if prefix else ""))
        sep = "." if prefix else ""
        tile = [(f"{prefix}{sep}tiles.{k}.ctx", f"{prefix}{sep}out_scaling.{k}")
                for k in range(len(self.tiles))]
        bias = [f"{prefix}{sep}bias"]
        order = ([tile[0][0], *bias, tile[0][1]] if len(tile) == 1 else
                 [*bias, *(n for pair in tile for n in pair)])
        return [(n, params[n]) for n in order if n in params]

    def analog_tiles(self) -> Iterator[AnalogTile]:
        """The layer's tiles (an iterator, as AIHWKit's analog modules give them)."""
        return iter(self.tiles)

    @torch.no_grad()
    def set_weights(self, weight: Tensor, bias: Tensor | None = None) -> None:
        """Program the full weight (R, out, in) across the tiles, and the bias (R, out)."""
        k = 0
        for o0, o in zip(_offsets(self.out_sizes), self.out_sizes, strict=True):
            for i0, i in zip(_offsets(self.in_sizes), self.in_sizes, strict=True):
                self.tiles[k].set_weights(weight[:, o0:o0 + o, i0:i0 + i])
                k += 1
        if bias is not None and self.bias is not None:
            self.bias.copy_(bias)

    def get_weights(self) -> Tensor:
        """The visible weights (R, out, in) assembled from the tiles (without output gains)."""
        rows, k = [], 0
        for _ in self.out_sizes:
            rows.append(torch.cat([self.tiles[k + j].weight for j in range(len(self.in_sizes))], -1))
            k += len(self.in_sizes)
        return torch.cat(rows, dim=1)

    def forward_runs(self, x: Tensor) -> Tensor:
        """(R, N, in) → (R, N, out)."""
        return tile_grid(x, self.tiles, self.in_sizes, self.out_sizes, self.tiles[0].ctx,
                         self.bias, () if self.out_scaling is None else tuple(self.out_scaling))

    def forward(self, x: Tensor) -> Tensor:
        y = self.forward_runs(x.reshape(self.runs, -1, self.in_features))
        return y.reshape(-1, self.out_features)


class AnalogConv2d(nn.Module):
    """A 2-D convolution on one tile of ``out_channels × in_channels·k·k`` (never split), R runs;
    every (sample, patch) pair is one update vector."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 configs: Sequence[RPUConfig], stride: int = 1, padding: int = 0,
                 bias: bool = True, update_mode: str = "moment", salt: int = 0) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.runs = in_channels, out_channels, len(configs)
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        fan_in = in_channels * kernel_size * kernel_size
        self.tile = AnalogTile(out_channels, fan_in, configs, update_mode, salt=salt * 64)
        self.out_scaling = (nn.Parameter(torch.ones(self.runs, 1))
                            if configs[0].mapping.learn_out_scaling else None)
        self.bias = nn.Parameter(torch.zeros(self.runs, out_channels)) if bias else None

    def analog_tiles(self) -> Iterator[AnalogTile]:
        return iter([self.tile])

    @torch.no_grad()
    def set_weights(self, weight: Tensor, bias: Tensor | None = None) -> None:
        """weight (R, out, in, k, k) or (R, out, in·k·k); bias (R, out)."""
        self.tile.set_weights(weight.reshape(self.runs, self.out_channels, -1))
        if bias is not None and self.bias is not None:
            self.bias.copy_(bias)

    def get_weights(self) -> Tensor:
        return self.tile.weight

    def forward(self, x: Tensor) -> Tensor:
        k, s, p = self.kernel_size, self.stride, self.padding
        # the patches as rows, (R, B·L, C·k·k) in F.unfold's order (channel, then kernel row and
        # column; patches row-major), from strided views with one copy (F.unfold, then its
        # transpose, copies twice)
        x = F.pad(x, (p, p, p, p)) if p else x
        patches = x.unfold(2, k, s).unfold(3, k, s)  # (R·B, C, h_out, w_out, k, k)
        n, _, h_out, w_out = patches.shape[:4]
        cols = patches.permute(0, 2, 3, 1, 4, 5).reshape(self.runs, -1, self.tile.in_size)
        y = tile_grid(cols, [self.tile], [self.tile.in_size], [self.out_channels], self.tile.ctx,
                      self.bias, () if self.out_scaling is None else (self.out_scaling,))
        return y.reshape(n, h_out * w_out, self.out_channels).transpose(1, 2).reshape(
            n, self.out_channels, h_out, w_out)


def _offsets(sizes: list[int]) -> list[int]:
    out, total = [], 0
    for s in sizes:
        out.append(total)
        total += s
    return out


def analog_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (AnalogLinear, AnalogConv2d))]


def analog_tiles(model: nn.Module) -> list[AnalogTile]:
    return [m for m in model.modules() if isinstance(m, AnalogTile)]


# --- converting a digital network --------------------------------------------------------------------

def convert(digitals: Sequence[nn.Sequential], configs: Sequence[RPUConfig],
            update_mode: str = "moment") -> nn.Sequential:
    """One batched analog network from R digital twins (their initial weights, one per run): every
    nn.Linear and nn.Conv2d becomes an analog layer holding the R runs' weights, the other layers
    are kept (utils.models defines the digital networks)."""
    layers, salt = [], 0
    for modules in zip(*digitals, strict=True):
        first = modules[0]
        if isinstance(first, nn.Linear):
            layer = AnalogLinear(first.in_features, first.out_features, configs,
                                 update_mode=update_mode, salt=salt)
        elif isinstance(first, nn.Conv2d):
            layer = AnalogConv2d(first.in_channels, first.out_channels, first.kernel_size[0],
                                 configs, stride=first.stride[0], padding=first.padding[0],
                                 update_mode=update_mode, salt=salt)
        else:
            layers.append(first)
            continue
        layer.set_weights(torch.stack([m.weight.detach() for m in modules]),
                          torch.stack([m.bias.detach() for m in modules]))
        layers.append(layer)
        salt += 1
    return nn.Sequential(*layers)


def batched_loss(log_probs: Tensor, target: Tensor, runs: int) -> Tensor:
    """Σ_r (mean NLL of run r): each run gets the gradient of its own mean loss."""
    return F.nll_loss(log_probs, target) * runs


# --- the optimizer ------------------------------------------------------------------------------------

class AnalogSGD(Optimizer):
    """Plain SGD for digital parameters; for each tile (found through its ``ctx`` parameter) the
    pulsed update at its group's learning rate (re-read every step, so LR schedulers act on the
    tiles, as in AIHWKit's AnalogSGD)."""

    def __init__(self, params, lr: float) -> None:
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                tile = getattr(p, "analog_tile", None)
                if tile is not None:
                    tile.apply_update(group["lr"])
                elif p.grad is not None:
                    p.add_(p.grad, alpha=-group["lr"])
        return loss


# --- one run's state out of a batched model, and back -------------------------------------------------

def run_state(state: dict[str, Tensor], run: int) -> dict[str, Tensor]:
    """The state dict of run ``run`` alone (an R = 1 model) from a batched model's state dict."""
    return {k: v[run:run + 1].clone() for k, v in state.items()}


def stack_states(states: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
    """A batched model's state dict from R single-run state dicts (inverse of run_state)."""
    return {k: torch.cat([s[k] for s in states]) for k in states[0]}
