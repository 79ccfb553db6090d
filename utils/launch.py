"""Running the steps of a plan (utils.plan): a local pool of worker processes, or a Slurm job
array through submitit.

Every step is its script's own command line, run in a subprocess from the repository root with its
output in ``<out>/logs/<step>.log``. The scripts resume from their run folders, so running a step
again (after a failure, a preemption, a timeout) continues it; that is also how a Slurm task is
requeued: submitit calls :meth:`RunTask.checkpoint`, which resubmits the same command.
"""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import submitit

from utils.plan import Step
from utils.results import REPO_ROOT, read_record, write_json

ACTIVE_SLURM_STATES = ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED",
                       "RESIZING")
MAX_REQUEUES_ON_TIMEOUT = 20  # a 100-epoch ResNet run may need many --time slices
JOBS_FILE = "reproduce-jobs.json"


@dataclass
class Outcome:
    step: Step
    returncode: int
    log: Path
    seconds: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def log_path(log_dir: Path, step: Step) -> Path:
    return Path(log_dir) / (re.sub(r"[^A-Za-z0-9.=_-]+", "_", step.id) + ".log")


def aihwkit_has_cuda() -> bool:
    from aihwkit.simulator.rpu_base import cuda

    return bool(cuda.is_compiled())


def step_cuda(step: Step, gpu: int | None, aihwkit_cuda: bool) -> int | None:
    """The --CUDA of ``step`` on GPU ``gpu``: every script that takes it, except that MNIST runs
    (all of whose layers are analog) stay on the CPU when AIHWKit is the CPU-only wheel."""
    if gpu is None or step.cuda is None or (step.cuda == "aihwkit" and not aihwkit_cuda):
        return None
    return gpu


def run_step(step: Step, log: Path, threads: int | None = None, cuda: int | None = None,
             processes: set | None = None) -> int:
    """Run one step's command to completion, its output to ``log``; returns the exit status."""
    cmd = step.command(threads, cuda)
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    with open(log, "a") as f:
        f.write(f"$ {subprocess.list2cmdline(cmd)}\n")
        f.flush()
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=f, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL)
        if processes is not None:
            processes.add(proc)
        try:
            return proc.wait()
        finally:
            if processes is not None:
                processes.discard(proc)


def run_local(steps: list[Step], log_dir: Path, workers: int = 1, gpus: list[int] | None = None,
              threads: int = 1, label: str = "run") -> list[Outcome]:
    """Run ``steps`` on ``workers`` processes at a time (one per GPU with ``gpus``); a failing
    step is reported with its log and the others go on."""
    slots: queue.Queue = queue.Queue()
    for slot in (gpus or [None] * workers):
        slots.put(slot)
    n_workers = len(gpus) if gpus else workers
    aihwkit_cuda = bool(gpus) and aihwkit_has_cuda()
    if gpus and not aihwkit_cuda:
        print("note: this AIHWKit has no CUDA (the PyPI wheel); MNIST runs use the CPU, the "
              "ResNet backbones the GPUs")
    lock, processes, done = threading.Lock(), set(), [0]

    def work(step: Step) -> Outcome:
        gpu = slots.get()
        start, log = time.perf_counter(), log_path(log_dir, step)
        try:
            cuda = step_cuda(step, gpu, aihwkit_cuda)
            with lock:
                where = f" on GPU {gpu}" if cuda is not None else ""
                print(f"  start  {step.id}{where}", flush=True)
            rc = run_step(step, log, threads, cuda, processes)
        finally:
            slots.put(gpu)
        outcome = Outcome(step, rc, log, time.perf_counter() - start)
        with lock:
            done[0] += 1
            what = "ok    " if rc == 0 else f"FAILED (exit {rc}), log {log}:"
            print(f"  [{done[0]}/{len(steps)}] {what} {step.id} ({outcome.seconds:.0f} s)", flush=True)
        return outcome

    if steps:
        print(f"{len(steps)} {label} step(s) on {n_workers} worker(s), {threads} thread(s) each; "
              f"logs in {log_dir}", flush=True)
    pool = ThreadPoolExecutor(max_workers=n_workers)
    try:
        return list(pool.map(work, steps))
    except KeyboardInterrupt:
        for proc in list(processes):  # the scripts resume: rerunning the command continues them
            proc.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        raise


