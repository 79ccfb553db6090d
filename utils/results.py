"""Run folders: where a run's settings and raw results live, written atomically.

A run folder holds ``config.json`` (every setting, library versions, git commit) and the raw results
(``curves.json`` for the least-squares scripts). Plot code reads these files back; it never trains.
Every write goes to a temporary file that is renamed into place, so an interrupted run never leaves a
half-written result behind.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from utils.cli import UserError, fail

REPO_ROOT = Path(__file__).resolve().parent.parent
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
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


def write_json(path: Path, obj: Any) -> None:
    """Strict JSON (allow_nan=False): a NaN or an infinity is a bug upstream (flags are finite, a
    diverged run records ``diverged``), never a token that strict readers refuse."""
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True, allow_nan=False)
                              + "\n").encode())


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """One strict JSON object per line (metrics.jsonl), written atomically."""
    atomic_write_bytes(path, "".join(json.dumps(r, allow_nan=False) + "\n" for r in rows).encode())


# --- the one reader per record type: config.json and curves.json (read_record), metrics.jsonl
# (read_metrics). A damaged file is one line naming it, the line, and what to do.

def _damaged(path: Path, line: int, why: str) -> UserError:
    return UserError(f"{path}, line {line}: damaged record ({why}); delete the run folder "
                     f"{path.parent} and rerun the command that wrote it (it recomputes the run)")


def _refuse_constant(token: str) -> Any:
    raise ValueError(f"{token} is not strict JSON")


def _text(path: Path) -> str:
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise _damaged(Path(path), 1, " ".join(str(err).split())[:120]) from None


def read_record(path: Path) -> dict[str, Any]:
    """A JSON object record (config.json, curves.json), strictly parsed."""
    path = Path(path)
    try:
        record = json.loads(_text(path), parse_constant=_refuse_constant)
    except json.JSONDecodeError as err:
        raise _damaged(path, err.lineno, err.msg) from None
    except ValueError as err:
        raise _damaged(path, 1, str(err)) from None
    if not isinstance(record, dict):
        raise _damaged(path, 1, "not a JSON object")
    return record


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl: one JSON object with an integer ``epoch`` per line."""
    path, rows = Path(path), []
    for number, line in enumerate(_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line, parse_constant=_refuse_constant)
        except ValueError as err:
            raise _damaged(path, number, " ".join(str(err).split())[:120]) from None
        if not isinstance(row, dict) or not isinstance(row.get("epoch"), int):
            raise _damaged(path, number, "not an epoch's row")
        rows.append(row)
    return rows


def write_table(out: Path, name: str, header: list[str], rows: list[dict[str, Any]],
                missing: list[str], columns: list[str], labels: dict[str, str] | None = None,
                md_rows: list[dict[str, Any]] | None = None) -> list[Path]:
    """``<out>/tables/<name>.csv`` (the rows, every key) and ``.md`` (``header`` lines, then
    ``columns`` of the rows as a Markdown table, then the missing runs named), atomically.
    ``labels`` renames columns in the Markdown header only; ``md_rows`` (default: the rows) are
    the rows as the Markdown table shows them, where the CSV keeps numbers."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    csv_path = Path(out) / "tables" / f"{name}.csv"
    atomic_write_bytes(csv_path, buf.getvalue().encode())
    titles = [(labels or {}).get(c, c) for c in columns]
    lines = [*header, "| " + " | ".join(titles) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r[c]) for c in columns) + " |" for r in (md_rows or rows)]
    if missing:
        lines += ["", "Missing runs: " + ", ".join(missing) + "."]
    md_path = Path(out) / "tables" / f"{name}.md"
    atomic_write_bytes(md_path, ("\n".join(lines) + "\n").encode())
    return [md_path, csv_path]


def config_hash(config: dict[str, Any]) -> str:
    """Short stable hash of a settings dict; names run folders so a changed setting gets a new folder."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:10]


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def environment() -> dict[str, Any]:
    """Library versions and machine facts recorded beside every result; with a GPU in use, its
    name, driver and CUDA version."""
    env: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform(),
                           "git_commit": git_commit()}
    for name in ("torch", "aihwkit", "numpy"):
        module = sys.modules.get(name)
        env[name] = getattr(module, "__version__", None) if module else None
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        env.update(gpu=torch.cuda.get_device_name(), gpu_driver=_gpu_driver(),
                   cuda=torch.version.cuda)
    return env


def _gpu_driver() -> str | None:
    """The NVIDIA driver's version, as nvidia-smi reports it (None where it cannot be asked)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


class RunFolder:
    """``<out>/runs/<experiment>/<config hash>/``: one folder per distinct setting.

    ``done`` is true when the results file exists, so rerunning the same command skips the work and
    only redraws the figure.
    """

    def __init__(self, out: Path, experiment: str, config: dict[str, Any],
                 results_name: str = "curves.json") -> None:
        self.config = config
        self.path = Path(out) / "runs" / experiment / config_hash(config)
        self.results_path = self.path / results_name

    @classmethod
    def from_args(cls, args: Any, experiment: str, ignore: tuple[str, ...] = ()) -> RunFolder:
        """The run folder of a script's parsed flags; --out, --force and ``ignore`` (flags that
        change only the drawing) do not name the run."""
        config = {k: v for k, v in vars(args).items() if k not in ("out", "force", *ignore)}
        return cls(args.out, experiment, config)

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
            lock_run_folder(self.path)
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
