"""The one training/evaluation loop of the MNIST experiments and of the CIFAR-10 fine-tuning.

As in the authors' code: ``AnalogSGD(model.parameters(), lr)`` with a single
parameter group (AIHWKit then trains every tile at that group's lr, re-read at each step, so the
scheduler acts on the tiles too), ``StepLR(step_size=35, gamma=0.1)`` stepped once per epoch, a test
evaluation before training (epoch 0) and after every epoch.

A run lives in ``<out>/runs/<experiment>/<name>/seed<seed>/``:
  config.json    every setting, the RPU config as text, library versions
  metrics.jsonl  one line per epoch: epoch, train_loss, test_loss, test_acc, lr, time_s
  checkpoint.pt  model, optimizer, scheduler and RNG states after the last finished epoch
  model.pt       the final checkpoint, kept with --save-checkpoint (Figure 7 reads it)
  events.out.tfevents.*  every number of metrics.jsonl for TensorBoard (tensorboard_scalars:
                 Loss/train, Loss/test, Accuracy/test, State/lr, Time/epoch_s)
Every file is written atomically after every epoch; rerunning the same command resumes after the
last finished epoch, or only reports a finished run. Settings other than the number of epochs, the
threads, the device and --save-checkpoint must match the run already in the folder.

Deviations from the authors' loop (docs/deviations.md): the test loss is the mean per-image loss
(theirs summed per-batch means and divided by the number of images, i.e. also by the batch size);
State/lr is the lr used in the epoch (theirs: the lr after the scheduler step, i.e. the next one).

The CIFAR-10 fine-tuning (utils.finetune) uses the same loop through keyword hooks whose defaults
are the MNIST behaviour: its own optimizer (named parameter groups, each with its lr, recorded per
epoch as ``group_lr``), StepLR's step size, the loss, how the model is placed on the device (the
analog head may stay on the CPU) and settings that may change on resume.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.optim.lr_scheduler import StepLR
from tqdm import tqdm

from utils.cli import UserError
from utils.results import (
    atomic_write_bytes,
    environment,
    lock_run_folder,
    read_metrics,
    read_record,
    write_json,
    write_jsonl,
)

LR_STEP = 35     # epochs between lr decays (as in the authors' code)
LR_GAMMA = 0.1   # lr decay factor
EVAL_BATCH = 1000  # test images per forward pass (any size gives the same numbers)
MAY_CHANGE_ON_RESUME = ("epochs", "threads", "device", "save_checkpoint")
LossFn = Callable[[Tensor, Tensor], Tensor]
Probe = Callable[[nn.Module], list[dict[str, float]]]
"""Extra per-run scalars of a batched model, read after every epoch's evaluation: one dict per run,
recorded as that epoch's ``probe`` in metrics.jsonl (e.g. utils.escape.probe_tiles)."""


# The TensorBoard tag of each metrics.jsonl field, stable across releases; a field not named here
# keeps its own name, so the events always hold every number of metrics.jsonl.
TENSORBOARD_TAGS = {"train_loss": "Loss/train", "test_loss": "Loss/test", "test_acc": "Accuracy/test",
                    "lr": "State/lr", "time_s": "Time/epoch_s"}


def tensorboard_scalars(row: dict[str, Any]) -> dict[str, float]:
    """The scalars of one metrics.jsonl row under their TensorBoard tags: every number but the epoch
    (the step), each group's lr as State/lr/<group>, each probe value as Probe/<name>; None (epoch
    0's train loss) is left out."""
    scalars = {}
    for key, value in row.items():
        if key == "group_lr":
            scalars.update({f"State/lr/{name}": lr for name, lr in value.items()})
        elif key == "probe":
            scalars.update({f"Probe/{name}": v for name, v in value.items()})
        elif key != "epoch" and isinstance(value, int | float):
            scalars[TENSORBOARD_TAGS.get(key, key)] = float(value)
    return scalars


def run_name(setting: str, tau: float) -> str:
    """The authors' log-folder name: "FP SGD", "Analog SGD-tau=0.7", "TT-v1-tau=0.78"."""
    return setting if setting == "FP SGD" else f"{setting}-tau={tau}"


