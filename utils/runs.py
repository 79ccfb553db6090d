"""Run records: how a run folder is named, locked, written, resumed and read.

Two kinds of run share :class:`RunFolder`:
- a least-squares run (S1–S3): ``<out>/runs/<experiment>/<config hash>/`` holding ``config.json``
  (``{"config", "environment", "wall_time_s"}``) and ``curves.json``; rerunning reuses it;
- a training run (MNIST, CIFAR-10; utils.engine): ``<out>/runs/<experiment>/<name>/seed<k>/``
  holding
    config.json    every setting, the RPU config as text, library versions
    metrics.jsonl  one line per epoch: epoch, train_loss, test_loss, test_acc, lr, time_s
    checkpoint.pt  model, optimizer, scheduler and RNG states after the last finished epoch
    model.pt       the final checkpoint, kept with --save-checkpoint (Figure 7 reads it)
    events.out.tfevents.*  every number of metrics.jsonl for TensorBoard (tensorboard_scalars)
  Rerunning resumes after the last finished epoch; settings other than those in
  MAY_CHANGE_ON_RESUME (and the caller's ``may_change``) must match the run already there.

Every file is written atomically (utils.results), by the folder's one writer (lock_run_folder).
Every consumer reads records through the one reader per record type: read_record (config.json,
curves.json) and read_metrics (metrics.jsonl); a damaged file is one line naming it, the line, and
what to do.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import math
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from utils.cli import UserError, fail, one_line
from utils.results import UMASK, atomic_write_bytes, environment, write_json, write_jsonl

MAY_CHANGE_ON_RESUME = ("epochs", "threads", "device", "save_checkpoint")

# The TensorBoard tag of each metrics.jsonl field, stable across releases; a field not named here
# keeps its own name, so the events always hold every number of metrics.jsonl.
TENSORBOARD_TAGS = {"train_loss": "Loss/train", "test_loss": "Loss/test", "test_acc": "Accuracy/test",
                    "lr": "State/lr", "time_s": "Time/epoch_s"}


# --- naming -----------------------------------------------------------------------------------------

def run_name(setting: str, tau: float) -> str:
    """The authors' log-folder name: "FP SGD", "Analog SGD-tau=0.7", "TT-v1-tau=0.78"."""
    return setting if setting == "FP SGD" else f"{setting}-tau={tau}"


def run_folder(out: Path, experiment: str, setting: str, tau: float, seed: int) -> Path:
    """``<out>/runs/<experiment>/<run_name>/seed<seed>``: an MNIST training run's folder."""
    return Path(out) / "runs" / experiment / run_name(setting, tau) / f"seed{seed}"


