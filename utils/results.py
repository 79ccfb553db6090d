"""Writing results: atomic files, strict JSON records, tables, and the environment recorded beside
every result (run folders and the readers of their records: utils.runs).

Every write goes to a temporary file that is renamed into place, so an interrupted run never leaves a
half-written result behind.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
UMASK = os.umask(0)
os.umask(UMASK)


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
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    """Strict JSON (allow_nan=False): a NaN or an infinity is a bug upstream (flags are finite, a
    diverged run records ``diverged``), never a token that strict readers refuse."""
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True, allow_nan=False)
                              + "\n").encode())


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """One strict JSON object per line (metrics.jsonl), written atomically."""
    atomic_write_bytes(path, "".join(json.dumps(r, allow_nan=False) + "\n" for r in rows).encode())


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