def run_folder(out: Path, experiment: str, setting: str, tau: float, seed: int) -> Path:
    return Path(out) / "runs" / experiment / run_name(setting, tau) / f"seed{seed}"


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:300] or type(err).__name__


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


class RunState:
    """What a previous run left in a folder, read and checked without writing anything."""

    def __init__(self, folder: Path, config: dict[str, Any], may_change: Iterable[str] = ()) -> None:
        self.folder = folder
        self.checkpoint: dict[str, Any] | None = None
        self.metrics: list[dict[str, Any]] = []
        saved = read_record(folder / "config.json") if (folder / "config.json").is_file() else None
        # {"epoch": e} when the run diverged (a loss became non-finite): an outcome, never resumed
        self.diverged: dict[str, Any] | None = (saved or {}).get("diverged")
        if saved is not None:
            old, new = (_identity(saved, may_change), _identity(config, may_change))
            if old != new:
                keys = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
                diff = ", ".join(_change(k, old.get(k), new.get(k)) for k in keys)
                raise UserError(f"{folder} holds a run with other settings ({diff}); "
                                "use another --out or delete that folder")
        if self.diverged:
            self.metrics = read_metrics(folder / "metrics.jsonl")
            return
        path = folder / "checkpoint.pt"
        if saved is None or not path.is_file():
            return  # nothing to resume: start at epoch 0
        # The checkpoint holds AIHWKit tile states (pickled configs), hence weights_only=False:
        # load only checkpoints you wrote yourself.
        ckpt = self._read(path, lambda p: torch.load(p, map_location="cpu", weights_only=False))
        keys = {"epoch", "model_state_dict", "optimizer_state_dict", "scheduler_state_dict"}
        if not isinstance(ckpt, dict) or not keys <= ckpt.keys():
            raise UserError(f"{path}: not a checkpoint of this project; delete it to restart")
        self.checkpoint = ckpt
        metrics = folder / "metrics.jsonl"
        lines = read_metrics(metrics) if metrics.is_file() else []
        self.metrics = [m for m in lines if m["epoch"] <= self.epoch]
        if [m["epoch"] for m in self.metrics] != list(range(self.epoch + 1)):
            raise UserError(f"{folder / 'metrics.jsonl'} lacks epochs 0..{self.epoch} of "
                            f"{path.name}; delete the folder to restart the run")

    @staticmethod
    def _read(path: Path, reader: Callable[[Path], Any]) -> Any:
        if not path.is_file():
            return None
        try:
            return reader(path)
        except Exception as err:  # noqa: BLE001 - any unreadable file is reported the same way
            raise UserError(f"{path}: unreadable or corrupt ({_one_line(err)}); "
                            "delete it to restart the run") from None

    @property
    def epoch(self) -> int:
        """The last finished epoch (-1: none, not even the epoch-0 evaluation)."""
        return self.checkpoint["epoch"] if self.checkpoint else -1


def _change(key: str, old: Any, new: Any) -> str:
    if len(repr(old)) + len(repr(new)) > 80:  # the RPU config, the data checksums
        return f"{key} differs"
    return f"{key}: {old!r} -> {new!r}"


def _identity(config: dict[str, Any], may_change: Iterable[str] = ()) -> dict[str, Any]:
    ignore = {*MAY_CHANGE_ON_RESUME, *may_change, "environment", "diverged"}
    identity = {k: v for k, v in _jsonable(config).items() if k not in ignore}
    # data and weights are their checksums, wherever they lie and whatever the working directory
    if isinstance(identity.get("data"), dict):
        identity["data"] = {k: v for k, v in identity["data"].items() if k != "folder"}
    if identity.get("weights_sha256"):
        identity.pop("weights_file", None)
    return identity