# --- Slurm --------------------------------------------------------------------------------------

class RunTask(submitit.helpers.Checkpointable):
    """One Slurm array task: one step of the plan. When Slurm preempts it or its time runs out,
    submitit calls ``checkpoint`` (inherited), which requeues the same call; the script then
    resumes from its run folder."""

    def __call__(self, step: Step, log_dir: str, threads: int, gpus_per_task: int) -> int:
        gpu = 0 if gpus_per_task > 0 else None  # the task sees its own GPUs from index 0
        aihwkit_cuda = gpu is not None and aihwkit_has_cuda()
        return run_step(step, log_path(Path(log_dir), step), threads,
                        step_cuda(step, gpu, aihwkit_cuda))


def make_executor(folder: Path, cluster: str, *, partition: str | None, time_min: int,
                  gpus_per_task: int, cpus_per_task: int, array_parallelism: int = 256):
    """submitit's executor for ``cluster`` ("slurm", or "local" to test the same path here)."""
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster,
                                     slurm_max_num_timeout=MAX_REQUEUES_ON_TIMEOUT)
    params = {"name": "reproduce", "timeout_min": time_min, "cpus_per_task": cpus_per_task,
              "tasks_per_node": 1, "nodes": 1, "slurm_partition": partition,
              "slurm_array_parallelism": array_parallelism}
    if gpus_per_task:
        params["slurm_gpus_per_task"] = gpus_per_task
        if cluster == "local":
            params["gpus_per_node"] = gpus_per_task
    executor.update_parameters(**params)
    return executor


def _job_state(job) -> str:
    try:
        return str(job.state).upper()
    except Exception:  # noqa: BLE001 - sacct unavailable: treat the job as gone
        return "UNKNOWN"


def run_slurm(steps: list[Step], log_dir: Path, executor, threads: int, gpus_per_task: int,
              folder: Path) -> list[Outcome]:
    """Submit ``steps`` as one job array and wait for it. Steps whose job of an earlier call is
    still pending or running (recorded in ``folder``/reproduce-jobs.json) are waited for, not
    submitted again."""
    jobs_file = Path(folder) / JOBS_FILE
    recorded = read_record(jobs_file) if jobs_file.is_file() else {}
    waiting: dict[str, object] = {}
    if executor.cluster == "slurm":
        for step in steps:
            if step.id in recorded:
                job = submitit.SlurmJob(folder, recorded[step.id])
                if _job_state(job) in ACTIVE_SLURM_STATES:
                    waiting[step.id] = job
    new = [s for s in steps if s.id not in waiting]
    for step_id, job in waiting.items():
        print(f"  {step_id}: still in Slurm job {job.job_id}; waiting for it")
    jobs = []
    if new:
        with executor.batch():
            for step in new:
                jobs.append(executor.submit(RunTask(), step, str(log_dir), threads, gpus_per_task))
        recorded.update({s.id: j.job_id for s, j in zip(new, jobs, strict=True)})
        write_json(jobs_file, recorded)
        print(f"submitted {len(new)} task(s) as job array {jobs[0].job_id.split('_')[0]} "
              f"({executor.cluster}); submitit's files in {folder}, logs in {log_dir}", flush=True)
    all_jobs = list(zip(new, jobs, strict=True)) + [(s, waiting[s.id]) for s in steps
                                                    if s.id in waiting]
    outcomes = []
    print("waiting for the jobs (stopping this command leaves them running; run it again "
          "afterwards to draw the figures)", flush=True)
    for i, (step, job) in enumerate(all_jobs, 1):
        start, log = time.perf_counter(), log_path(log_dir, step)
        try:
            rc = job.result()
        except Exception as err:  # noqa: BLE001 - a failed or cancelled job
            rc, log = 1, Path(job.paths.stderr)
            print(f"  job {job.job_id}: {' '.join(str(err).split())[:200]}", file=sys.stderr)
        outcome = Outcome(step, rc, log, time.perf_counter() - start)
        what = "ok    " if outcome.ok else f"FAILED (exit {rc}), log {log}:"
        print(f"  [{i}/{len(all_jobs)}] {what} {step.id}", flush=True)
        outcomes.append(outcome)
    return outcomes