def config_hash(config: dict[str, Any]) -> str:
    """Short stable hash of a settings dict; names run folders so a changed setting gets a new folder."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:10]


# --- the lock ---------------------------------------------------------------------------------------

LOCK_FILE = ".lock"
_HELD: dict[Path, int] = {}  # folder -> descriptor of its lock file, open until the process ends


def lock_run_folder(folder: Path) -> None:
    """Make this process the one writer of ``folder`` (created if missing) until it ends.

    An OS lock (flock) on ``folder/.lock``, which holds the writer's PID: the kernel drops it when
    the process dies, however it dies, so a killed run never leaves a stale lock. A second process
    gets a UserError naming the holder. Temporary files that a kill left behind during an atomic
    write are deleted (only the lock holder writes here, so none is in use)."""
    folder = Path(folder).resolve()
    if folder in _HELD:
        return
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666 & ~UMASK)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise UserError(f"{folder} is being written by another process (PID {holder}); wait for "
                        "it to finish or stop it, then rerun") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _HELD[folder] = fd
    for tmp in folder.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


# --- the one reader per record type -----------------------------------------------------------------

def _damaged(path: Path, line: int, why: str) -> UserError:
    return UserError(f"{path}, line {line}: damaged record ({why}); delete the run folder "
                     f"{path.parent} and rerun the command that wrote it (it recomputes the run)")


def _refuse_constant(token: str) -> Any:
    raise ValueError(f"{token} is not strict JSON")


def _text(path: Path) -> str:
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise _damaged(Path(path), 1, one_line(err, 120)) from None


def read_record(path: Path, missing_ok: bool = False) -> dict[str, Any]:
    """A JSON object record (config.json, curves.json), strictly parsed; ``missing_ok``: {} when
    there is no such file."""
    path = Path(path)
    if missing_ok and not path.is_file():
        return {}
    try:
        record = json.loads(_text(path), parse_constant=_refuse_constant)
    except json.JSONDecodeError as err:
        raise _damaged(path, err.lineno, err.msg) from None
    except ValueError as err:
        raise _damaged(path, 1, str(err)) from None
    if not isinstance(record, dict):
        raise _damaged(path, 1, "not a JSON object")
    return record


def read_metrics(path: Path, missing_ok: bool = False) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl: one JSON object with an integer ``epoch`` per line;
    ``missing_ok``: [] when there is no such file."""
    path, rows = Path(path), []
    if missing_ok and not path.is_file():
        return rows
    for number, line in enumerate(_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line, parse_constant=_refuse_constant)
        except ValueError as err:
            raise _damaged(path, number, one_line(err, 120)) from None
        if not isinstance(row, dict) or not isinstance(row.get("epoch"), int):
            raise _damaged(path, number, "not an epoch's row")
        rows.append(row)
    return rows


def read_seeds(folders: dict[str, Path], name: str
               ) -> tuple[dict[str, list[dict[str, Any]]], dict[str, int]]:
    """The metrics of one run's seed folders ({seed: folder}) that can be averaged, and the seeds
    that diverged ({seed: epoch}). A seed without a metrics.jsonl row is left out; so is a seed
    shorter than the longest (unfinished: it would cut the others' curves short), with a line
    naming it as ``name``/seed."""
    per_seed = {seed: read_metrics(folder / "metrics.jsonl", missing_ok=True)
                for seed, folder in folders.items()}
    per_seed = {k: v for k, v in per_seed.items() if v}
    diverged = {k: v[-1]["epoch"] for k, v in per_seed.items() if v[-1].get("diverged")}
    per_seed = {k: v for k, v in per_seed.items() if k not in diverged}
    longest = max((len(v) for v in per_seed.values()), default=0)
    for seed, rows in list(per_seed.items()):
        if len(rows) < longest:
            print(f"{name}/{seed}: left out, {rows[-1]['epoch']} of the {longest - 1} epochs of the "
                  "other seeds")
            del per_seed[seed]
    return per_seed, diverged


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


def mark_diverged(row: dict[str, Any]) -> bool:
    """Whether an epoch's row has a non-finite loss; if so it becomes the run's last row: the
    losses that are not finite are None (records are strict JSON), the accuracy of a diverged
    model is no result (None), and ``diverged`` is true."""
    bad = [k for k in ("train_loss", "test_loss") if row[k] is not None and not math.isfinite(row[k])]
    if bad:
        row.update({k: None for k in bad}, test_acc=None, diverged=True)
    return bool(bad)


# --- checkpoints ------------------------------------------------------------------------------------

def save_checkpoint(path: Path, epoch: int, model_state: dict, optimizer, scheduler) -> None:
    """checkpoint.pt: the states after ``epoch`` and torch's RNG states (CPU, and CUDA in use)."""
    import torch

    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    buf = io.BytesIO()
    torch.save({"epoch": epoch, "model_state_dict": model_state,
                "optimizer_state_dict": optimizer.state_dict(),
                "scheduler_state_dict": scheduler.state_dict(), "rng": rng}, buf)
    atomic_write_bytes(path, buf.getvalue())


def restore_rng(rng: dict[str, Any]) -> None:
    """Set torch's RNG states saved by :func:`save_checkpoint`."""
    import torch

    if "torch" in rng:
        torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def _load_checkpoint(path: Path) -> Any:
    import torch

    # The checkpoint holds AIHWKit tile states (pickled configs), hence weights_only=False:
    # load only checkpoints you wrote yourself.
    return torch.load(path, map_location="cpu", weights_only=False)