def load_model_state(model: nn.Module, state_dict: dict[str, Any]) -> None:
    """``model.load_state_dict`` plus a workaround: AIHWKit 1.1.0 restores a tile's hidden
    parameters *before* its weights, and TransferCompound.set_weights zeroes the fast array A, so a
    resumed Tiki-Taka run would restart with A = 0. The saved hidden parameters are set again."""
    model.load_state_dict(state_dict)
    for name, module in model.named_modules():
        state = state_dict.get(f"{name}.analog_tile_state")
        if state is not None:
            module.tile.set_hidden_parameters(state["analog_tile_hidden_parameters"])


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Iterable,
                loss_fn: LossFn, desc: str) -> float:
    """One pass over ``batches``; returns the mean of the batch losses (the authors' train loss)."""
    model.train()
    total, n = 0.0, 0
    bar = tqdm(batches, desc=desc, leave=False, disable=None, mininterval=1.0)
    for x, y in bar:
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        total += loss.detach()
        n += 1
        if n % 200 == 0:
            if not math.isfinite(float(total)):
                break  # diverged: the rest of the epoch cannot bring it back
            bar.set_postfix(loss=f"{float(total) / n:.4f}", refresh=False)
    return float(total) / max(n, 1)


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable, loss_fn: LossFn) -> tuple[float, float]:
    """(mean per-image loss, accuracy) over ``batches``, through the analog (noisy) forward."""
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    for x, y in batches:
        out = model(x)
        loss_sum += float(loss_fn(out, y, reduction="sum"))
        correct += int((out.argmax(dim=1) == y).sum())
        n += len(y)
    model.train()
    return loss_sum / n, correct / n


