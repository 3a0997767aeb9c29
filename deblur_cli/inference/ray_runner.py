"""`deblur-dir --ray`: a folder plan made on the driver, its per-photo work run by Ray actors.

Why Ray Core actors and not Ray Data: every guarantee of a local run lives on the driver (the plan, the
record file, the summary), and Ray Data's `map_batches` hides the one fact those guarantees need, which
attempt of a photo a worker is running. Here the driver submits one photo per actor call (at most
`IN_FLIGHT` per actor, so a worker never waits for its next photo), streams each result back as it
finishes (`ray.wait`), and counts it once. A worker that dies (process killed, node lost, out of memory)
is restarted by Ray (`max_restarts`) and loads the model again; the driver resubmits its photos, marked as
retries, up to `ATTEMPTS` times. A retry that finds its output already there finds the complete file of
the attempt whose reply was lost (the plan saw no file there, and writes are atomic), so it is counted
as written, not as a clash. It also needs only `ray`, not Ray Data's pyarrow and pandas.

Workers load the model themselves from the selection (a manifest name, resolved and verified on each
node, or a weights path on the shared filesystem), never from pickled tensors, with one torch thread per
CPU they were given. This module imports Ray at the top: it is imported only for `--ray`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray

from deblur_cli.errors import MsdnError, first_line
from deblur_cli.files import remove_stale_temps
from deblur_cli.inference.pipeline import (BatchReport, DeblurSettings, Job, Progress, run_job, settle_without_work,
                                           settle_written)
from deblur_cli.weights.resolve import Selection

ATTEMPTS = 3  # tries per photo when the worker running it dies
IN_FLIGHT = 2  # photos queued per worker: one running, one waiting
STARTUP_S = float(os.environ.get("MSDN_RAY_STARTUP_S", "600"))  # how long to wait for a first worker
_LOST = (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
         ray.exceptions.OwnerDiedError)


@dataclass(frozen=True)
class ClusterOptions:
    """Where and how wide to run: `address` as Ray takes it (None: `RAY_ADDRESS`, else a new local cluster)."""

    address: str | None = None
    workers: int | None = None  # None: as many as the cluster's CPUs (and GPUs) hold
    cpus_per_worker: int = 1
    gpus_per_worker: float = 0.0

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise MsdnError(f"--ray-workers must be at least 1, got {self.workers}")
        if self.cpus_per_worker < 1:
            raise MsdnError(f"--ray-cpus-per-worker must be at least 1, got {self.cpus_per_worker}")
        if self.gpus_per_worker < 0:
            raise MsdnError(f"--ray-gpus-per-worker must not be negative, got {self.gpus_per_worker}")


@dataclass(frozen=True)
class WorkerSpec:
    """What an actor needs to load the model once, itself: small, picklable, no tensors."""

    selection: Selection
    device: str = "auto"
    runtime: str = "torch"
    offline: bool = False
    threads: int = 1
    amp: str | None = "auto"


@dataclass(frozen=True)
class Outcome:
    """One photo's result as a worker reports it: an error line, or the notes of a written output."""

    error: str | None = None
    notes: tuple[str, ...] = ()


def worker_runtime(runtime: str) -> str:
    """`auto` means torch on workers (the same outputs on every node whatever is installed there);
    `openvino` asked for explicitly is kept."""
    return "torch" if runtime.strip().lower() == "auto" else runtime


class PhotoWorker:
    """A Ray actor: loads the model once, then deblurs the photos the driver sends it."""

    def __init__(self, spec: WorkerSpec) -> None:
        import torch

        from deblur_cli.inference.engine import describe_runtime
        from deblur_cli.weights.resolve import ready_model

        torch.set_num_threads(spec.threads)  # what the CLI gets from the CPUs it is given
        self.model: Any = None
        self.problem: str | None = None
        self.description = ""
        try:
            self.model = ready_model(spec.selection, spec.device, offline=spec.offline, runtime=spec.runtime).model
            self.description = describe_runtime(self.model, spec.amp)
        except MsdnError as exc:  # reported by the driver in one line, not as a dead actor
            self.problem = str(exc)

    def hello(self) -> tuple[str | None, str, int]:
        """(why the model did not load, or None; how it runs; the process id, for tests that kill it)."""
        return self.problem, self.description, os.getpid()

    def deblur(self, job: Job, settings: DeblurSettings, retry: bool) -> Outcome:
        if self.problem is not None:
            return Outcome(error=self.problem)
        if retry and not job.replace and job.target.exists():
            return Outcome()  # the complete output of the attempt whose worker died before replying
        try:
            return Outcome(notes=tuple(run_job(self.model, job, settings).notes))
        except MsdnError as exc:
            return Outcome(error=str(exc))


