"""Surviving crashes: stale trials, the trial budget across restarts and workers, run records.

A process killed mid-trial (SIGKILL, the OOM killer, a power cut) leaves its trial RUNNING in
storage. On a database server, Optuna's heartbeats find it (``RDBStorage(heartbeat_interval=...)``)
and ``RetryHeartbeatStaleTrialCallback`` re-enqueues its strategy. SQLite and journal files have no
heartbeats, so at start-up :func:`reclaim_stale_trials` fails the RUNNING trials whose process is
provably gone (every trial records its host and PID) with reason ``stale``, and passes them to the
same Optuna callback so the interrupted strategy is retried. Nothing here imports PyTorch.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import warnings
from dataclasses import dataclass

import numpy as np
import optuna
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from autotransfer import interrupt
from autotransfer.storage.backends import stale_retry_callback
from autotransfer.storage.records import StudyAttr, TrialAttr, counts_towards_n_trials

__all__ = [
    "TrialQuota",
    "finished_trials",
    "has_heartbeat",
    "patience_exhausted",
    "reclaim_stale_trials",
    "record_run",
    "set_patience",
    "worker_identity",
    "worker_seed",
]

logger = logging.getLogger(__name__)

def worker_identity(index: int = 0) -> dict[str, object]:
    """This process as recorded on every trial it runs: host name, PID and worker index."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "index": index}


def worker_seed(seed: int, worker: int, n_existing: int) -> int:
    """The sampler seed of one worker in one run (``numpy.random.SeedSequence``).

    Each worker draws its own stream, and so does each restart (``n_existing`` trials already in
    the study): reseeding a restarted sampler with the bare study seed would replay the random
    start-up trials of the first run and repeat their strategies.
    """
    return int(np.random.SeedSequence([seed, worker, n_existing]).generate_state(1)[0])


def finished_trials(study: optuna.Study) -> int:
    """Trials that count towards ``n_trials``: complete, pruned and failed, except interrupted or stale ones."""
    return sum(counts_towards_n_trials(t) for t in study.get_trials(deepcopy=False))


def has_heartbeat(study: optuna.Study) -> bool:
    """Whether the study's storage runs Optuna heartbeats (``RDBStorage(heartbeat_interval=...)``)."""
    storage = study._storage  # Optuna has no public accessor; its own fail_stale_trials reads it too
    return isinstance(storage, RDBStorage) and storage.get_heartbeat_interval() is not None


def _process_gone(trial: FrozenTrial, heartbeat: bool) -> bool:
    owner = trial.user_attrs.get(TrialAttr.WORKER)
    if not isinstance(owner, dict) or owner.get("host") != socket.gethostname():
        # Unknown owner: without heartbeats the storage is a one-host file and the search that
        # owns it is starting now, so the trial is an orphan; with heartbeats, Optuna decides.
        return not heartbeat
    pid = int(owner.get("pid", -1))
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def reclaim_stale_trials(study: optuna.Study) -> list[int]:
    """Fail the RUNNING trials whose process is gone (reason ``stale``) and retry their strategies.

    Safe at start-up: a trial is reclaimed only when its recorded process no longer exists on
    this host, or, on storages without heartbeats (SQLite, journal file), when it has no owner
    on this host at all. Trials of live processes and, on a database server, trials of other
    hosts are left to their owners and to Optuna's heartbeats.

    Returns:
        The numbers of the trials marked stale.
    """
    heartbeat = has_heartbeat(study)
    storage, retry, reclaimed = study._storage, stale_retry_callback(), []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _process_gone(trial, heartbeat):
            continue
        try:
            storage.set_trial_user_attr(trial._trial_id, TrialAttr.STOP_REASON, "stale")
            if not storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:  # another process got there first
            continue
        reclaimed.append(trial.number)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            retry(study, storage.get_trial(trial._trial_id))
        logger.warning("Trial %d was left RUNNING by a process that is gone (%s): marked failed (stale); "
                       "its strategy is queued to run again.", trial.number, trial.user_attrs.get(TrialAttr.WORKER))
    return reclaimed