def train(folder: Path, build_model: Callable[[], nn.Module], train_loader, test_loader, *,
          lr: float, epochs: int, seed: int, device: torch.device, record: dict[str, Any],
          save_model: bool = False, loss_fn: LossFn = F.nll_loss,
          make_optimizer: Callable[[nn.Module], torch.optim.Optimizer] | None = None,
          lr_step: int = LR_STEP, lr_gamma: float = LR_GAMMA,
          to_device: Callable[[nn.Module, torch.device], nn.Module] | None = None,
          may_change: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Train ``build_model()`` for ``epochs`` epochs (resuming what ``folder`` holds) and return
    the metrics of epochs 0..epochs.

    ``train_loader`` must have ``set_epoch(e)`` (its order depends only on the seed and e) and
    ``batch_size``; ``record`` holds the caller's settings for config.json. Everything that can be
    wrong with the folder raises UserError before anything is written.

    Hooks (the defaults are the MNIST loop): ``make_optimizer(model)`` builds the optimizer
    (default: AnalogSGD with one group at ``lr``); param groups with a "name" key get their lr
    recorded per epoch as ``group_lr``; StepLR(``lr_step``, ``lr_gamma``) is stepped per epoch;
    ``to_device(model, device)`` places the model (default ``model.to(device)``); the record keys
    in ``may_change`` may differ when a run is resumed.
    """
    config = {**record, "lr": lr, "epochs": epochs, "seed": seed, "lr_step": lr_step,
              "lr_gamma": lr_gamma, "batch_size": train_loader.batch_size,
              "eval_batch_size": test_loader.batch_size, "loss": loss_fn.__name__,
              "device": str(device), "threads": torch.get_num_threads(),
              "save_checkpoint": save_model}
    lock_run_folder(folder)
    state = RunState(folder, config, may_change)
    if state.diverged:
        print(f"{folder}: diverged at epoch {state.diverged['epoch']}; nothing to do (delete the "
              "folder to train it again)")
        return state.metrics
    if state.epoch >= epochs:
        print(f"{folder}: finished ({state.epoch} epochs); nothing to do")
        if save_model and not (folder / "model.pt").is_file():
            atomic_write_bytes(folder / "model.pt", (folder / "checkpoint.pt").read_bytes())
        return state.metrics

    torch.manual_seed(seed)  # the initial weights; AIHWKit's pulse/noise RNG is not seedable
    model = build_model()
    if state.checkpoint:
        try:
            load_model_state(model, state.checkpoint["model_state_dict"])
        except Exception as err:  # noqa: BLE001
            raise UserError(f"{folder / 'checkpoint.pt'} does not fit this model "
                            f"({_one_line(err)}); delete it to restart") from None
    model = model.to(device) if to_device is None else to_device(model, device)
    # Built after loading: load_state_dict replaces each tile's AnalogContext parameter, and an
    # optimizer holding the old ones would not train the tiles.
    optimizer = _analog_sgd(model, lr) if make_optimizer is None else make_optimizer(model)
    scheduler = StepLR(optimizer, step_size=lr_step, gamma=lr_gamma)
    if state.checkpoint:
        optimizer.load_state_dict(state.checkpoint["optimizer_state_dict"])
        scheduler.load_state_dict(state.checkpoint["scheduler_state_dict"])
        _set_rng(state.checkpoint.get("rng", {}))
        print(f"{folder}: resuming after epoch {state.epoch}")

    from torch.utils.tensorboard import SummaryWriter
    write_json(folder / "config.json", {**config, "environment": environment()})
    # purge_step hides events a crashed run logged after its last checkpoint (or all, on restart).
    writer = SummaryWriter(str(folder), purge_step=state.epoch + 1)
    metrics = state.metrics

    def finish_epoch(epoch: int, train_loss: float | None, lr_used: float, start: float,
                     group_lr: dict[str, float] | None = None) -> bool:
        """Evaluate and record ``epoch``; True when the run diverged (and is recorded so)."""
        test_loss, test_acc = evaluate(model, test_loader, loss_fn)
        row = {"epoch": epoch, "train_loss": train_loss, "test_loss": test_loss,
               "test_acc": test_acc, "lr": lr_used, "time_s": round(time.perf_counter() - start, 3)}
        if group_lr:
            row["group_lr"] = group_lr
        metrics.append(row)
        if _diverged(row):
            _record_divergence(folder, {**config, "environment": environment()}, metrics)
            return True
        write_jsonl(folder / "metrics.jsonl", metrics)
        for tag, value in tensorboard_scalars(row).items():
            writer.add_scalar(tag, value, epoch)
        writer.flush()
        _save_checkpoint(folder / "checkpoint.pt", epoch, model, optimizer, scheduler)
        print(f"epoch {epoch}/{epochs}: train loss {_fmt(train_loss)}, test loss {test_loss:.4f}, "
              f"test acc {100 * test_acc:.2f} %, lr {lr_used:g}, {row['time_s']:.1f} s", flush=True)
        return False

    if state.epoch < 0 and finish_epoch(0, None, optimizer.param_groups[0]["lr"],
                                        time.perf_counter(), _named_group_lrs(optimizer)):
        writer.close()
        return metrics
    for epoch in range(max(state.epoch, 0) + 1, epochs + 1):
        start, lr_used = time.perf_counter(), optimizer.param_groups[0]["lr"]
        group_lr = _named_group_lrs(optimizer)
        train_loader.set_epoch(epoch)
        train_loss = train_epoch(model, optimizer, train_loader, loss_fn, f"epoch {epoch}/{epochs}")
        scheduler.step()
        if finish_epoch(epoch, train_loss, lr_used, start, group_lr):
            writer.close()
            return metrics
    writer.close()
    if save_model:
        atomic_write_bytes(folder / "model.pt", (folder / "checkpoint.pt").read_bytes())
    print(f"done: {folder}")
    return metrics


def _diverged(row: dict[str, Any]) -> bool:
    """Whether an epoch's row has a non-finite loss; if so it becomes the run's last row: the
    losses that are not finite are None (records are strict JSON), the accuracy of a diverged
    model is no result (None), and ``diverged`` is true."""
    bad = [k for k in ("train_loss", "test_loss") if row[k] is not None and not math.isfinite(row[k])]
    if bad:
        row.update({k: None for k in bad}, test_acc=None, diverged=True)
    return bool(bad)


def _record_divergence(folder: Path, config: dict[str, Any], metrics: list[dict[str, Any]]) -> None:
    """Record a diverged run: its metrics up to the epoch it diverged in, and config.json's
    ``diverged`` (a rerun then reports it instead of training it again)."""
    epoch = metrics[-1]["epoch"]
    write_jsonl(folder / "metrics.jsonl", metrics)
    write_json(folder / "config.json", {**config, "diverged": {"epoch": epoch}})
    print(f"{folder}: diverged in epoch {epoch} (a loss became non-finite); the run stops and is "
          "recorded as diverged", flush=True)


def _analog_sgd(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    from aihwkit.optim import AnalogSGD

    return AnalogSGD(model.parameters(), lr=lr)  # one group, no regroup_param_groups (authors)


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


def _reseeding_analog_sgd(every: int, lr: float) -> Callable[[nn.Module], torch.optim.Optimizer]:
    """A maker of AnalogSGD (one group at ``lr``) that reseeds the model's tiles after every
    ``every``-th step."""
    def make(model: nn.Module) -> torch.optim.Optimizer:
        optimizer = _analog_sgd(model, lr)
        steps = [0]

        def after_step(*_) -> None:
            steps[0] += 1
            if steps[0] % every == 0:
                reseed_aihwkit_tiles(model)
        optimizer.register_step_post_hook(after_step)
        return optimizer
    return make


def _named_group_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """{name: lr} of the param groups that carry a "name" (none in the MNIST runs)."""
    return {g["name"]: g["lr"] for g in optimizer.param_groups if "name" in g}


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _save_checkpoint(path: Path, epoch: int, model: nn.Module, optimizer, scheduler) -> None:
    _save_state(path, epoch, model.state_dict(), optimizer, scheduler)


def _set_rng(rng: dict[str, Any]) -> None:
    if "torch" in rng:
        torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


# --- the torch backend: R runs trained as one batched model ------------------------------------------

@torch.no_grad()
def evaluate_runs(model: nn.Module, batches: Iterable, runs: int) -> tuple[Tensor, Tensor]:
    """(R,) mean per-image NLL and (R,) accuracy of a batched model (utils.analog_torch.nn): every
    test batch is shown to all R runs."""
    model.eval()
    loss_sum, correct, n = torch.zeros(runs, dtype=torch.float64), torch.zeros(runs, dtype=torch.float64), 0
    for x, y in batches:
        out = model(x.repeat(runs, *([1] * (x.dim() - 1))))
        target = y.repeat(runs)
        loss_sum += F.nll_loss(out, target, reduction="none").view(runs, -1).sum(1).cpu()
        correct += (out.argmax(dim=1) == target).view(runs, -1).sum(1).cpu().double()
        n += len(y)
    model.train()
    return loss_sum / n, correct / n


def train_runs(folders: list[Path], build_model: Callable[[list[int]], nn.Module],
               train_loaders: list, test_loader, *, lr: float, epochs: int, seeds: list[int],
               device: torch.device, records: list[dict[str, Any]],
               save_model: bool = False, probe: Probe | None = None) -> list[list[dict[str, Any]]]:
    """Train run r of ``folders`` … as one batched model (the torch backend) and return each
    run's metrics. ``build_model(indices)`` builds the batched model of those runs with their
    initial weights; run r reads ``train_loaders[r]`` (its own seed's order). Each folder gets the
    same files as :func:`train`, its checkpoint holding that run alone (a run can resume in another
    batch, or alone). Runs already finished are skipped; the others are grouped by the epoch they
    resume after, one batched model per group. ``probe(model)``, if given, adds its per-run scalars
    to every epoch's line."""
    configs = [{**record, "lr": lr, "epochs": epochs, "seed": seed, "lr_step": LR_STEP,
                "lr_gamma": LR_GAMMA, "batch_size": loader.batch_size,
                "eval_batch_size": test_loader.batch_size, "loss": "nll_loss",
                "device": str(device), "threads": torch.get_num_threads(),
                "save_checkpoint": save_model}
               for record, seed, loader in zip(records, seeds, train_loaders, strict=True)]
    for folder in folders:
        lock_run_folder(folder)
    states = [RunState(f, c, ("batched_runs",)) for f, c in zip(folders, configs, strict=True)]
    results: list[list[dict[str, Any]]] = [s.metrics for s in states]
    groups: dict[int, list[int]] = {}
    for r, state in enumerate(states):
        if state.diverged:
            print(f"{folders[r]}: diverged at epoch {state.diverged['epoch']}; nothing to do "
                  "(delete the folder to train it again)")
        elif state.epoch >= epochs:
            print(f"{folders[r]}: finished ({state.epoch} epochs); nothing to do")
            if save_model and not (folders[r] / "model.pt").is_file():
                atomic_write_bytes(folders[r] / "model.pt", (folders[r] / "checkpoint.pt").read_bytes())
        else:
            groups.setdefault(state.epoch, []).append(r)
    for _start_epoch, indices in sorted(groups.items()):
        metrics = _train_group(indices, [folders[r] for r in indices], [states[r] for r in indices],
                               [configs[r] for r in indices], build_model,
                               [train_loaders[r] for r in indices], test_loader, lr=lr,
                               epochs=epochs, seed=seeds[indices[0]], device=device,
                               save_model=save_model, probe=probe)
        for r, m in zip(indices, metrics, strict=True):
            results[r] = m
    return results


def _train_group(indices: list[int], folders: list[Path], states: list[RunState],
                 configs: list[dict[str, Any]], build_model, loaders, test_loader, *, lr: float,
                 epochs: int, seed: int, device: torch.device,
                 save_model: bool, probe: Probe | None = None) -> list[list[dict[str, Any]]]:
    from torch.utils.tensorboard import SummaryWriter

    from utils.analog_torch.nn import AnalogSGD, batched_loss, run_state, stack_states

    runs, start = len(indices), states[0].epoch
    model = build_model(indices)  # each run's initial weights from its own seed
    torch.manual_seed(seed)  # the pulse and noise draws of the whole batch
    if start >= 0:
        try:
            model.load_state_dict(stack_states([s.checkpoint["model_state_dict"] for s in states]))
        except Exception as err:  # noqa: BLE001
            raise UserError(f"{folders[0] / 'checkpoint.pt'} does not fit this model "
                            f"({_one_line(err)}); delete it to restart") from None
    model = model.to(device)
    optimizer = AnalogSGD(model.parameters(), lr=lr)
    scheduler = StepLR(optimizer, step_size=LR_STEP, gamma=LR_GAMMA)
    if start >= 0:
        scheduler.load_state_dict(states[0].checkpoint["scheduler_state_dict"])
        optimizer.param_groups[0]["lr"] = scheduler.get_last_lr()[0]
        _set_rng(states[0].checkpoint.get("rng", {}))
        print(f"resuming {runs} run(s) after epoch {start}")
    records = [{**config, "batched_runs": runs, "environment": environment()} for config in configs]
    for folder, record in zip(folders, records, strict=True):
        write_json(folder / "config.json", record)
    writers = [SummaryWriter(str(f), purge_step=start + 1) for f in folders]
    metrics = [s.metrics for s in states]
    alive = [True] * runs  # a diverged run goes on in the batch (the others' steps are its own)

    def finish_epoch(epoch: int, train_loss: Tensor | None, lr_used: float, t0: float) -> None:
        test_loss, test_acc = evaluate_runs(model, test_loader, runs)
        extra = probe(model) if probe is not None else None
        state = model.state_dict()
        seconds = round(time.perf_counter() - t0, 3)
        for i, folder in enumerate(folders):
            if not alive[i]:
                continue
            loss_i = None if train_loss is None else float(train_loss[i])
            row = {"epoch": epoch, "train_loss": loss_i, "test_loss": float(test_loss[i]),
                   "test_acc": float(test_acc[i]), "lr": lr_used, "time_s": seconds}
            if extra is not None:
                row["probe"] = extra[i]
            metrics[i].append(row)
            if _diverged(row):
                alive[i] = False
                _record_divergence(folder, records[i], metrics[i])
                continue
            write_jsonl(folder / "metrics.jsonl", metrics[i])
            for tag, value in tensorboard_scalars(row).items():
                writers[i].add_scalar(tag, value, epoch)
            writers[i].flush()
            _save_state(folder / "checkpoint.pt", epoch, run_state(state, i), optimizer, scheduler)

        def each(values: Tensor, form: str) -> str:
            return ", ".join(form.format(float(v)) if ok else "diverged"
                             for v, ok in zip(values, alive, strict=True))

        losses = "" if train_loss is None else f"train loss [{each(train_loss, '{:.4f}')}], "
        print(f"epoch {epoch}/{epochs}: {losses}test loss [{each(test_loss, '{:.4f}')}], test acc % "
              f"[{each(100 * test_acc, '{:.2f}')}], lr {lr_used:g}, {seconds:.1f} s", flush=True)

    if start < 0:
        finish_epoch(0, None, lr, time.perf_counter())
    for epoch in range(max(start, 0) + 1, epochs + 1):
        if not any(alive):
            break
        t0, lr_used = time.perf_counter(), optimizer.param_groups[0]["lr"]
        for loader in loaders:
            loader.set_epoch(epoch)
        model.train()
        total, n = torch.zeros(runs), 0
        bar = tqdm(zip(*loaders, strict=True), total=len(loaders[0]), desc=f"epoch {epoch}/{epochs}",
                   leave=False, disable=None, mininterval=1.0)
        for batch in bar:
            x = torch.cat([b[0] for b in batch])
            y = torch.cat([b[1] for b in batch])
            optimizer.zero_grad()
            out = model(x)
            loss = batched_loss(out, y, runs)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                total += F.nll_loss(out, y, reduction="none").view(runs, -1).mean(1).cpu()
            n += 1
        scheduler.step()
        finish_epoch(epoch, total / max(n, 1), lr_used, t0)
    for writer in writers:
        writer.close()
    for folder, finished in zip(folders, alive, strict=True):
        if finished and save_model:
            atomic_write_bytes(folder / "model.pt", (folder / "checkpoint.pt").read_bytes())
        if finished:
            print(f"done: {folder}")
    return metrics


def _save_state(path: Path, epoch: int, model_state: dict, optimizer, scheduler) -> None:
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    buf = io.BytesIO()
    torch.save({"epoch": epoch, "model_state_dict": model_state,
                "optimizer_state_dict": optimizer.state_dict(),
                "scheduler_state_dict": scheduler.state_dict(), "rng": rng}, buf)
    atomic_write_bytes(path, buf.getvalue())


def backend_suffix(backend: str = "aihwkit", update_mode: str = "moment", noise_list: int = 0,
                   reseed_every: int = 0) -> str:
    """What a backend appends to an experiment's runs/ folder: "" (AIHWKit) or "-reseed<K>"
    (--reseed-noise-every K); "-torch" (moment-matched updates) or "-torch-pulse" (exact pulses),
    then "-list<N>" when the read noise comes from fixed lists of N numbers (--noise-list)."""
    if backend == "aihwkit":
        return f"-reseed{reseed_every}" if reseed_every else ""
    return ("-torch" + ("-pulse" if update_mode == "pulse" else "")
            + (f"-list{noise_list}" if noise_list else ""))


def experiment_name(network: str, backend: str = "aihwkit", update_mode: str = "moment",
                    noise_list: int = 0, reseed_every: int = 0, study: str = "") -> str:
    """The runs/ subfolder of an MNIST network: "MNIST-FCN", "MNIST-FCN-torch", "MNIST-FCN-torch-pulse";
    a ``study`` (S4.3's "escape") keeps its runs apart: "MNIST-FCN-escape-torch-pulse"."""
    return (f"MNIST-{network}{'-' + study if study else ''}"
            f"{backend_suffix(backend, update_mode, noise_list, reseed_every)}")


def train_mnist(args: argparse.Namespace, network: str, *, study: str = "",
                out_scaling: bool = True, probe: Probe | None = None) -> None:
    """S4.1 / S4.2: validate the flags, load MNIST, train every (τ, seed) of the flags: one run
    after the other with AIHWKit, as one batched model with the torch backend. Every check that
    can fail runs before a run folder is touched. S4.3 adds a ``study`` name to the experiment
    folder, may turn the tiles' learnable output scaling off (``out_scaling``) and records a
    ``probe`` (torch backend only) per epoch."""
    from utils.cli import torch_device
    from utils.data.mnist import TensorLoader, load_mnist

    torch_backend = args.backend == "torch"
    if args.noise_list and not torch_backend:
        raise UserError("--noise-list needs --backend torch (AIHWKit's own CPU tiles always draw "
                        "their noise from such lists)")
    if args.reseed_noise_every and (torch_backend or args.CUDA != -1):
        raise UserError("--reseed-noise-every acts on AIHWKit's CPU tiles only (--backend aihwkit, "
                        "--CUDA -1); the torch backend and AIHWKit on a GPU draw fresh noise")
    device = torch_device(args.CUDA, require_aihwkit_cuda=not torch_backend)
    torch.set_num_threads(args.threads)
    taus = [None] if args.SETTING == "FP SGD" else list(dict.fromkeys(args.tau))
    seeds = list(dict.fromkeys(args.seed))
    grid = [(tau, seed) for tau in taus for seed in seeds]
    if torch_backend:
        from utils.analog_torch import nn as tnn
        from utils.analog_torch.presets import resolve
        from utils.analog_torch.tile import set_compile, set_noise_list

        set_compile(not args.no_compile)
        set_noise_list(args.noise_list)
        configs = [resolve(args.SETTING, tau or 1.0) for tau, _ in grid]
        builder = {"FCN": tnn.build_fcn, "CNN": tnn.build_cnn}[network]
    else:
        from utils import models
        from utils.devices import rpu_config

        configs = [rpu_config(args.SETTING, tau or 1.0) for tau, _ in grid]
        builder = {"FCN": models.build_fcn, "CNN": models.build_cnn}[network]
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
    experiment = experiment_name(network, args.backend, args.update_mode, args.noise_list,
                                 args.reseed_noise_every, study)
    records = []
    for (tau, _), config in zip(grid, configs, strict=True):
        record = {"experiment": experiment, "model": builder.__name__, "setting": args.SETTING,
                  "tau": tau, "rpu_config": repr(config), "data": data.describe(),
                  "train_subset": args.train_subset}
        if torch_backend:
            record.update(backend="torch", update_mode=args.update_mode)
            if args.noise_list:
                record.update(noise_list=args.noise_list)
        elif args.reseed_noise_every:
            record.update(reseed_noise_every=args.reseed_noise_every)
        records.append(record)
    folders = [run_folder(args.out, experiment, args.SETTING, tau or 1.0, seed) for tau, seed in grid]
    train_set, test = train_set.to(device), TensorLoader(data.test.to(device), EVAL_BATCH,
                                                         shuffle=False)
    names = ", ".join(f"{run_name(args.SETTING, tau or 1.0)} seed {seed}" for tau, seed in grid)
    print(f"{experiment} {names}: {len(train_set)} training images from {data.folder}, batch "
          f"{args.batch_size}, lr {args.lr}, {args.epochs} epochs, {device}"
          + (f", {len(grid)} runs batched, {args.update_mode} updates" if torch_backend else "")
          + (f", read noise from lists of {args.noise_list}" if args.noise_list else "")
          + (f", tiles reseeded every {args.reseed_noise_every} steps"
             if args.reseed_noise_every else ""))
    loaders = [TensorLoader(train_set, args.batch_size, shuffle=True, seed=seed) for _, seed in grid]
    if torch_backend:
        train_runs(folders, lambda idx: builder([configs[i] for i in idx],
                                                [grid[i][1] for i in idx], args.update_mode),
                   loaders, test, lr=args.lr, epochs=args.epochs, seeds=[s for _, s in grid],
                   device=device, records=records, save_model=args.save_checkpoint, probe=probe)
        return
    make_optimizer = (_reseeding_analog_sgd(args.reseed_noise_every, args.lr)
                      if args.reseed_noise_every else None)
    for folder, config, (_, seed), loader, record in zip(folders, configs, grid, loaders, records,
                                                         strict=True):
        train(folder, lambda config=config: builder(config), loader, test, lr=args.lr,
              epochs=args.epochs, seed=seed, device=device, record=record,
              save_model=args.save_checkpoint, make_optimizer=make_optimizer)


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