# --- resume: the identity of a run ------------------------------------------------------------------

def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


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


# --- the run folder ---------------------------------------------------------------------------------

class RunFolder:
    """One run's folder ``path`` with the run's settings ``config``, and what a previous run left
    there (:meth:`resume` reads it: ``checkpoint``, ``metrics``, ``diverged``)."""

    def __init__(self, path: Path, config: dict[str, Any], results_name: str = "curves.json") -> None:
        self.path = Path(path)
        self.config = config
        self.results_path = self.path / results_name
        self.checkpoint: dict[str, Any] | None = None
        self.metrics: list[dict[str, Any]] = []
        # {"epoch": e} when the run diverged (a loss became non-finite): an outcome, never resumed
        self.diverged: dict[str, Any] | None = None
        self._record: dict[str, Any] = {}
        self._writer = None

    # --- least-squares runs: one folder per distinct setting, one results file

    @classmethod
    def hashed(cls, out: Path, experiment: str, config: dict[str, Any],
               results_name: str = "curves.json") -> RunFolder:
        """``<out>/runs/<experiment>/<config hash>/``: ``done`` once the results file exists, so
        rerunning the same command skips the work and only redraws the figure."""
        return cls(Path(out) / "runs" / experiment / config_hash(config), config, results_name)

    @classmethod
    def from_args(cls, args: Any, experiment: str, ignore: tuple[str, ...] = ()) -> RunFolder:
        """The run folder of a script's parsed flags; --out, --force and ``ignore`` (flags that
        change only the drawing) do not name the run."""
        config = {k: v for k, v in vars(args).items() if k not in ("out", "force", *ignore)}
        return cls.hashed(args.out, experiment, config)

    @property
    def done(self) -> bool:
        return self.results_path.is_file()

    def save(self, results: dict[str, Any], wall_time_s: float) -> None:
        """Write config.json (with versions and the wall time) and the results, atomically."""
        write_json(self.path / "config.json",
                   {"config": self.config, "environment": environment(), "wall_time_s": wall_time_s})
        write_json(self.results_path, results)

    def load(self) -> dict[str, Any]:
        return read_record(self.results_path)

    def run_or_load(self, compute: Callable[[], dict[str, Any]], force: bool = False) -> dict[str, Any]:
        """Return the finished results of this setting, computing and saving them first if needed
        (as the folder's one writer: a second process into it ends with one line, exit 2)."""
        try:
            self.lock()
            if self.done and not force:
                print(f"reusing the finished run in {self.path} (--force recomputes)")
                return self.load()
        except UserError as err:
            fail(str(err))
        start = time.perf_counter()
        results = compute()
        self.save(results, wall_time_s=round(time.perf_counter() - start, 2))
        print(f"raw results: {self.path}")
        return results

    def lock(self) -> None:
        lock_run_folder(self.path)

    # --- training runs: resumed after the last finished epoch

    def resume(self, may_change: Iterable[str] = ()) -> RunFolder:
        """Read and check what a previous run left here, writing nothing: a UserError when it
        holds other settings (``may_change`` may differ) or a damaged record."""
        folder = self.path
        saved = read_record(folder / "config.json") if (folder / "config.json").is_file() else None
        self.diverged = (saved or {}).get("diverged")
        if saved is not None:
            old, new = (_identity(saved, may_change), _identity(self.config, may_change))
            if old != new:
                keys = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
                diff = ", ".join(_change(k, old.get(k), new.get(k)) for k in keys)
                raise UserError(f"{folder} holds a run with other settings ({diff}); "
                                "use another --out or delete that folder")
        if self.diverged:
            self.metrics = read_metrics(folder / "metrics.jsonl")
            return self
        path = folder / "checkpoint.pt"
        if saved is None or not path.is_file():
            return self  # nothing to resume: start at epoch 0
        try:
            ckpt = _load_checkpoint(path)
        except Exception as err:  # noqa: BLE001 - any unreadable file is reported the same way
            raise UserError(f"{path}: unreadable or corrupt ({one_line(err, 300)}); "
                            "delete it to restart the run") from None
        keys = {"epoch", "model_state_dict", "optimizer_state_dict", "scheduler_state_dict"}
        if not isinstance(ckpt, dict) or not keys <= ckpt.keys():
            raise UserError(f"{path}: not a checkpoint of this project; delete it to restart")
        self.checkpoint = ckpt
        lines = read_metrics(folder / "metrics.jsonl", missing_ok=True)
        self.metrics = [m for m in lines if m["epoch"] <= self.epoch]
        if [m["epoch"] for m in self.metrics] != list(range(self.epoch + 1)):
            raise UserError(f"{folder / 'metrics.jsonl'} lacks epochs 0..{self.epoch} of "
                            f"{path.name}; delete the folder to restart the run")
        return self

    @property
    def epoch(self) -> int:
        """The last finished epoch (-1: none, not even the epoch-0 evaluation)."""
        return self.checkpoint["epoch"] if self.checkpoint else -1

    def nothing_to_do(self, epochs: int, save_model: bool) -> bool:
        """True (and says so) when the run diverged or has finished ``epochs`` epochs; a finished
        run then keeps model.pt if ``save_model``."""
        if self.diverged:
            print(f"{self.path}: diverged at epoch {self.diverged['epoch']}; nothing to do (delete "
                  "the folder to train it again)")
            return True
        if self.epoch < epochs:
            return False
        print(f"{self.path}: finished ({self.epoch} epochs); nothing to do")
        if save_model:
            self.keep_model()
        return True

    def keep_model(self, replace: bool = False) -> None:
        """model.pt: a copy of the last checkpoint (a model.pt already there stays, unless
        ``replace``)."""
        if replace or not (self.path / "model.pt").is_file():
            atomic_write_bytes(self.path / "model.pt", (self.path / "checkpoint.pt").read_bytes())

    def finish(self, save_model: bool) -> None:
        """The run trained to the end: model.pt is its last checkpoint if ``save_model``."""
        if save_model:
            self.keep_model(replace=True)
        print(f"done: {self.path}")

    def start(self, record: dict[str, Any]) -> None:
        """Write config.json (``record``: the settings and environment) and open the TensorBoard
        events after the last finished epoch."""
        from torch.utils.tensorboard import SummaryWriter

        self._record = record
        write_json(self.path / "config.json", record)
        # purge_step hides events a crashed run logged after its last checkpoint (or all, on restart).
        self._writer = SummaryWriter(str(self.path), purge_step=self.epoch + 1)

    def record_epoch(self, row: dict[str, Any], model_state: dict, optimizer, scheduler) -> bool:
        """Append one epoch's ``row`` to metrics.jsonl and the events and save checkpoint.pt;
        True when the row shows the run diverged, which is then recorded instead."""
        self.metrics.append(row)
        if mark_diverged(row):
            self._record_divergence()
            return True
        write_jsonl(self.path / "metrics.jsonl", self.metrics)
        for tag, value in tensorboard_scalars(row).items():
            self._writer.add_scalar(tag, value, row["epoch"])
        self._writer.flush()
        save_checkpoint(self.path / "checkpoint.pt", row["epoch"], model_state, optimizer, scheduler)
        return False

    def _record_divergence(self) -> None:
        """Record a diverged run: its metrics up to the epoch it diverged in, and config.json's
        ``diverged`` (a rerun then reports it instead of training it again)."""
        epoch = self.metrics[-1]["epoch"]
        write_jsonl(self.path / "metrics.jsonl", self.metrics)
        write_json(self.path / "config.json", {**self._record, "diverged": {"epoch": epoch}})
        print(f"{self.path}: diverged in epoch {epoch} (a loss became non-finite); the run stops and "
              "is recorded as diverged", flush=True)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
