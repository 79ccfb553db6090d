"""Figure style, smoothing and saving (PNG + PDF). Plot code reads run folders; it never trains."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from utils.results import atomic_write_bytes  # noqa: E402

plt.rcParams.update({"font.size": 9, "axes.titlesize": 10, "legend.fontsize": 8,
                     "figure.dpi": 100, "savefig.dpi": 200, "savefig.bbox": "tight"})


def ema(values: list[float] | np.ndarray, coef: float) -> np.ndarray:
    """Exponential moving average s_k = coef·s_{k−1} + (1 − coef)·v_k, s_0 = v_0 (coef 0: no smoothing)."""
    values = np.asarray(values, dtype=float)
    out = np.empty_like(values)
    acc = values[0] if len(values) else 0.0
    for i, v in enumerate(values):
        acc = coef * acc + (1 - coef) * v
        out[i] = acc
    return out


# No creation date and no matplotlib version in the files: redrawing unchanged results gives the
# same bytes, so a committed figure changes only when what it shows does.
METADATA = {"png": {"Software": None},
            "pdf": {"CreationDate": None, "Creator": None, "Producer": None}}


def save_figure(fig: Figure, out: Path, name: str) -> list[Path]:
    """Save ``fig`` as ``out/figures/<name>.png`` and ``.pdf`` (atomically) and close it."""
    paths = []
    for ext in ("png", "pdf"):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, metadata=METADATA[ext])
        path = Path(out) / "figures" / f"{name}.{ext}"
        atomic_write_bytes(path, buf.getvalue())
        print(f"figure: {path}")
        paths.append(path)
    plt.close(fig)
    return paths
