"""Reproduce the whole paper with one command: every run, then every figure and table, then
REPRODUCTION.md (each figure and table of the paper beside ours, with the budget, hardware and wall
time behind it).

    python reproduce.py --dry-run                     # the plan: every run, its command and status
    python reproduce.py --budget smoke --workers 2    # every script on a tiny budget (< 15 min, 2 cores)
    python reproduce.py --workers 8                   # the paper's protocol on 8 CPU cores
    python reproduce.py --gpus 0,1,2,3                # one worker per GPU (--CUDA k where it helps)
    python reproduce.py --slurm --partition gpu --time 720 --gpus-per-task 1 --cpus-per-task 8

The plan: Figures 1, 3 and 4 (S1–S3.3, one call each); Figure 5 (S4.1 FCN: FP SGD, and Analog SGD
and TT-v1 at τ = 0.7, 0.78, 0.8; S4.2 CNN: the same at τ = 0.6, 0.7, 0.8; seeds 0, 1, 2), whose
seed-0 FCN runs at FP SGD and τ = 0.7 keep their checkpoints for Figure 7; Table 2 (A12: ResNet18/34/50
x FP SGD / Analog SGD / TT-v1 at τ = 0.8, full fine-tuning) when CIFAR-10 and the ImageNet weights
are here or can be downloaded; then S4.1-plot-FCN, S4.2-plot-CNN, S6-plot-distribution and A12-table.

A finished run (its run folder holds every epoch, or the least-squares result) is "done" and not
run again; an unfinished one resumes where it stopped; one that cannot run here is "skipped" with
the reason. So after an interruption, a failure or a preemption, run the same command again.
Budgets: paper (each script's defaults, into results/) and smoke (tiny steps and epochs, a slice of
CIFAR-10 at 32 px, into results/smoke/: checks a machine end to end; its numbers mean nothing).
Data is fetched once, before the runs start (MNIST: see utils/data/mnist.py). Each run's output goes to
OUT/logs/<run>.log; a failing run is reported with its log and the others go on; the exit status
is 1 if any step failed. --report only rewrites REPRODUCTION.md from OUT.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
from pathlib import Path

from utils import cli
from utils.results import REPO_ROOT
from utils.runs import lock_run_folder


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from utils.reproduce.plan import BUDGETS

    p = cli.make_parser(__doc__)
    p.add_argument("--budget", choices=list(BUDGETS), default="paper",
                   help="paper: each script's defaults, the published protocol; smoke: tiny budgets "
                        "(default: %(default)s)")
    p.add_argument("--out", type=cli.out_dir, default=None,
                   help="results root: runs, figures, tables and logs go under it (default: "
                        "results for --budget paper, results/smoke for smoke)")
    p.add_argument("--data-root", type=Path, default=Path("data"),
                   help="MNIST in DATA_ROOT, CIFAR-10 in DATA_ROOT/CIFAR10 (fetched there if "
                        "missing; default: %(default)s)")
    p.add_argument("--no-download", action="store_true",
                   help="never fetch data or weights: runs whose data is missing are skipped")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (run, command, status: todo / done / skipped and why) and exit")
    p.add_argument("--only", action="append", default=[], metavar="PATTERN",
                   help="run only the steps whose name contains PATTERN (or matches it, with * ? [ ]); "
                        "repeatable, e.g. --only S3.2 --only 'S4.1*seed0' (figure steps follow "
                        "their runs)")
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                   help="leave out the steps matching PATTERN (as --only); repeatable")
    local = p.add_argument_group("local runs")
    local.add_argument("--workers", type=cli.positive_int, default=None,
                       help="runs at a time; each gets --threads max(1, cores // WORKERS) "
                            "(default: 1)")
    local.add_argument("--gpus", default=None, metavar="0,1,...",
                       help="one worker per listed GPU, passing --CUDA k to the scripts that use it "
                            "(ResNet backbones; MNIST too when AIHWKit has CUDA)")
    slurm = p.add_argument_group("Slurm (through submitit: one array task per run, requeued and "
                                 "resumed when preempted or out of time)")
    slurm.add_argument("--slurm", action="store_true", help="submit the runs as a Slurm job array, "
                       "wait for them, then draw the figures here")
    slurm.add_argument("--partition", default=None, help="Slurm partition (default: the cluster's)")
    slurm.add_argument("--time", type=cli.positive_int, default=24 * 60,
                       help="time limit per task in minutes (default: %(default)s); a run that "
                            "needs more is requeued and resumes")
    slurm.add_argument("--gpus-per-task", type=cli.nonneg_int, default=0,
                       help="GPUs per task (default: %(default)s)")
    slurm.add_argument("--cpus-per-task", type=cli.positive_int, default=1,
                       help="CPUs per task, also the runs' --threads (default: %(default)s)")
    slurm.add_argument("--slurm-folder", type=Path, default=None,
                       help="submitit's job files (default: OUT/slurm)")
    slurm.add_argument("--executor", choices=["slurm", "local"], default="slurm",
                       help=argparse.SUPPRESS)  # "local": submitit's LocalExecutor, for tests
    rep = p.add_argument_group("report")
    rep.add_argument("--report", action="store_true",
                     help="only write REPRODUCTION.md from the results in OUT, then exit")
    rep.add_argument("--report-file", type=Path, default=None,
                     help="where the report goes (default: REPRODUCTION.md at the repository root "
                          "for --out results, else OUT/REPRODUCTION.md)")
    args = p.parse_args(argv)
    args.out = shown(args.out if args.out is not None else BUDGETS[args.budget].default_out)
    args.data_root = shown(args.data_root)
    for name in ("slurm_folder", "report_file"):
        if getattr(args, name) is not None:
            setattr(args, name, shown(getattr(args, name)))
    args.gpus = parse_gpus(args.gpus) if args.gpus is not None else None
    if args.gpus is not None and args.slurm:
        cli.fail("--gpus is for local runs; with --slurm use --gpus-per-task")
    if args.gpus is not None and args.workers is not None:
        cli.fail("--gpus runs one worker per GPU; leave out --workers")
    if args.workers is not None and args.slurm:
        cli.fail("--workers is for local runs; Slurm runs the array tasks in parallel")
    return args


def parse_gpus(text: str) -> list[int]:
    """The --gpus list, checked against the GPUs torch sees (a bad value: one line, exit 2)."""
    try:
        gpus = [int(g) for g in text.split(",") if g.strip()]
    except ValueError:
        cli.fail(f"--gpus {text}: not a comma-separated list of GPU indices (e.g. 0,1)")
    if not gpus or min(gpus) < 0 or len(set(gpus)) != len(gpus):
        cli.fail(f"--gpus {text}: give distinct GPU indices >= 0 (e.g. 0,1)")
    import torch

    if not torch.cuda.is_available():
        cli.fail(f"--gpus {text}: torch sees no CUDA GPU on this machine; use --workers N to run "
                 "on the CPU")
    if max(gpus) >= torch.cuda.device_count():
        cli.fail(f"--gpus {text}: only {torch.cuda.device_count()} GPU(s) visible")
    return gpus


def cpu_cores() -> int:
    """The cores this process may use (the affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def shown(path: Path) -> Path:
    """``path`` as the scripts (run from the repository root) must see it: relative to the root
    when inside it, else absolute."""
    path = Path(path).resolve()
    try:
        return path.relative_to(REPO_ROOT)
    except ValueError:
        return path


def report_path(args: argparse.Namespace) -> Path:
    if args.report_file is not None:
        return args.report_file
    if (REPO_ROOT / args.out).resolve() == (REPO_ROOT / "results").resolve():
        return REPO_ROOT / "REPRODUCTION.md"
    return REPO_ROOT / args.out / "REPRODUCTION.md"


def write_report(args: argparse.Namespace) -> None:
    from utils.reproduce.report import write_report as write

    path = report_path(args)
    try:
        missing = write(REPO_ROOT / args.out, path)
    except cli.UserError as err:  # a damaged run record
        cli.fail(str(err))
    print(f"report: {path}" + (f" ({len(missing)} item(s) missing, named in it)" if missing else ""))


def prepare_data(steps: list, budget, args: argparse.Namespace) -> None:
    """Fetch what the todo runs need (once, before any run starts, so parallel runs never race
    for a download); runs whose data cannot be had are marked skipped with the reason."""
    from utils.cli import UserError
    from utils.data.cifar10 import find_cifar10, load_cifar10, write_cifar10_subset
    from utils.data.mnist import load_mnist
    from utils.reproduce.plan import smoke_cifar_root
    from utils.weights import load_backbone_weights

    needed = {n for s in steps if s.status == "todo" for n in s.needs}
    failed: dict[str, str] = {}
    if "mnist" in needed:
        try:
            load_mnist(args.data_root, download=not args.no_download)
        except UserError as err:
            failed["mnist"] = str(err)
    if "cifar" in needed:
        try:
            cifar_root = args.data_root / "CIFAR10"
            if budget.cifar_subset is None:
                load_cifar10(cifar_root, download=not args.no_download)
            elif find_cifar10(smoke_cifar_root(REPO_ROOT / args.out)) is None:
                write_cifar10_subset(load_cifar10(cifar_root, download=not args.no_download),
                                     smoke_cifar_root(REPO_ROOT / args.out), *budget.cifar_subset)
        except UserError as err:
            failed["cifar"] = str(err)
    for need in sorted(n for n in needed if n.startswith("weights:")):
        try:
            load_backbone_weights(need.split(":", 1)[1], "imagenet", download=not args.no_download)
        except UserError as err:
            failed[need] = str(err)
    for step in steps:
        why = [failed[n] for n in step.needs if n in failed]
        if why and step.status == "todo":
            step.status, step.note = "skipped", "; ".join(why)
            print(f"skipped {step.id}: {step.note}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.chdir(REPO_ROOT)  # the scripts run from the root; every path above is relative to it or absolute
    if args.report:
        write_report(args)
        return 0
    from utils.reproduce.launch import make_executor, run_local, run_slurm
    from utils.reproduce.plan import BUDGETS, build_plan, format_plan, select

    slurm_here = shutil.which("sbatch") and shutil.which("srun")
    if args.slurm and args.executor == "slurm" and not slurm_here:
        cli.fail("--slurm: no Slurm here (sbatch or srun not found); run on the cluster's login "
                 "node, or use --workers N")
    budget = BUDGETS[args.budget]
    plan = build_plan(budget, args.out, args.data_root, download=not args.no_download)
    steps = select(plan, args.only, args.exclude)
    if not steps:
        cli.fail(f"no step matches --only {' '.join(args.only)} (see --dry-run for the names)")
    print(f"budget {budget.name}, results root {args.out}")
    print(format_plan(steps))
    if args.dry_run:
        return 0
    try:  # one reproduce.py per results root (each run folder is locked by its script too)
        lock_run_folder(REPO_ROOT / args.out)
    except cli.UserError as err:
        cli.fail(str(err))

    runs = [s for s in steps if s.kind == "run"]
    prepare_data(runs, budget, args)
    todo = [s for s in runs if s.status == "todo"]
    log_dir = REPO_ROOT / args.out / "logs"
    if args.slurm:
        folder = args.slurm_folder or REPO_ROOT / args.out / "slurm"
        # The array tasks unpickle utils.reproduce.launch.RunTask: make the repository importable
        # there.
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT),
                                                                 os.environ.get("PYTHONPATH")]))
        executor = make_executor(folder, args.executor, partition=args.partition,
                                 time_min=args.time, gpus_per_task=args.gpus_per_task,
                                 cpus_per_task=args.cpus_per_task)
        outcomes = run_slurm(todo, log_dir, executor, args.cpus_per_task, args.gpus_per_task,
                             folder) if todo else []
    else:
        workers = len(args.gpus) if args.gpus else (args.workers or 1)
        threads = max(1, cpu_cores() // workers)
        outcomes = run_local(todo, log_dir, workers=args.workers or 1, gpus=args.gpus,
                             threads=threads)
    by_id = {s.id: s for s in plan}
    figures = []
    for step in (s for s in steps if s.kind == "figure" and s.status == "todo"):
        if all(by_id[i].status == "skipped" for i in step.inputs):
            step.status, step.note = "skipped", "every run it reads is skipped"
        else:
            figures.append(step)
    outcomes += run_local(figures, log_dir, workers=1, threads=1, label="figure/table")
    write_report(args)

    failed = [o for o in outcomes if not o.ok]
    skipped = [s for s in steps if s.status == "skipped"]
    print(f"{sum(o.ok for o in outcomes)} step(s) ran, {len(failed)} failed, "
          f"{sum(s.status == 'done' for s in steps)} were done already, {len(skipped)} skipped")
    for o in failed:
        print(f"FAILED {o.step.id} (exit {o.returncode}): {o.log}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    from utils.reproduce.launch import Interrupted

    try:
        sys.exit(main())
    except Interrupted as stop:
        steps = f": stopped {', '.join(stop.steps)}" if stop.steps else ""
        print(f"interrupted ({signal.Signals(stop.signum).name}){steps}; run the same command "
              "again to resume", file=sys.stderr)
        sys.exit(128 + stop.signum)
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        sys.exit(130)