def record_run(study: optuna.Study, *, n_trials: int | None, timeout: float | None, workers: int) -> None:
    """Store when this run started and its limits, for ``autotransfer status`` (one key per process)."""
    me = worker_identity()
    study.set_user_attr(f"{StudyAttr.RUN_PREFIX}{me['host']}.{me['pid']}",
                        {"started": time.time(), "timeout": timeout, "n_trials": n_trials, "workers": workers,
                         "host": me["host"], "pid": me["pid"]})


def set_patience(study: optuna.Study, trials: int | None, min_improvement: float) -> None:
    """Store this run's patience rule with the study, where every worker and host reads it (None: no rule).

    Also clears the previous run's record of why sampling stopped.
    """
    rule = None if trials is None else {"trials": trials, "min_improvement": min_improvement}
    study.set_user_attr(StudyAttr.PATIENCE, rule)
    study.set_user_attr(StudyAttr.SAMPLING_STOPPED, None)


def patience_exhausted(study: optuna.Study, trials: list[FrozenTrial] | None = None) -> str | None:
    """Why the study's patience rule stops sampling now, or None while it does not (or there is no rule).

    The rule (:func:`set_patience`) is ``N`` finished trials in a row, in trial-number order, none of
    which improved the best value so far by more than ``min_improvement`` (metric units). Only
    trials that count towards ``n_trials`` count (an interrupted or stale trial does not). Optuna's
    terminator is not used: its callback ends only the current ``optimize`` call, and its evaluators
    need cross-validation scores or ignore the val noise that ``min_improvement`` stands for.
    """
    rule = study.user_attrs.get(StudyAttr.PATIENCE)
    if not rule:
        return None
    patience, step = int(rule["trials"]), float(rule["min_improvement"])
    sign = 1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
    best: float | None = None
    since = 0
    for trial in sorted(trials if trials is not None else study.get_trials(deepcopy=False), key=lambda t: t.number):
        if not counts_towards_n_trials(trial):
            continue
        value = None if trial.state != TrialState.COMPLETE or trial.value is None else sign * trial.value
        if value is not None and (best is None or value > best + step):
            best, since = value, 0
        else:
            since += 1
    if since < patience:
        return None
    return (f"{since} finished trials without an improvement larger than {step:.4g} "
            f"(--patience {patience})")


@dataclass
class TrialQuota:
    """Decides, before every trial, whether a worker may start another one.

    Optuna's ``MaxTrialsCallback`` is not used: it counts trials by state, so interrupted and
    stale failures would use up ``n_trials``, and it checks only after a trial ends, so parallel
    workers overshoot. Here a worker starts a trial only while ``finished + running <
    n_trials`` (summed over every process on the study) and while its own share lasts.

    Attributes:
        n_trials: Total finished trials wanted in the study (None: no limit).
        share: Trials this worker may run in this run (None: no limit).
        deadline: ``time.monotonic()`` after which no trial starts (``timeout``), or None.
        poll: Seconds between checks while only other workers' trials are left (heartbeat storages).
    """

    n_trials: int | None
    share: int | None = None
    deadline: float | None = None
    poll: float = 5.0
    started: int = 0

    def may_start(self, study: optuna.Study) -> bool:
        """True if this worker should run another trial now (it may wait for stale trials first)."""
        while True:
            if interrupt.requested() is not None:
                return False
            if self.share is not None and self.started >= self.share:
                return False
            if self.deadline is not None and time.monotonic() >= self.deadline:
                return False
            trials = study.get_trials(deepcopy=False)
            stopped = patience_exhausted(study, trials)
            if stopped is not None:
                if not study.user_attrs.get(StudyAttr.SAMPLING_STOPPED):
                    study.set_user_attr(StudyAttr.SAMPLING_STOPPED, {"reason": "patience", "detail": stopped})
                return False
            if self.n_trials is None:
                break
            finished = sum(counts_towards_n_trials(t) for t in trials)
            running = sum(t.state == TrialState.RUNNING for t in trials)
            if finished + running < self.n_trials:
                break
            if finished >= self.n_trials or not has_heartbeat(study):
                return False
            # Only other workers' trials stand between us and the total; if their workers died,
            # Optuna's heartbeats will fail them and re-enqueue them for us to run.
            time.sleep(self.poll)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
        self.started += 1
        return True