def require_ray_runtime(runtime: str) -> None:
    """Refuse an unknown --runtime on the driver, before a cluster starts (devices are the workers' own)."""
    from deblur_cli.inference.engine import RUNTIME_CHOICES

    if runtime.strip().lower() not in RUNTIME_CHOICES:
        raise MsdnError(f"unknown --runtime {runtime!r}; use {', '.join(RUNTIME_CHOICES)}")


def connect(address: str | None) -> bool:
    """Join the cluster (or start a local one); True if this call did, so the caller shuts it down."""
    if ray.is_initialized():
        return False
    options: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
    if address == "local" or (not address and not os.environ.get("RAY_ADDRESS")):
        options["include_dashboard"] = False  # a new local cluster: nothing to serve
    try:
        ray.init(address=address or None, **options)
    except Exception as exc:  # ConnectionError, ValueError, RuntimeError: all one line for the user
        where = address or os.environ.get("RAY_ADDRESS") or "a new local cluster"
        raise MsdnError(f"cannot start or join the Ray cluster ({where}): {_first_line(exc)}") from None
    return True


def worker_count(options: ClusterOptions, resources: dict[str, float]) -> int:
    """--ray-workers, else as many workers as the cluster's CPUs (and GPUs, if asked for) hold."""
    gpus = resources.get("GPU", 0.0)
    if options.gpus_per_worker > gpus:
        raise MsdnError(f"--ray-gpus-per-worker {options.gpus_per_worker:g}: the Ray cluster has {gpus:g} GPU(s)")
    if options.workers is not None:
        return options.workers
    fit = int(resources.get("CPU", 1) // options.cpus_per_worker)
    if options.gpus_per_worker > 0:
        fit = min(fit, int(gpus // options.gpus_per_worker))
    return max(1, fit)


def _first_line(exc: BaseException) -> str:
    """The line worth showing of an error from Ray: a task error's own cause, not its traceback."""
    return first_line(getattr(exc, "cause", None) or exc)[:300]


@dataclass
class _Pool:
    """The actors, which of them have loaded the model, and the photo calls each has in flight."""

    starting: dict[Any, Any]  # hello ref -> actor
    ready: list[Any]
    load: dict[Any, int]  # actor -> calls in flight
    description: str = ""

    def free(self) -> Any | None:
        idle = [a for a in self.ready if self.load[a] < IN_FLIGHT]
        return min(idle, key=lambda a: self.load[a]) if idle else None


def _start_pool(spec: WorkerSpec, options: ClusterOptions, count: int) -> _Pool:
    actor = ray.remote(PhotoWorker).options(num_cpus=options.cpus_per_worker, num_gpus=options.gpus_per_worker,
                                            max_restarts=-1, max_task_retries=0)
    actors = [actor.remote(spec) for _ in range(count)]
    return _Pool({a.hello.remote(): a for a in actors}, [], {a: 0 for a in actors})


def _admit(pool: _Pool, ref: Any) -> None:
    """A worker said hello: it joins the pool, or its one-line reason ends the run."""
    actor = pool.starting.pop(ref)
    try:
        problem, description, _ = ray.get(ref)
    except _LOST:
        pool.starting[actor.hello.remote()] = actor  # died while loading: Ray restarts it, ask again
        return
    if problem is not None:
        raise MsdnError(f"a Ray worker could not load the model: {problem}")
    pool.ready.append(actor)
    pool.description = pool.description or description


def deblur_directory_on_ray(spec: WorkerSpec, jobs: list[Job], settings: DeblurSettings,
                            options: ClusterOptions, *, on_file: Callable[[int, Job], None] | None = None,
                            progress: Progress | None = None,
                            on_written: Callable[[Job], None] | None = None) -> tuple[BatchReport, str]:
    """`deblur_directory` on a cluster: the same report, callbacks and record, per photo as it finishes.

    `on_file(done, job)` then `progress(1, 1)` are called as each photo is settled (done: how many
    were before it), `on_written(job)` once its output is complete. Returns the report (in plan order)
    and how the workers ran, e.g. `ray, 2 workers: torch 2.13.0 cpu, 1 thread, fp32`.
    """
    report = BatchReport(left_out=list(getattr(jobs, "left_out", [])))
    folders = list(dict.fromkeys(job.target.parent for job in jobs))
    for folder in folders:
        remove_stale_temps(folder)  # left by a run that was killed while writing
    owned = connect(options.address)
    pool: _Pool | None = None
    try:
        count = worker_count(options, ray.cluster_resources())
        pool = _start_pool(spec, options, count)
        died = _run(pool, jobs, settings, report, on_file, progress, on_written)
        if died:
            for folder in folders:
                remove_stale_temps(folder)  # the temporaries of the photos a dead worker was writing
        described = f"ray, {count} worker{'s' if count != 1 else ''}: {pool.description}"
    finally:
        for actor in (pool.load if pool is not None else {}):
            with contextlib.suppress(Exception):  # a lost connection must not hide the run's own error
                ray.kill(actor, no_restart=True)
        if owned:
            ray.shutdown()
    return _in_plan_order(report, jobs), described


def _run(pool: _Pool, jobs: list[Job], settings: DeblurSettings, report: BatchReport,
         on_file: Callable[[int, Job], None] | None, progress: Progress | None,
         on_written: Callable[[Job], None] | None) -> bool:
    """Dispatch, stream back and settle every job; True if a worker died on the way."""
    done = [0]

    def settled(job: Job) -> None:
        if on_file is not None:
            on_file(done[0], job)
        if progress is not None:
            progress(1, 1)
        done[0] += 1

    todo: deque[int] = deque()
    for index, job in enumerate(jobs):
        if settle_without_work(job, report):
            settled(job)
        else:
            todo.append(index)
    tries = {index: 0 for index in todo}
    flight: dict[Any, tuple[int, Any]] = {}  # photo call ref -> (job index, actor)
    died = False
    started = time.monotonic()
    while todo or flight:
        while todo and (actor := pool.free()) is not None:
            index = todo.popleft()
            flight[actor.deblur.remote(jobs[index], settings, tries[index] > 0)] = (index, actor)
            pool.load[actor] += 1
        ready, _ = ray.wait([*flight, *pool.starting], num_returns=1, timeout=10.0)
        if not ready:
            if not pool.ready and time.monotonic() - started > STARTUP_S:
                raise MsdnError(f"no Ray worker started within {STARTUP_S:.0f} s; the cluster may lack the CPUs "
                                "or GPUs asked for (--ray-cpus-per-worker, --ray-gpus-per-worker)")
            continue
        ref = ready[0]
        if ref in pool.starting:
            _admit(pool, ref)
            continue
        index, actor = flight.pop(ref)
        pool.load[actor] -= 1
        job = jobs[index]
        try:
            outcome = ray.get(ref)
        except _LOST:
            died = True
            tries[index] += 1
            if tries[index] < ATTEMPTS:
                todo.appendleft(index)  # Ray restarts the worker; the photo goes to the first free one
                continue
            outcome = Outcome(error=f"{job.source}: the Ray worker deblurring it died {ATTEMPTS} times "
                                    "(out of memory, or the node was lost?)")
        except ray.exceptions.RayTaskError as exc:
            outcome = Outcome(error=f"{job.source}: unexpected error on a Ray worker: {_first_line(exc)}")
        if outcome.error is not None:
            report.failed.append((job.source, outcome.error))
        else:
            settle_written(job, report, outcome.notes, on_written)
        settled(job)
    return died


def _in_plan_order(report: BatchReport, jobs: list[Job]) -> BatchReport:
    """Results arrive as photos finish; the summary lists them in plan order, as a local run does."""
    rank = {job.source: i for i, job in enumerate(jobs)}
    order = sorted(range(len(report.processed)), key=lambda i: rank[report.processed[i]])
    report.processed = [report.processed[i] for i in order]
    report.written = [report.written[i] for i in order]
    report.skipped.sort(key=rank.__getitem__)
    report.failed.sort(key=lambda item: rank[item[0]])
    report.notes.sort(key=lambda item: rank[item[0]])
    return report

