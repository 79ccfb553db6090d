"""Table 2: ImageNet-pretrained ResNets fine-tuned on CIFAR-10 with only the classifier analog (the
authors' A12-resnet-finetune.py), through the one training loop of utils.engine.

Settings (as in the authors' code unless docs/deviations.md says otherwise): torchvision's
IMAGENET1K_V1 weights; ``fc`` replaced by ``AnalogLinear(num_ftrs, 10)`` on the τ-bounded
soft-bounds device with Δw_min = τ/600; AnalogSGD without momentum or weight decay; base lr 0.15
for FP SGD and 0.075 for Analog SGD / TT-v1 (Tiki-Taka's fast array at 0.01, not scheduled);
StepLR(50, 0.1) per epoch; 100 epochs of batch 128; CrossEntropy; the training images flipped
horizontally and vertically at random, resized to 224 and normalised with ImageNet's mean and std.

Learning rates come in named parameter groups (printed at the start, kept in config.json, and
per epoch in metrics.jsonl as ``group_lr``):
  backbone      every parameter of the ResNet without its classifier
  head tile     the AnalogContext of each analog tile: AIHWKit updates a tile at the lr of the
                group that holds its context (and Tiki-Taka's transfer onto C at that lr too,
                scale_transfer_lr)
  head bias     the classifier's digital bias
  output scale  the learnable digital gain of each analog tile (Analog SGD, TT-v1)
``--lr-groups authors`` (default) gives each group what the authors' code effectively gave it: it
passed two groups by position, every parameter tensor but the last at lr/10 and the last one at lr.
The last tensor is the output scale (analog; ResNet-50: the scale of the 4th of its 4 tiles only) or
the bias (FP SGD; ResNet-50: the context of the 4th tile). So Analog SGD / TT-v1 train the backbone,
the head tiles and the bias at 0.0075; FP SGD trains the backbone and the head weights at 0.015 and
the bias at 0.15 (ResNet-50: three tiles and the bias at 0.015, the fourth tile at 0.15).
``--lr-groups intended`` trains the whole head at lr and the backbone at lr/10, what the two groups
were meant to do.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from utils.analog_torch.presets import SETTINGS, TT_FAST_LR
from utils.backend import AIHWKIT, Backend, from_args
from utils.cli import (
    BACKEND_HELP,
    DEFAULT_OUT,
    Parser,
    UserError,
    add_backend_flags,
    fail,
    make_parser,
    nonneg_int,
    out_dir,
    positive_float,
    positive_int,
    torch_device,
)
from utils.paper import (
    TABLE2_BATCH_SIZE,
    TABLE2_EPOCHS,
    TABLE2_IMAGE_SIZE,
    TABLE2_LR,
    TABLE2_LR_GAMMA,
    TABLE2_LR_STEP,
    TABLE2_MODELS,
    TABLE2_TAU,
)
from utils.runs import run_name

EXPERIMENT = "CIFAR10-finetune"
BACKBONE_LR_FACTOR = 0.1  # the authors' first group: lr/10
LR_MODES = ("authors", "intended")
TEST_BATCH = 128
WORKERS = 6  # the authors' DataLoader workers
DW_MIN_STATES = 600  # Δw_min = τ/600: 1,200 pulses from -τ to τ (as in the authors' code)
# Settings a resumed run may change: they do not change its numbers (the weights file may move;
# its SHA-256 may not).
MAY_CHANGE = ("workers", "channels_last", "head_device", "weights_file")


# --- learning-rate groups -------------------------------------------------------------------------

def parameter_role(name: str, param: nn.Parameter) -> str:
    """"backbone", "head tile", "head bias" or "output scale" for a parameter of AnalogHeadNet
    (either backend: a tile's parameter carries the tile as ``analog_tile``)."""
    if name.startswith("backbone."):
        return "backbone"
    if getattr(param, "analog_tile", None) is not None:
        return "head tile"
    if name.endswith("out_scaling_alpha") or ".out_scaling." in name:
        return "output scale"
    if name.endswith("bias"):
        return "head bias"
    raise ValueError(f"unexpected parameter {name} in the model")


def lr_groups(model: nn.Module, lr: float, mode: str = "authors") -> list[dict[str, Any]]:
    """The named parameter groups of ``model`` (an AnalogHeadNet) with their lr: "authors" repeats
    the positional rule of the authors' code (the last parameter tensor at ``lr``, every other one
    at lr/10), "intended" trains the head at ``lr`` and the backbone at lr/10. Frozen parameters
    are left out. Where the positional rule splits a role (the last tensor is one of several of
    its role, e.g. ResNet-50's four output scales), the group holding the last tensor is named
    "<role> (last parameter)" and the other one "<role> (others)".

    Each group: {"name", "lr", "params", "param_names"} (AnalogSGD takes "params", "lr", "name").
    """
    if mode not in LR_MODES:
        raise ValueError(f"unknown lr-group mode {mode!r}; choose one of {', '.join(LR_MODES)}")
    named = model.aihwkit_parameter_order()
    last = named[-1][0]
    grouped: dict[tuple[str, float], list[tuple[str, nn.Parameter]]] = {}
    for name, param in named:
        role = parameter_role(name, param)
        if mode == "authors":
            group_lr = lr if name == last else lr * BACKBONE_LR_FACTOR
        else:
            group_lr = lr * BACKBONE_LR_FACTOR if role == "backbone" else lr
        if param.requires_grad:
            grouped.setdefault((role, group_lr), []).append((name, param))
    roles = [role for role, _ in grouped]
    groups = []
    for (role, group_lr), members in grouped.items():
        names = [n for n, _ in members]
        label = role
        if roles.count(role) > 1:
            label += " (last parameter)" if last in names else " (others)"
        groups.append({"name": label, "lr": group_lr, "params": [p for _, p in members],
                       "param_names": names})
    return groups


def describe_groups(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What config.json records about the groups (the backbone's tensors only counted)."""
    out = []
    for g in groups:
        names = g["param_names"]
        listed = names if len(names) <= 8 else [f"{names[0].split('.')[0]}.* ({len(names)} tensors)"]
        out.append({"name": g["name"], "lr": g["lr"], "tensors": len(names),
                    "values": sum(_values(p) for p in g["params"]), "params": listed})
    return out


def _values(param: nn.Parameter) -> int:
    """Trained values of a parameter; for a tile's AnalogContext, the tile's weights."""
    tile = getattr(param, "analog_tile", None)
    return tile.in_size * tile.out_size if tile is not None else param.numel()


def analog_sgd(groups: list[dict[str, Any]], lr: float, backend: Backend = AIHWKIT
               ) -> torch.optim.Optimizer:
    """AnalogSGD (no momentum, no weight decay, as in the authors' code) of ``backend`` over the
    named groups."""
    return backend.optimizer([{"params": g["params"], "lr": g["lr"], "name": g["name"]}
                              for g in groups], lr)


# --- command line ---------------------------------------------------------------------------------

def add_finetune_flags(parser: argparse.ArgumentParser) -> None:
    """The authors' flags (with their short forms) and their defaults, then run and data management."""
    p = parser
    p.add_argument("-model", "--model", choices=TABLE2_MODELS, default=TABLE2_MODELS[0],
                   help="torchvision ResNet to fine-tune (default: %(default)s)")
    p.add_argument("-FFT", "--full-fine-tune", action="store_true",
                   help="train the whole network (the paper's runs); without it the backbone is "
                        "frozen and only the classifier trains")
    p.add_argument("-opt", "--optimizer", choices=SETTINGS, default=SETTINGS[0],
                   help="training algorithm of the classifier tile (default: %(default)s)")
    p.add_argument("-tau", "--tau", type=positive_float, default=TABLE2_TAU,
                   help="device bound τ: head weights live in [-τ, τ], Δw_min = τ/600; ignored by "
                        "FP SGD (default: %(default)s, the paper's)")
    p.add_argument("-CUDA", "--CUDA", type=int, default=-1,
                   help="GPU index, or -1 for the CPU (default: %(default)s). With the CPU-only "
                        "AIHWKit of PyPI the backbone runs on the GPU and the analog head on the CPU")
    add_backend_flags(p, f"{BACKEND_HELP}; its runs go to OUT/runs/{EXPERIMENT}-torch[-pulse]/")
    p.add_argument("-save", "--save-checkpoint", action="store_true",
                   help="keep the final checkpoint as model.pt in the run folder")
    p.add_argument("--seed", type=nonneg_int, default=0,
                   help="torch seed of the head's initial weights, the data order and the flips "
                        "(default: %(default)s)")
    p.add_argument("--epochs", type=positive_int, default=TABLE2_EPOCHS,
                   help="training epochs (default: %(default)s); a larger value continues a "
                        "finished run")
    p.add_argument("--batch-size", type=positive_int, default=TABLE2_BATCH_SIZE,
                   help="training mini-batch size (default: %(default)s)")
    p.add_argument("--lr", type=positive_float, default=None,
                   help="base learning rate, divided by 10 after every 50 epochs (default: 0.15 "
                        "for FP SGD, 0.075 for Analog SGD and TT-v1)")
    p.add_argument("--lr-groups", choices=LR_MODES, default=LR_MODES[0],
                   help="authors: each group at the lr the authors' code gave it (every tensor "
                        "at lr/10 but the model's last one, the output scale or, for FP SGD, the "
                        "head bias); intended: the head at lr, the backbone at lr/10 "
                        "(default: %(default)s)")
    p.add_argument("--weights", default="imagenet", metavar="imagenet|none|PATH",
                   help="initial backbone: torchvision's IMAGENET1K_V1 from torch's cache "
                        "(downloaded there if missing), none (random init, run named "
                        "<model>-scratch) or the path of a torchvision ResNet state dict "
                        "(default: %(default)s)")
    p.add_argument("--data-root", type=Path, default=Path("data/CIFAR10"),
                   help="folder holding (or receiving) cifar-10-batches-py (default: %(default)s)")
    p.add_argument("--no-download", action="store_true",
                   help="never fetch anything: CIFAR-10 and the weights must be there already")
    p.add_argument("--workers", type=nonneg_int, default=WORKERS,
                   help="DataLoader worker processes for the per-image resize "
                        "(default: %(default)s, the authors')")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="CPU threads of torch in the main process (default: torch's own)")
    p.add_argument("--image-size", type=positive_int, default=TABLE2_IMAGE_SIZE,
                   help="side the 32x32 images are resized to (default: %(default)s, the authors'); "
                        "smaller values make quick CPU runs")
    p.add_argument("--no-amp", action="store_true",
                   help="on a GPU, run the backbone in float32 (default: bfloat16 autocast where "
                        "the GPU supports it; the analog head is always float32)")
    p.add_argument("--no-channels-last", action="store_true",
                   help="on a GPU, keep the backbone in the contiguous memory format "
                        "(default: channels_last)")
    p.add_argument("--out", type=out_dir, default=DEFAULT_OUT,
                   help="results root; the run goes to OUT/runs/ (default: %(default)s)")


def model_folder(model: str, weights_label: str) -> str:
    """The run's model folder: "Resnet18" for ImageNet weights, "Resnet18-scratch" for random
    init, "Resnet18-custom-<sha>" for another weights file."""
    if weights_label == "imagenet":
        return model
    return f"{model}-scratch" if weights_label == "none" else f"{model}-{weights_label}"


def run_folder(out: Path, model: str, weights_label: str, full_fine_tune: bool, setting: str,
               tau: float, seed: int, backend: str = "") -> Path:
    """``<out>/runs/CIFAR10-finetune[-torch[-pulse]]/<model>[/FFT]/<alg>/seed<k>`` (the authors'
    log folder, plus the seed; ``backend`` the torch backend's suffix)."""
    folder = Path(out) / "runs" / (EXPERIMENT + backend) / model_folder(model, weights_label)
    if full_fine_tune:
        folder = folder / "FFT"
    return folder / run_name(setting, tau) / f"seed{seed}"


def train_finetune(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Validate the flags, load the weights and CIFAR-10, train. Every check that can fail runs
    before the run folder is touched."""
    from utils.data.cifar10 import CifarImages, ImageLoader, load_cifar10
    from utils.engine import fit
    from utils.models import build_resnet
    from utils.weights import load_backbone_weights

    backend = from_args(args)
    suffix = backend.suffix
    device = torch_device(args.CUDA)  # the head goes where backend.head_device says
    gpu = device.type == "cuda"
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    setting, tau = args.optimizer, args.tau
    backend.activate()
    config = backend.rpu_config(setting, tau, dw_min=tau / DW_MIN_STATES)
    head_device = backend.head_device(device)
    download = not args.no_download
    weights = load_backbone_weights(args.model, args.weights, download=download)
    data = load_cifar10(args.data_root, download=download)
    autocast = (torch.bfloat16 if gpu and not args.no_amp and torch.cuda.is_bf16_supported()
                else None)
    channels_last = gpu and not args.no_channels_last
    lr = args.lr if args.lr is not None else TABLE2_LR[setting]
    freeze = not args.full_fine_tune

    def build() -> nn.Module:
        model = build_resnet(args.model, config, backend, state_dict=weights.state_dict,
                             freeze_backbone=freeze)
        model.autocast_dtype, model.channels_last = autocast, channels_last
        return model

    groups = describe_groups(lr_groups(build_resnet(args.model, config, backend,
                                                    freeze_backbone=freeze),
                                       lr, args.lr_groups))
    record = {
        "experiment": EXPERIMENT + suffix, "model": args.model, "full_fine_tune": args.full_fine_tune,
        "setting": setting, "tau": None if setting == "FP SGD" else tau,
        "dw_min": None if setting == "FP SGD" else tau / DW_MIN_STATES,
        "tt_fast_lr": TT_FAST_LR if setting == "TT-v1" else None,
        "rpu_config": repr(config), **weights.describe(), "data": data.describe(),
        "image_size": args.image_size, "lr_groups_mode": args.lr_groups, "lr_groups": groups,
        "autocast": None if autocast is None else str(autocast).removeprefix("torch."),
        "channels_last": channels_last, "head_device": str(head_device), "workers": args.workers,
    }
    record.update(backend.record())
    folder = run_folder(args.out, args.model, weights.label, args.full_fine_tune, setting, tau,
                        args.seed, suffix)
    mode = "full fine-tuning" if args.full_fine_tune else "frozen backbone"
    amp = f" ({record['autocast']} autocast)" if autocast is not None else ""
    print(f"{EXPERIMENT + suffix} {args.model} ({mode}, weights {weights.label}) "
          f"{run_name(setting, tau)} seed {args.seed}: {len(data.train_labels)} training images "
          f"from {data.folder}, {args.image_size} px, batch {args.batch_size}, {args.epochs} "
          f"epochs; backbone on {device}{amp}, head on {head_device}")
    print(f"learning rates ({args.lr_groups}; StepLR x{TABLE2_LR_GAMMA} every {TABLE2_LR_STEP} epochs):")
    for g in groups:
        print(f"  {g['name']:<28s} lr {g['lr']:<8g} {g['tensors']:4d} tensors, {g['values']:,} values")
    if setting == "TT-v1":
        print(f"  Tiki-Taka: fast array A at {TT_FAST_LR} (constant); transfers onto C at the "
              "head tile's lr")
    if gpu:
        torch.backends.cudnn.benchmark = True
    train_images = CifarImages(data.train_images, data.train_labels, args.image_size)
    test_images = CifarImages(data.test_images, data.test_labels, args.image_size)
    return fit(
        [folder], lambda _: build(),
        [ImageLoader(train_images, args.batch_size, shuffle=True, seed=args.seed,
                     workers=args.workers, device=device)],
        ImageLoader(test_images, TEST_BATCH, shuffle=False, workers=args.workers, device=device),
        lr=lr, epochs=args.epochs, seeds=[args.seed], device=device, records=[record],
        save_model=args.save_checkpoint, loss_fn=F.cross_entropy,
        make_optimizer=lambda model: analog_sgd(lr_groups(model, lr, args.lr_groups), lr, backend),
        lr_step=TABLE2_LR_STEP, lr_gamma=TABLE2_LR_GAMMA,
        to_device=lambda model, dev: model.place(dev, head_device), may_change=MAY_CHANGE)[0]


def finetune_parser(doc: str | None) -> Parser:
    parser = make_parser(doc)
    add_finetune_flags(parser)
    return parser


def finetune_main(doc: str | None, argv: list[str] | None = None) -> None:
    """The command line of A12-resnet-finetune.py: a UserError (bad flag, missing data or weights,
    corrupt checkpoint) ends the program with one line and exit status 2."""
    parser = finetune_parser(doc)
    try:
        train_finetune(parser.parse_args(argv))
    except UserError as err:
        fail(str(err))
