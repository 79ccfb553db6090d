"""Every committed table and REPRODUCTION.md are what the report code computes from the committed run
records (results/runs/), so a fresh clone regenerates them byte for byte.

Each table under results/tables is either checked here (regenerated from its records in a temporary
folder and compared) or listed in NOT_FROM_RECORDS with the reason it cannot be.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from utils import mnist_report
from utils.paper import MNIST_TAUS
from utils.reproduce.plan import least_squares_result, setting_flags
from utils.reproduce.report import render
from utils.results import REPO_ROOT

RESULTS = REPO_ROOT / "results"
RUNS = RESULTS / "runs"

# table -> (script that writes it, the flags that change its settings): least-squares tables are
# written by the script from its run record (curves.json); rerunning the script with the record in
# place only redraws
LEAST_SQUARES = {
    "fig3_tracking.md": ("S2-dynamic-verification", {}),
    "fig3_tracking_torch.md": ("S2-dynamic-verification", {"backend": "torch", "update_mode": "moment"}),
    "fig4a_ablation_tau.md": ("S3.1-ablation-tau", {}),
}
# table -> the experiment suffix of the MNIST runs behind it (utils.backend: Backend.suffix)
MNIST = {f"mnist{suffix.replace('-', '_')}.{ext}": suffix
         for suffix in ("", "-torch", "-torch-pulse") for ext in ("md", "csv")}
CIFAR = ("cifar10_resnet.md", "cifar10_resnet.csv")
NOT_FROM_RECORDS = {
    "fig7_saturation.md": "read from the trained weights (model.pt), which are never committed",
    "backend_fidelity.md": "a benchmark's output (benchmarks/), not a run record",
    "backend_fidelity.csv": "a benchmark's output (benchmarks/), not a run record",
    "bench_backends_cnn_cpu.md": "a speed measurement (benchmarks/), not a run record",
    "bench_backends_fcn_cpu.md": "a speed measurement (benchmarks/), not a run record",
    "bench_backends_cnn_cuda.md": "a speed measurement on a GPU (benchmarks/gpu_check.sh)",
    "bench_backends_fcn_cuda.md": "a speed measurement on a GPU (benchmarks/gpu_check.sh)",
}


def committed_tables() -> list[str]:
    return sorted(p.relative_to(RESULTS / "tables").as_posix()
                  for p in (RESULTS / "tables").rglob("*") if p.is_file())


def test_every_committed_table_is_checked_or_excused():
    unknown = set(committed_tables()) - set(LEAST_SQUARES) - set(MNIST) - set(CIFAR) \
        - set(NOT_FROM_RECORDS)
    assert not unknown, f"tables with no check against their records: {sorted(unknown)}"


def _records(experiment: str) -> list[Path]:
    return sorted((RUNS / experiment).glob("**/metrics.jsonl")) + \
        sorted((RUNS / experiment).glob("**/curves.json"))


@pytest.mark.parametrize("table", sorted(MNIST))
def test_mnist_table_is_computed_from_the_committed_records(table, tmp_path, capsys):
    suffix = MNIST[table]
    if not any(_records(f"MNIST-{net}{suffix}") for net in MNIST_TAUS):
        pytest.skip(f"no MNIST{suffix} run record committed yet: {table} is not rerun from records")
    mnist_report.write_table(RESULTS, tmp_path, suffix)
    assert (tmp_path / "tables" / table).read_bytes() == (RESULTS / "tables" / table).read_bytes(), \
        f"results/tables/{table} differs from its records; rerun S4.1-plot-FCN.py"


@pytest.mark.parametrize("table", CIFAR)
def test_cifar_table_is_computed_from_the_committed_records(table, tmp_path, capsys):
    from utils.cifar_report import write_table
    from utils.finetune import EXPERIMENT

    if not _records(EXPERIMENT):
        pytest.skip(f"no {EXPERIMENT} run record committed yet: {table} is not rerun from records")
    write_table(RESULTS, tmp_path)
    assert (tmp_path / "tables" / table).read_bytes() == (RESULTS / "tables" / table).read_bytes(), \
        f"results/tables/{table} differs from its records; rerun A12-table.py"


@pytest.mark.parametrize("table", sorted(LEAST_SQUARES))
def test_least_squares_table_is_computed_from_the_committed_record(table, tmp_path, capsys,
                                                                   monkeypatch):
    stem, changes = LEAST_SQUARES[table]
    flags = setting_flags(changes)
    record = least_squares_result(RESULTS, stem, changes).parent
    if not (record / "curves.json").is_file():
        pytest.skip(f"the run record behind {table} ({record.relative_to(REPO_ROOT)}) is not "
                    "committed")
    shutil.copytree(record, tmp_path / record.relative_to(RESULTS))
    # the script finds the record in place and only writes the table (and would draw: not needed)
    spec = importlib.util.spec_from_file_location(f"script_{table}", REPO_ROOT / f"{stem}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "plot", lambda *args, **kwargs: None)
    module.main([*flags, "--out", str(tmp_path)])
    assert (tmp_path / "tables" / table).read_bytes() == (RESULTS / "tables" / table).read_bytes(), \
        f"results/tables/{table} differs from its record; rerun {stem}.py {' '.join(flags)}"


def test_reproduction_report_is_computed_from_the_committed_results():
    text, _ = render(RESULTS, REPO_ROOT)
    assert text == (REPO_ROOT / "REPRODUCTION.md").read_text(), \
        "REPRODUCTION.md differs from the committed results; rerun python reproduce.py --report"
