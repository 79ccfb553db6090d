"""The one training/evaluation loop of the MNIST experiments and of the CIFAR-10 fine-tuning.

As in the authors' code: ``AnalogSGD(model.parameters(), lr)`` with a single
parameter group (AIHWKit then trains every tile at that group's lr, re-read at each step, so the
scheduler acts on the tiles too), ``StepLR(step_size=35, gamma=0.1)`` stepped once per epoch, a test
evaluation before training (epoch 0) and after every epoch.

One loop serves one run or many: ``fit`` trains R ≥ 1 runs, each model holding one run (AIHWKit,
the ResNet) or R runs batched as one model (the torch backend's MNIST networks), through
``train_one_epoch`` and ``evaluate``; the epoch's bookkeeping (records, divergence, checkpoints)
is written once. A run lives in ``<out>/runs/<experiment>/<name>/seed<seed>/`` (config.json,
metrics.jsonl, checkpoint.pt, model.pt, TensorBoard events: utils.runs). Every file is written
atomically after every epoch; rerunning the same command resumes after the last finished epoch, or
only reports a finished run. Settings other than the number of epochs, the threads, the device and
--save-checkpoint must match the run already in the folder.

Deviations from the authors' loop (docs/deviations.md): the test loss is the mean per-image loss
(theirs summed per-batch means and divided by the number of images, i.e. also by the batch size);
State/lr is the lr used in the epoch (theirs: the lr after the scheduler step, i.e. the next one).

The CIFAR-10 fine-tuning (utils.finetune) uses the same loop through keyword hooks whose defaults
are the MNIST behaviour: its own optimizer (named parameter groups, each with its lr, recorded per
epoch as ``group_lr``), StepLR's step size, the loss, how the model is placed on the device (the
analog head may stay on the CPU) and settings that may change on resume.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.optim.lr_scheduler import StepLR
from tqdm import tqdm

from utils.backend import load_model_state
from utils.cli import UserError, one_line
from utils.paper import MNIST_LR_GAMMA, MNIST_LR_STEP
from utils.results import environment
from utils.runs import RunFolder, restore_rng

EVAL_BATCH = 1000  # test images per forward pass (any size gives the same numbers)
LossFn = Callable[[Tensor, Tensor], Tensor]
Probe = Callable[[nn.Module], list[dict[str, float]]]
"""Extra per-run scalars of a batched model, read after every epoch's evaluation: one dict per run,
recorded as that epoch's ``probe`` in metrics.jsonl (e.g. utils.escape.probe_tiles)."""


def _step_loss(model: nn.Module, batch: tuple, loss_fn: LossFn, runs: int | None
               ) -> tuple[Tensor, Tensor]:
    """(the loss to minimise, each run's loss, detached) of one training step. One run: its
    ``loss_fn``; a batched model: the runs' batches stacked, Σ_r (mean NLL of run r) so that each
    run gets the gradient of its own loss."""
    if runs is None:
        ((x, y),) = batch
        loss = loss_fn(model(x), y)
        return loss, loss.detach()
    from utils.analog_torch.nn import batched_loss

    x = torch.cat([b[0] for b in batch])
    y = torch.cat([b[1] for b in batch])
    out = model(x)
    with torch.no_grad():
        per_run = F.nll_loss(out, y, reduction="none").view(runs, -1).mean(1).cpu()
    return batched_loss(out, y, runs), per_run


