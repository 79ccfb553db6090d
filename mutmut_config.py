"""mutmut's hook (docs/testing.md): mutate only the simulator's and the dynamics' core, and run
only the fast, seeded tests that cover it.

The core is the functions named in CORE: the IO pass, the pulsed update in both modes and the
Tiki-Taka transfer of utils/analog_torch/tile.py, and the update rules of utils/dynamics.py. Every
other mutant is skipped (it costs nothing), and so are, inside the core,
- the text of a ``raise`` (a message: tests/test_bad_input.py checks what the user reads), and
- the lines that hand the work to the C++ kernels (``native``): the tests below run the tensor
  operations; the kernels are checked against them in tests/test_simulator.py and by the
  hand mutations of tests/mutate_kernels.sh.
"""

from __future__ import annotations

import ast
import os
from functools import cache
from pathlib import Path

PYTEST = ("python tests/mutation_runner.py -x -q -n 0 -p no:cacheprovider --assert=plain "
          "-p no:hypothesispytest")
CORE = {
    "utils/analog_torch/tile.py": {
        "functions": {"_quantize", "_res_step", "_one_pass", "analog_mvm", "pulse_probabilities",
                      "_pair", "sparse_counts", "count_moments", "_soft_bounds_mean", "_rows",
                      "_store", "_moment_update", "active_inputs", "update", "_pulse_step",
                      "_moment_step", "apply_update", "_tiki_taka"},
        "tests": "tests/test_tile_rules.py",
    },
    "utils/dynamics.py": {
        "functions": {"analog_increment", "noisy_gradient", "_check", "step", "_update",
                      "main_array", "__init__"},
        "tests": "tests/test_dynamics_rules.py",
    },
}


@cache
def _core_lines(filename: str) -> frozenset[int]:
    """The 0-based line numbers of the core functions' bodies, less their raise statements and
    the C++ dispatch."""
    core = CORE[filename]["functions"]
    source = Path(filename).read_text()
    lines = source.split("\n")
    keep: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef) and node.name in core:
            keep.update(range(node.lineno - 1, node.end_lineno))
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Raise):
            keep.difference_update(range(node.lineno - 1, node.end_lineno))
    return frozenset(i for i in keep if "native" not in lines[i])


def _in_shard(line: int) -> bool:
    """MUTATION_SHARD=k/n: only the mutants on lines ≡ k (mod n), so that n copies can share
    the work (each in its own copy, with its own cache)."""
    shard = os.environ.get("MUTATION_SHARD")
    if not shard:
        return True
    k, n = (int(v) for v in shard.split("/"))
    return line % n == k


def pre_mutation(context) -> None:
    filename = str(Path(context.filename).as_posix())
    line = context.current_line_index
    if filename not in CORE or line not in _core_lines(filename) or not _in_shard(line):
        context.skip = True
        return
    context.config.test_command = f"{PYTEST} {CORE[filename]['tests']}"
