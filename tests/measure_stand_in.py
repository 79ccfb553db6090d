"""The spread behind the margins of test_fidelity.py's stand-in training tests.

    python tests/measure_stand_in.py [repeats]

AIHWKit's runtime noise cannot be seeded, so a test on its accuracy can only bound the chance of a
failure. This prints, per setting, the mean and std of AIHWKit's accuracy over ``repeats`` runs
(default 20) and the torch backend's seeded 3-run mean, the numbers the tests' docstrings quote.
"""

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from utils.fidelity import stand_in_accuracies  # noqa: E402

if __name__ == "__main__":
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    for setting in ("Analog SGD", "TT-v1"):
        theirs = stand_in_accuracies(setting, "aihwkit", repeats)
        ours = stand_in_accuracies(setting, "torch", 3)
        print(f"{setting}: AIHWKit mean {statistics.mean(theirs):.4f} std "
              f"{statistics.stdev(theirs):.4f} over {repeats} runs (min {min(theirs):.4f}); "
              f"torch 3-run mean {statistics.mean(ours):.4f} ({', '.join(f'{a:.4f}' for a in ours)})")