def _means(total: Tensor | float, n: int, runs: int | None) -> list[float]:
    if runs is None:
        return [float(total) / max(n, 1)]
    return [float(v) for v in total / max(n, 1)]


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, loaders: Sequence,
                    loss_fn: LossFn = F.nll_loss, desc: str = "", runs: int | None = None
                    ) -> list[float]:
    """One pass over the training batches; returns each run's mean batch loss (the authors' train
    loss). ``runs`` None: ``model`` is one run, reading ``loaders[0]``; R: ``model`` is a batched
    model of R runs (utils.analog_torch.nn), run r reading ``loaders[r]``."""
    model.train()
    total, n = (0.0 if runs is None else torch.zeros(runs)), 0
    bar = tqdm(zip(*loaders, strict=True), total=len(loaders[0]), desc=desc, leave=False,
               disable=None, mininterval=1.0)
    for batch in bar:
        optimizer.zero_grad()
        loss, per_run = _step_loss(model, batch, loss_fn, runs)
        loss.backward()
        optimizer.step()
        total += per_run
        n += 1
        if n % 200 == 0:
            if not torch.isfinite(torch.as_tensor(total)).any():
                break  # every run diverged: the rest of the epoch cannot bring one back
            bar.set_postfix(loss=", ".join(f"{v:.4f}" for v in _means(total, n, runs)),
                            refresh=False)
    return _means(total, n, runs)


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable, loss_fn: LossFn = F.nll_loss,
             runs: int | None = None) -> tuple[list[float], list[float]]:
    """Each run's (mean per-image loss, accuracy) over ``batches``, through the analog (noisy)
    forward. ``runs`` as in :func:`train_one_epoch`: a batched model sees every test batch once
    per run."""
    model.eval()
    loss_sum = torch.zeros(runs or 1, dtype=torch.float64)
    correct, n = torch.zeros(runs or 1, dtype=torch.float64), 0
    for x, y in batches:
        if runs is None:
            out = model(x)
            loss_sum += float(loss_fn(out, y, reduction="sum"))
            correct += int((out.argmax(dim=1) == y).sum())
        else:
            out = model(x.repeat(runs, *([1] * (x.dim() - 1))))
            target = y.repeat(runs)
            loss_sum += loss_fn(out, target, reduction="none").view(runs, -1).sum(1).cpu()
            correct += (out.argmax(dim=1) == target).view(runs, -1).sum(1).cpu().double()
        n += len(y)
    model.train()
    return (loss_sum / n).tolist(), (correct / n).tolist()


def fit(folders: list[Path], build_model: Callable[[list[int]], nn.Module], train_loaders: list,
        test_loader, *, lr: float, epochs: int, seeds: list[int], device: torch.device,
        records: list[dict[str, Any]], batched: bool = False, save_model: bool = False,
        loss_fn: LossFn = F.nll_loss,
        make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
        lr_step: int = MNIST_LR_STEP, lr_gamma: float = MNIST_LR_GAMMA,
        to_device: Callable[[nn.Module, torch.device], nn.Module] | None = None,
        may_change: tuple[str, ...] = (), probe: Probe | None = None) -> list[list[dict[str, Any]]]:
    """Train run r into ``folders[r]`` for ``epochs`` epochs (resuming what its folder holds) and
    return each run's metrics of epochs 0..epochs.

    ``build_model(indices)`` builds the model of those runs with their initial weights: one run
    (``indices`` of length 1) unless ``batched``, when R runs are one batched model (the torch
    backend's MNIST networks), each run's checkpoint holding that run alone (a run can resume in
    another batch, or alone). Runs are trained one model after the other; batched runs are grouped
    by the epoch they resume after. Run r reads ``train_loaders[r]``, which must have
    ``set_epoch(e)`` (its order depends only on ``seeds[r]`` and e) and ``batch_size``;
    ``records[r]`` holds its caller's settings for config.json. Everything that can be wrong with
    a folder raises UserError before anything is written.

    Hooks (the defaults are the MNIST loop): ``make_optimizer(model)`` builds the optimizer (the
    MNIST runs: the backend's AnalogSGD, one group at ``lr``); param groups with a "name" key get their lr
    recorded per epoch as ``group_lr``; StepLR(``lr_step``, ``lr_gamma``) is stepped per epoch;
    ``to_device(model, device)`` places the model (default ``model.to(device)``); the record keys
    in ``may_change`` may differ when a run is resumed; ``probe(model)`` adds its per-run scalars
    to every epoch's row.
    """
    configs = [{**record, "lr": lr, "epochs": epochs, "seed": seed, "lr_step": lr_step,
                "lr_gamma": lr_gamma, "batch_size": loader.batch_size,
                "eval_batch_size": test_loader.batch_size, "loss": loss_fn.__name__,
                "device": str(device), "threads": torch.get_num_threads(),
                "save_checkpoint": save_model}
               for record, seed, loader in zip(records, seeds, train_loaders, strict=True)]
    runs = [RunFolder(folder, config) for folder, config in zip(folders, configs, strict=True)]
    for run in runs:
        run.lock()
    may_change = (*may_change, "batched_runs") if batched else may_change
    for run in runs:
        run.resume(may_change)
    todo = [r for r, run in enumerate(runs) if not run.nothing_to_do(epochs, save_model)]
    if batched:
        by_start: dict[int, list[int]] = {}
        for r in todo:
            by_start.setdefault(runs[r].epoch, []).append(r)
        groups = [indices for _, indices in sorted(by_start.items())]
    else:
        groups = [[r] for r in todo]
    hooks = {"loss_fn": loss_fn, "make_optimizer": make_optimizer, "lr_step": lr_step,
             "lr_gamma": lr_gamma, "to_device": to_device, "probe": probe}
    for indices in groups:
        _fit_group(indices, [runs[r] for r in indices], build_model,
                   [train_loaders[r] for r in indices], test_loader, lr=lr, epochs=epochs,
                   seed=seeds[indices[0]], device=device, batched=batched, save_model=save_model,
                   **hooks)
    return [run.metrics for run in runs]


