"""Wall time of the five least-squares scripts at their paper budgets (default flags).

    python benchmarks/bench_least_squares.py

Each script runs once, from scratch (--force), into a temporary folder, one after the other; the
target is under 300 s for all five together on a 2-core machine. Prints each time and its share of
that budget. Times include Python start-up and the torch/AIHWKit import (≈ 3 s per script).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ["S1-SGD-diff-lr.py", "S2-dynamic-verification.py", "S3.1-ablation-tau.py",
           "S3.2-ablation-sigma.py", "S3.3-ablation-init.py"]
BUDGET_S = 300.0


def main() -> None:
    times = {}
    with tempfile.TemporaryDirectory() as out:
        for script in SCRIPTS:
            start = time.perf_counter()
            subprocess.run([sys.executable, str(ROOT / script), "--out", out, "--force"], cwd=ROOT,
                           check=True, capture_output=True)
            times[script] = time.perf_counter() - start
            print(f"{script:30s} {times[script]:7.1f} s", flush=True)
    total = sum(times.values())
    print(f"{'total':30s} {total:7.1f} s = {total / BUDGET_S:.2f} × the {BUDGET_S:.0f} s budget")


if __name__ == "__main__":
    main()
