"""Run a study's trials: in this process, or in N worker processes sharing one storage.

``--workers N`` starts N processes (not threads: Optuna's ``n_jobs`` means threads, and PyTorch
training holds the GIL in Python code). Each worker opens the study itself, gets its own
sampler seed stream (:func:`~autotransfer.study.recovery.worker_seed`), its own device (round-robin
over the visible GPUs) and ``1/N`` of the CPU threads, and runs trials while
:class:`~autotransfer.study.recovery.TrialQuota` allows. TPE's ``constant_liar`` makes each worker
see the others' running trials, so they spread out instead of sampling the same strategy.

joblib is not used for the processes: on an interrupt its loky backend terminates the workers
outright, which would leave their trials RUNNING; here the launcher forwards SIGTERM so each
worker ends its trial cleanly, and kills them only on a second signal.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial

from autotransfer import interrupt, progress
from autotransfer.errors import AutotransferError, TrialFailed
from autotransfer.logs import configure_logging
from autotransfer.results.report import OutputWriter
from autotransfer.settings import SearchSettings
from autotransfer.storage.backends import make_storage
from autotransfer.study.objective import Objective
from autotransfer.study.recovery import TrialQuota, reclaim_stale_trials, worker_seed
from autotransfer.study.sampling import make_pruner, make_sampler
from autotransfer.training.trainer import resolve_device

__all__ = ["WorkerJob", "run_worker", "run_workers", "shares"]

logger = logging.getLogger(__name__)

StudyCallback = Callable[[optuna.Study, FrozenTrial], None]


@dataclass
class WorkerJob:
    """What every worker of one search needs; picklable, so it crosses into spawned processes.

    Attributes:
        objective: The trial objective (dataset, space, budget, zoo, settings, runtime, progress
            hook); each worker runs a copy on its own device.
        storage: Storage URL or journal path (None: in memory, one worker only).
        study_name: The study.
        n_existing: Trials in the study when this run began (part of each worker's sampler seed).
        callbacks: Optuna callbacks after every trial.
    """

    objective: Objective
    storage: str | None
    study_name: str
    n_existing: int
    callbacks: Sequence[StudyCallback] = ()

    @property
    def settings(self) -> SearchSettings:
        """The study settings."""
        return self.objective.settings


def shares(remaining: int | None, workers: int) -> list[int | None]:
    """Split ``remaining`` trials over ``workers`` as evenly as possible (None: no per-worker cap)."""
    if remaining is None:
        return [None] * workers
    return [remaining // workers + (k < remaining % workers) for k in range(workers)]


def run_worker(job: WorkerJob, index: int = 0, share: int | None = None, *, study: optuna.Study | None = None,
               device: str | None = None, callbacks: Sequence[StudyCallback] = (),
               alive: Callable[[], bool] | None = None) -> optuna.Study:
    """Run trials in this process until the budget, the share, the timeout or a stop request ends them.

    Args:
        job: The search.
        index: This worker's index (its seed stream and the ``worker`` trial attribute).
        share: Trials this worker may run (None: no cap besides ``job.n_trials``).
        study: The study, when the caller already opened it (one worker, any storage); else it is
            loaded from ``job.storage``.
        device: Overrides ``job.device`` (a worker process's own GPU).
        callbacks: Extra Optuna callbacks after every trial.
        alive: Checked before every trial; False stops the worker (a worker process whose launcher
            died finishes its trial and exits instead of running on as an orphan).

    Returns:
        The study.

    Raises:
        Interrupted: A stop was requested (the running trial is recorded as ``interrupted``).
        DataError: A val or test image became unreadable.
    """
    settings = job.settings
    sampler = make_sampler(worker_seed(settings.seed, index, job.n_existing))
    if study is None:
        storage = make_storage(job.storage, heartbeat_interval=settings.heartbeat_interval)
        if storage is None:
            raise ValueError("a worker without a study needs job.storage (an in-memory study cannot be shared)")
        study = optuna.load_study(study_name=job.study_name, storage=storage, sampler=sampler,
                                  pruner=make_pruner(settings.pruner, job.objective.budget.epochs))
    else:
        study.sampler = sampler
    objective = replace(job.objective, device=resolve_device(device or settings.device), worker=index)
    deadline = None if settings.timeout is None else time.monotonic() + settings.timeout
    quota = TrialQuota(settings.n_trials, share, deadline, poll=min(5.0, float(settings.heartbeat_interval)))
    all_callbacks = [*job.callbacks, *callbacks]
    while (alive is None or alive()) and quota.may_start(study):
        study.optimize(objective, n_trials=1, catch=(TrialFailed,), callbacks=all_callbacks)
    interrupt.check()
    return study


def _worker_device(device: str, index: int) -> str:
    """Round-robin over the visible GPUs when the device is ``auto`` or ``cuda`` without an index."""
    if device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{index % torch.cuda.device_count()}"
    return device


def _child_main(job: WorkerJob, index: int, share: int | None, n_threads: int, log_level: int,
                sink: Any = None) -> None:
    """Entry point of one worker process (spawned); ``sink`` carries its progress to the launcher."""
    os.setpgrp()  # Ctrl+C in the terminal reaches the launcher only; it forwards one SIGTERM
    launcher = os.getppid()
    if sink is not None:
        progress.forward(sink, f"worker {index}")
    configure_logging(log_level, prefix=f"[worker {index}] ")
    torch.set_num_threads(n_threads)
    out = job.settings.out
    writer = OutputWriter(out, every=job.settings.report_every) if out is not None and index == 0 else None
    with interrupt.graceful_stop(hard_exit=True):
        try:
            run_worker(job, index, share, device=_worker_device(job.settings.device, index),
                       callbacks=[writer] if writer is not None else [], alive=lambda: os.getppid() == launcher)
        except interrupt.Interrupted as err:
            sys.exit(err.exit_status)
        except AutotransferError as err:
            print(f"[worker {index}] autotransfer: error: {err}", file=sys.stderr, flush=True)
            sys.exit(1)


def run_workers(job: WorkerJob, workers: int, study: optuna.Study, remaining: int | None) -> None:
    """Run ``workers`` worker processes on ``job`` and wait for them.

    Args:
        job: The search.
        workers: Number of processes.
        study: The study (already created, in a storage the processes share).
        remaining: Trials still to run in this run (split evenly; None: until the timeout).

    The first SIGINT/SIGTERM is forwarded to every worker as SIGTERM (each ends its trial as
    ``interrupted``); a second kills them and exits. Trials of a worker that died are marked
    stale here and retried by the next run.

    Raises:
        AutotransferError: A worker stopped on an error (its message was printed).
        Interrupted: A stop was requested.
    """
    context = multiprocessing.get_context("spawn")  # fork after importing torch is unsafe
    n_threads = max(1, len(os.sched_getaffinity(0)) // workers)
    sink = context.Queue() if progress.enabled() else None  # workers' bars, drawn here (on a terminal only)
    procs = [context.Process(target=_child_main, name=f"autotransfer-worker-{k}",
                             args=(job, k, share, n_threads, logging.getLogger().getEffectiveLevel(), sink))
             for k, share in enumerate(shares(remaining, workers))]

    def forward(sig: int) -> None:
        for proc in procs:
            if proc.pid is not None and proc.is_alive():
                os.kill(proc.pid, signal.SIGTERM)

    def kill(sig: int) -> None:
        for proc in procs:
            if proc.pid is not None and proc.is_alive():
                os.kill(proc.pid, signal.SIGKILL)

    with interrupt.listen(forward, kill), progress.relay(sink) if sink is not None else nullcontext():
        for proc in procs:
            proc.start()
        for proc in procs:
            while proc.is_alive():
                proc.join(timeout=0.5)
    codes = [proc.exitcode for proc in procs]
    logger.info("Workers exited with %s.", codes)
    died = [k for k, code in enumerate(codes) if code is not None and code < 0]
    if died:
        logger.warning("Worker(s) %s were killed (exit codes %s); their running trials are marked stale and "
                       "retried by the next run.", died, [codes[k] for k in died])
        reclaim_stale_trials(study)
    interrupt.check()
    if any(code == 1 for code in codes):
        raise AutotransferError(f"A worker stopped on an error (exit codes {codes}); see its message above. "
                                "Finished trials are kept; fix the cause and run the same command to resume.")