def _fit_group(indices: list[int], runs: list[RunFolder], build_model, loaders, test_loader, *,
               lr: float, epochs: int, seed: int, device: torch.device, batched: bool,
               save_model: bool, loss_fn: LossFn, make_optimizer, lr_step: int, lr_gamma: float,
               to_device, probe: Probe | None) -> None:
    """Train the runs of one model (all resuming after the same epoch) to ``epochs``."""
    start = runs[0].epoch
    model_runs = len(runs) if batched else None
    if batched:
        model = build_model(indices)  # each run's initial weights from its own seed
        torch.manual_seed(seed)  # the pulse and noise draws of the whole batch
    else:
        torch.manual_seed(seed)  # the initial weights; AIHWKit's pulse/noise RNG is not seedable
        model = build_model(indices)
    if start >= 0:
        try:
            load_model_state(model, _stacked([run.checkpoint["model_state_dict"] for run in runs])
                             if batched else runs[0].checkpoint["model_state_dict"])
        except Exception as err:  # noqa: BLE001
            raise UserError(f"{runs[0].path / 'checkpoint.pt'} does not fit this model "
                            f"({one_line(err, 300)}); delete it to restart") from None
    model = model.to(device) if to_device is None else to_device(model, device)
    # Built after loading: load_state_dict replaces each tile's AnalogContext parameter, and an
    # optimizer holding the old ones would not train the tiles.
    optimizer = make_optimizer(model)
    scheduler = StepLR(optimizer, step_size=lr_step, gamma=lr_gamma)
    if start >= 0:
        checkpoint = runs[0].checkpoint
        if not batched:
            optimizer.load_state_dict(checkpoint["optimizer_state_dict"])
        scheduler.load_state_dict(checkpoint["scheduler_state_dict"])
        if batched:  # the batch may differ from the one saved: only the lr carries over
            optimizer.param_groups[0]["lr"] = scheduler.get_last_lr()[0]
        restore_rng(checkpoint.get("rng", {}))
        print(f"resuming {len(runs)} run(s) after epoch {start}" if batched else
              f"{runs[0].path}: resuming after epoch {start}")
    env = environment()
    for run in runs:
        run.start({**run.config, **({"batched_runs": len(runs)} if batched else {}),
                   "environment": env})
    alive = [True] * len(runs)  # a diverged run goes on in the batch (the others' steps are its own)

    def finish_epoch(epoch: int, train_loss: list[float] | None, lr_used: float,
                     group_lr: dict[str, float], t0: float) -> None:
        """Evaluate and record ``epoch`` for every run still alive."""
        test_loss, test_acc = evaluate(model, test_loader, loss_fn, model_runs)
        extra = probe(model) if probe is not None else None
        state = model.state_dict()
        seconds = round(time.perf_counter() - t0, 3)
        for i, run in enumerate(runs):
            if not alive[i]:
                continue
            row = {"epoch": epoch, "train_loss": None if train_loss is None else train_loss[i],
                   "test_loss": test_loss[i], "test_acc": test_acc[i], "lr": lr_used,
                   "time_s": seconds}
            if group_lr:
                row["group_lr"] = group_lr
            if extra is not None:
                row["probe"] = extra[i]
            run_state = _run_state(state, i) if batched else state
            alive[i] = not run.record_epoch(row, run_state, optimizer, scheduler)
        line = _epoch_line(epoch, epochs, train_loss, test_loss, test_acc, lr_used, seconds,
                           alive, batched)
        if line:
            print(line, flush=True)

    if start < 0:
        finish_epoch(0, None, optimizer.param_groups[0]["lr"], _named_group_lrs(optimizer),
                     time.perf_counter())
    for epoch in range(max(start, 0) + 1, epochs + 1):
        if not any(alive):
            break
        t0, lr_used = time.perf_counter(), optimizer.param_groups[0]["lr"]
        group_lr = _named_group_lrs(optimizer)
        for loader in loaders:
            loader.set_epoch(epoch)
        train_loss = train_one_epoch(model, optimizer, loaders, loss_fn, f"epoch {epoch}/{epochs}",
                                     model_runs)
        scheduler.step()
        finish_epoch(epoch, train_loss, lr_used, group_lr, t0)
    for run, finished in zip(runs, alive, strict=True):
        run.close()
        if finished:
            run.finish(save_model)


