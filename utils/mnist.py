"""Figure 5: the MNIST experiments of S4.1 (FCN) and S4.2 (CNN), and S4.3's study on the FCN, built
on the training loop of utils.engine.

A run of network N, setting s, τ and seed k lives in
``<out>/runs/MNIST-N[-study]<backend suffix>/<s>-tau=<τ>/seed<k>/`` (utils.engine describes its
files). With AIHWKit the runs of the flags' (τ, seed) grid train one after the other; with the torch
backend all of them train as one batched model.
"""

from __future__ import annotations

import argparse

import torch

from utils.backend import Backend, from_args
from utils.cli import UserError
from utils.engine import EVAL_BATCH, Probe, fit
from utils.models import build_network
from utils.runs import run_folder, run_name


def experiment_name(network: str, backend: Backend, study: str = "") -> str:
    """The runs/ subfolder of an MNIST network: "MNIST-FCN", "MNIST-FCN-torch",
    "MNIST-FCN-torch-pulse" (the backend's suffix); a ``study`` (S4.3's "escape") keeps its runs
    apart: "MNIST-FCN-escape-torch-pulse"."""
    return f"MNIST-{network}{'-' + study if study else ''}{backend.suffix}"


def train_mnist(args: argparse.Namespace, network: str, *, study: str = "",
                out_scaling: bool = True, probe: Probe | None = None) -> None:
    """S4.1 / S4.2: validate the flags, load MNIST, train every (τ, seed) of the flags: one run
    after the other with AIHWKit, as one batched model with the torch backend. Every check that
    can fail runs before a run folder is touched. S4.3 adds a ``study`` name to the experiment
    folder, may turn the tiles' learnable output scaling off (``out_scaling``) and records a
    ``probe`` (batched backends only) per epoch."""
    from utils.data.mnist import TensorLoader, load_mnist

    backend = from_args(args)
    device = backend.training_device(args.CUDA)
    torch.set_num_threads(args.threads)
    taus = [None] if args.SETTING == "FP SGD" else list(dict.fromkeys(args.tau))
    seeds = list(dict.fromkeys(args.seed))
    grid = [(tau, seed) for tau in taus for seed in seeds]
    backend.activate()
    configs = [backend.rpu_config(args.SETTING, tau or 1.0) for tau, _ in grid]
    if not out_scaling:
        for config in configs:
            config.mapping.learn_out_scaling = False
    data = load_mnist(args.data_root, download=not args.no_download)
    train_set = data.train
    if args.train_subset is not None:
        if args.train_subset > len(train_set):
            raise UserError(f"--train-subset {args.train_subset} exceeds the {len(train_set)} "
                            "training images")
        train_set = train_set.head(args.train_subset)
    experiment = experiment_name(network, backend, study)
    records = []
    for (tau, _), config in zip(grid, configs, strict=True):
        # "model": the builder's name, as every record of these runs has carried it
        record = {"experiment": experiment, "model": f"build_{network.lower()}",
                  "setting": args.SETTING, "tau": tau, "rpu_config": repr(config),
                  "data": data.describe(), "train_subset": args.train_subset}
        record.update(backend.record())
        records.append(record)
    folders = [run_folder(args.out, experiment, args.SETTING, tau or 1.0, seed) for tau, seed in grid]
    train_set, test = train_set.to(device), TensorLoader(data.test.to(device), EVAL_BATCH,
                                                         shuffle=False)
    names = ", ".join(f"{run_name(args.SETTING, tau or 1.0)} seed {seed}" for tau, seed in grid)
    print(f"{experiment} {names}: {len(train_set)} training images from {data.folder}, batch "
          f"{args.batch_size}, lr {args.lr}, {args.epochs} epochs, {device}"
          + (f", {len(grid)} runs batched, {args.update_mode} updates" if backend.batched else "")
          + (f", read noise from lists of {args.noise_list}" if args.noise_list else "")
          + (f", tiles reseeded every {args.reseed_noise_every} steps"
             if args.reseed_noise_every else ""))
    loaders = [TensorLoader(train_set, args.batch_size, shuffle=True, seed=seed) for _, seed in grid]
    fit(folders, lambda idx: build_network(network, [configs[i] for i in idx], backend,
                                           [grid[i][1] for i in idx]),
        loaders, test, lr=args.lr, epochs=args.epochs, seeds=[s for _, s in grid], device=device,
        records=records, batched=backend.batched, save_model=args.save_checkpoint,
        make_optimizer=lambda model: backend.model_optimizer(model, args.lr), probe=probe)


def mnist_main(doc: str | None, network: str, batch_size: int,
               argv: list[str] | None = None) -> None:
    """The command line of S4.1 / S4.2 (``network`` "FCN" | "CNN"): parse the flags and train; a
    UserError (bad flag, missing data, corrupt checkpoint) ends the program with one line and exit
    status 2."""
    from utils.cli import add_training_flags, fail, make_parser

    parser = make_parser(doc)
    add_training_flags(parser, batch_size=batch_size)
    try:
        train_mnist(parser.parse_args(argv), network)
    except UserError as err:
        fail(str(err))
