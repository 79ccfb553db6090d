"""Running the steps of a plan (utils.reproduce.plan): a local pool of worker processes, or a Slurm
job array through submitit.

Every step is its script's own command line, run in a subprocess from the repository root with its
output in ``<out>/logs/<step>.log``. The scripts resume from their run folders, so running a step
again (after a failure, a preemption, a timeout) continues it; that is also how a Slurm task is
requeued: submitit calls :meth:`RunTask.checkpoint`, which resubmits the same command.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import submitit

from utils.reproduce.plan import Step
from utils.results import REPO_ROOT, write_json
from utils.runs import read_record

ACTIVE_SLURM_STATES = ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED",
                       "RESIZING")
MAX_REQUEUES_ON_TIMEOUT = 20  # a 100-epoch ResNet run may need many --time slices
JOBS_FILE = "reproduce-jobs.json"
STOP_GRACE_S = 10  # after SIGTERM, how long a step may take to exit before SIGKILL


class Interrupted(Exception):
    """SIGTERM or SIGINT reached the launcher: its running steps were stopped (each script resumes
    from its run folder, so running the same command again continues them)."""

    def __init__(self, signum: int, steps: list[str]) -> None:
        super().__init__(signum, steps)
        self.signum, self.steps = signum, steps


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
    try:
        from utils.rpu_configs import aihwkit_has_cuda as has_cuda
    except ImportError:  # a torch-only install: each AIHWKit step reports that itself
        return False
    return has_cuda()


def step_cuda(step: Step, gpu: int | None, aihwkit_cuda: bool) -> int | None:
    """The --CUDA of ``step`` on GPU ``gpu``: every script that takes it, except that MNIST runs
    (all of whose layers are analog) stay on the CPU when AIHWKit is the CPU-only wheel."""
    if gpu is None or step.cuda is None or (step.cuda == "aihwkit" and not aihwkit_cuda):
        return None
    return gpu


def run_step(step: Step, log: Path, threads: int | None = None, cuda: int | None = None,
             processes: dict | None = None) -> int:
    """Run one step's command to completion, its output to ``log``; returns the exit status. The
    step runs in a process group of its own (registered in ``processes`` while it runs), so that
    stopping it stops whatever it started."""
    cmd = step.command(threads, cuda)
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    with open(log, "a") as f:
        f.write(f"$ {subprocess.list2cmdline(cmd)}\n")
        f.flush()
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=f, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        if processes is not None:
            processes[proc] = step.id
        try:
            return proc.wait()
        finally:
            if processes is not None:
                processes.pop(proc, None)


def stop_groups(processes: list[subprocess.Popen]) -> None:
    """SIGTERM to each process group, SIGKILL to those still there after STOP_GRACE_S."""
    for proc in processes:
        _signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for proc in processes:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        _signal_group(proc, signal.SIGKILL)  # the group's other members too, if any linger


def _signal_group(proc: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(proc.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone already


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
    lock, processes, done, stopping = threading.Lock(), {}, [0], threading.Event()

    def work(step: Step) -> Outcome:
        gpu = slots.get()
        if stopping.is_set():  # stopped before it began
            slots.put(gpu)
            return Outcome(step, -1, log_path(log_dir, step), 0.0)
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
        if stopping.is_set():
            return outcome  # reported as interrupted, not as failed
        with lock:
            done[0] += 1
            what = "ok    " if rc == 0 else f"FAILED (exit {rc}), log {log}:"
            print(f"  [{done[0]}/{len(steps)}] {what} {step.id} ({outcome.seconds:.0f} s)", flush=True)
        return outcome

    if steps:
        print(f"{len(steps)} {label} step(s) on {n_workers} worker(s), {threads} thread(s) each; "
              f"logs in {log_dir}", flush=True)
    pool = ThreadPoolExecutor(max_workers=n_workers)
    handlers = _raise_on_signals()
    try:
        return list(pool.map(work, steps))
    except (Interrupted, KeyboardInterrupt) as err:
        stopping.set()
        for signum in handlers:  # a second Ctrl-C must not break the clean-up
            signal.signal(signum, signal.SIG_IGN)
        running = dict(processes)
        stop_groups(list(running))  # the scripts resume: rerunning the command continues them
        stop_groups([p for p in list(processes) if p not in running])  # started meanwhile
        pool.shutdown(wait=True, cancel_futures=True)
        signum = err.signum if isinstance(err, Interrupted) else signal.SIGINT
        raise Interrupted(signum, sorted(running.values())) from None
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


def _raise_on_signals() -> dict:
    """Make SIGTERM and SIGINT raise Interrupted in the main thread (where Python runs signal
    handlers); returns the previous handlers. Outside the main thread: nothing (returns {})."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum, frame):
        raise Interrupted(signum, [])

    return {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}


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
