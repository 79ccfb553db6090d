"""The spreads behind the failure probabilities that the statistical fidelity tests state.

    python tests/measure_margins.py NAME [repeats]

AIHWKit's runtime noise cannot be seeded (ours is), so a test that compares with an AIHWKit result
can only bound its chance of failing. This repeats one comparison of tests/test_fidelity.py
``repeats`` times (default 20) and prints, for each distance the test bounds, its mean, std and
largest value over the repeats, the test's limit, and the margin (limit − mean) / std that the
test's docstring quotes. NAME is one of the keys of utils.fidelity.COMPARISONS.
"""

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from utils.fidelity import COMPARISONS  # noqa: E402

if __name__ == "__main__":
    torch.set_num_threads(1)  # as in the tests (tests/conftest.py)
    name = sys.argv[1]
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    distances, limits = COMPARISONS[name]
    start, cpu = time.perf_counter(), time.process_time()
    rows = [distances() for _ in range(repeats)]
    seconds, cpu = (time.perf_counter() - start) / repeats, (time.process_time() - cpu) / repeats
    print(f"{name}: {repeats} repeats, {seconds:.1f} s each ({cpu:.1f} s of CPU)")
    for key in rows[0]:
        values = [row[key] for row in rows]
        mean, std = statistics.mean(values), statistics.stdev(values)
        limit = limits(key)
        margin = (limit - mean) / std if std > 0 else float("inf")
        print(f"  {key:24s} mean {mean:.4f} std {std:.4f} max {max(values):.4f} "
              f"limit {limit:.3f} margin {margin:.1f} std")
