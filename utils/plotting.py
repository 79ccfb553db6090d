"""Figure style, smoothing and saving (PNG + PDF). Plot code reads run folders; it never trains."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from cycler import cycler  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from utils.results import atomic_write_bytes  # noqa: E402

plt.rcParams.update({"font.size": 9, "axes.titlesize": 10, "legend.fontsize": 8,
                     "figure.dpi": 100, "savefig.dpi": 200, "savefig.bbox": "tight"})

# The palette of every figure: Okabe & Ito's colour-blind-safe colours, each paired with its own line
# style and marker, so that lines stay apart in greyscale too. "C0" … "C7" name these colours.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#999999")
LINESTYLES = ("-", "--", "-.", ":", (0, (5, 1, 1, 1, 1, 1)), (0, (3, 1)), (0, (1, 2)), (0, (8, 2)))
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
DIGITAL_COLOR = "#000000"  # digital SGD, the reference line of a figure


def use_palette() -> None:
    """Make PALETTE (with its line styles) the default colour cycle of every axes."""
    plt.rcParams["axes.prop_cycle"] = cycler(color=PALETTE, linestyle=LINESTYLES)


def style(i: int) -> dict:
    """Colour, line style and marker of the i-th series (cycling), for plot(**style(i))."""
    i %= len(PALETTE)
    return {"color": PALETTE[i], "ls": LINESTYLES[i], "marker": MARKERS[i]}


use_palette()


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