def _epoch_line(epoch: int, epochs: int, train_loss: list[float] | None, test_loss: list[float],
                test_acc: list[float], lr_used: float, seconds: float, alive: list[bool],
                batched: bool) -> str | None:
    """The progress line of an epoch: one run's numbers (none once it diverged), or a batch's
    lists with "diverged" for the runs that did."""
    if not batched:
        if not alive[0]:
            return None
        loss = "-" if train_loss is None else f"{train_loss[0]:.4f}"
        return (f"epoch {epoch}/{epochs}: train loss {loss}, test loss {test_loss[0]:.4f}, test acc "
                f"{100 * test_acc[0]:.2f} %, lr {lr_used:g}, {seconds:.1f} s")

    def each(values: list[float], form: str) -> str:
        return ", ".join(form.format(v) if ok else "diverged"
                         for v, ok in zip(values, alive, strict=True))

    losses = "" if train_loss is None else f"train loss [{each(train_loss, '{:.4f}')}], "
    return (f"epoch {epoch}/{epochs}: {losses}test loss [{each(test_loss, '{:.4f}')}], test acc % "
            f"[{each([100 * a for a in test_acc], '{:.2f}')}], lr {lr_used:g}, {seconds:.1f} s")


def _stacked(states: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    from utils.analog_torch.nn import stack_states

    return stack_states(states)


def _run_state(state: dict[str, Tensor], run: int) -> dict[str, Tensor]:
    from utils.analog_torch.nn import run_state

    return run_state(state, run)


def _named_group_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """{name: lr} of the param groups that carry a "name" (none in the MNIST runs)."""
    return {g["name"]: g["lr"] for g in optimizer.param_groups if "name" in g}
