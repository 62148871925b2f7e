"""``autotransfer status``: progress of a study, read from its storage (no PyTorch import).

Counts by state, the best trial so far, the running trials, and the time: elapsed in the
latest run and, from the median seconds per finished trial, an estimate of what is left of
``--n-trials``; for a ``--timeout`` run, when it stops starting trials.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState

from autotransfer.space.dimensions import DIMENSIONS
from autotransfer.storage.records import (
    StudyAttr,
    TrialAttr,
    best_trial,
    companion_study,
    counts_towards_n_trials,
    stop_reason,
    study_metric,
)

__all__ = ["StudyStatus", "describe_decision", "describe_params", "format_status", "study_status"]


@dataclass
class StudyStatus:
    """Progress of a study at one moment.

    Attributes:
        study_name: The study.
        states: Trials per state (``complete``, ``pruned``, ``failed``, ``running``, ``waiting``).
        stale: Failed trials whose process died. interrupted: failed trials stopped by a signal.
        finished: Trials counting towards ``n_trials``.
        n_trials: The latest run's target (None: unknown or a ``--timeout``-only run).
        best: ``{"number", "value", "params"}`` of the best complete trial, or None.
        metric: The validation metric maximised.
        running: ``{"number", "epoch", "worker"}`` per running trial.
        run: The latest run's record (``started`` in Unix seconds, ``timeout``, ``n_trials``, ``workers``).
        median_seconds: Median seconds per finished trial, or None.
        now: When this was read (Unix seconds).
        confirmation: Progress of the confirmation stage (``{"note", "done", "total", "running"}``), or None.
        decision: The confirmation's stored decision, or None.
        skipped: Why the confirmation stage did not run, or None.
        sampling_stopped: Why the latest run stopped sampling (trial count, timeout or patience), or None.
    """

    study_name: str
    states: dict[str, int]
    stale: int
    interrupted: int
    finished: int
    n_trials: int | None
    best: dict[str, Any] | None
    metric: str
    running: list[dict[str, Any]] = field(default_factory=list)
    run: dict[str, Any] | None = None
    median_seconds: float | None = None
    now: float = 0.0
    confirmation: dict[str, Any] | None = None
    decision: dict[str, Any] | None = None
    skipped: str | None = None
    sampling_stopped: str | None = None

    @property
    def elapsed(self) -> float | None:
        """Seconds since the latest run started."""
        return None if self.run is None else self.now - float(self.run["started"])

    @property
    def timeout_left(self) -> float | None:
        """Seconds until the latest run stops starting trials (its ``--timeout``), or None."""
        if self.run is None or not self.run.get("timeout"):
            return None
        return max(0.0, float(self.run["started"]) + float(self.run["timeout"]) - self.now)

    @property
    def estimated_left(self) -> float | None:
        """Estimated seconds to reach ``n_trials`` (median trial time x trials left / workers), or None."""
        if self.n_trials is None or self.median_seconds is None:
            return None
        workers = int((self.run or {}).get("workers") or 1)
        left = max(0, self.n_trials - self.finished) * self.median_seconds / workers
        timeout_left = self.timeout_left
        return left if timeout_left is None else min(left, timeout_left)


def study_status(study: optuna.Study) -> StudyStatus:
    """Read a study's progress from its storage.

    Args:
        study: The study (e.g. from :func:`~autotransfer.storage.backends.load_existing_study`).

    Returns:
        A :class:`StudyStatus`.
    """
    trials = study.get_trials(deepcopy=False)
    names = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
             TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}
    states = {name: sum(t.state == state for t in trials) for state, name in names.items()}
    reasons = [stop_reason(t) for t in trials if t.state == TrialState.FAIL]
    runs = sorted((v for k, v in study.user_attrs.items()
                   if k.startswith(StudyAttr.RUN_PREFIX) and isinstance(v, dict)),
                  key=lambda r: float(r.get("started", 0.0)))
    run = runs[-1] if runs else None
    seconds = [float(t.user_attrs[TrialAttr.SECONDS]) for t in trials
               if counts_towards_n_trials(t) and TrialAttr.SECONDS in t.user_attrs]
    b = best_trial(study)
    best = None if b is None else {"number": b.number, "value": b.value, "params": dict(b.params)}
    running = [{"number": t.number, "epoch": t.user_attrs.get(TrialAttr.EPOCHS_RUN, 0),
                "worker": t.user_attrs.get(TrialAttr.WORKER)} for t in trials if t.state == TrialState.RUNNING]
    decision = study.user_attrs.get(StudyAttr.DECISION)
    return StudyStatus(study.study_name, states, reasons.count("stale"), reasons.count("interrupted"),
                       sum(counts_towards_n_trials(t) for t in trials), (run or {}).get("n_trials"), best,
                       study_metric(study), running, run, statistics.median(seconds) if seconds else None, time.time(),
                       _confirmation(study), decision if isinstance(decision, dict) else None,
                       study.user_attrs.get(StudyAttr.CONFIRM_SKIPPED), sampling_stopped(study))


def sampling_stopped(study: optuna.Study) -> str | None:
    """Why the latest run stopped sampling new trials, in words, or None (still sampling, or an older release)."""
    stopped = study.user_attrs.get(StudyAttr.SAMPLING_STOPPED)
    return str(stopped.get("detail")) if isinstance(stopped, dict) and stopped.get("detail") else None


def _confirmation(study: optuna.Study) -> dict[str, Any] | None:
    """Progress of the confirmation runs in the companion study."""
    companion = companion_study(study)
    plan = None if companion is None else companion.user_attrs.get(StudyAttr.CONFIRM_PLAN)
    if companion is None or not isinstance(plan, dict):
        return None
    runs = companion.get_trials(deepcopy=False)
    return {"note": plan.get("note", ""), "total": len(plan["finalists"]) * len(plan["seeds"]),
            "done": sum(t.state == TrialState.COMPLETE for t in runs),
            "running": sum(t.state == TrialState.RUNNING for t in runs)}


def describe_params(params: dict[str, Any]) -> str:
    """A strategy in words, every dimension it holds in declaration order: ``"m, freeze depth 0.50, lr 1.0e-03"``."""
    parts = [params["backbone"]] if "backbone" in params else []
    parts += [f"{dim.label} {dim.format(params[name])}" for name, dim in DIMENSIONS.items()
              if name in params and name != "backbone"]
    parts += [f"{name} {value}" for name, value in params.items() if name not in DIMENSIONS]
    return ", ".join(str(p) for p in parts)


def describe_decision(record: dict[str, Any]) -> list[str]:
    """The confirmation's decision (``StudyAttr.DECISION``) as the lines the command line prints."""
    margin = 100 * float(record.get("margin", 0.01))
    test = "correlated t-test over re-drawn splits" if record.get("resplit") else "paired bootstrap over val images"
    lines = [f"Confirmation ({record.get('note', '')}): {record['outcome']}, tie margin {margin:g} point(s), "
             f"{test}.", f"  {record.get('reason', '')}"]
    for f in record.get("finalists", []):
        lines.append(f"  finalist trial {f['trial']} ({f['family']}): mean {f['mean']:.4f} "
                     f"(95% interval {f['low']:.4f} to {f['high']:.4f} over {len(f['scores'])} repeats), "
                     f"{f['images_per_second']:.0f} images/s")
    lines.append(f"  recommended: trial {record['recommended_trial']}; Optuna's best val trial: "
                 f"{record.get('optuna_best_trial')}; differences under {100 * float(record['detectable']):.1f} "
                 "points are not resolved by these repeats"
                 + (f"; about {record['repeats_needed']} repeats would decide" if record.get("repeats_needed")
                    else ""))
    return lines


def _duration(seconds: float) -> str:
    hours, rest = divmod(round(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m" if hours else (f"{minutes}m {secs:02d}s" if minutes else f"{secs}s")


def format_status(status: StudyStatus) -> str:
    """The status as the lines ``autotransfer status`` prints."""
    s = status
    target = f" of {s.n_trials}" if s.n_trials else ""
    lines = [f"Study {s.study_name!r}: {s.finished}{target} trials finished",
             f"  complete {s.states['complete']}, pruned {s.states['pruned']}, failed {s.states['failed']}"
             + (f" ({s.stale} stale, {s.interrupted} interrupted: not counted)" if s.stale or s.interrupted else "")
             + f", running {s.states['running']}, waiting {s.states['waiting']}"]
    if s.best is None:
        lines.append("  best so far: none complete")
    else:
        lines.append(f"  best so far: val {s.metric} {s.best['value']:.4f} (trial {s.best['number']}): "
                     + describe_params(s.best["params"]))
    for r in s.running:
        w = r["worker"] or {}
        lines.append(f"  running: trial {r['number']}, {r['epoch']} epoch(s) done, worker {w.get('index', '?')} "
                     f"(pid {w.get('pid', '?')} on {w.get('host', '?')})")
    if s.run is not None and s.elapsed is not None:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(s.run["started"])))
        lines.append(f"  latest run: started {started} ({_duration(s.elapsed)} ago), {s.run.get('workers', 1)} "
                     f"worker(s)" + (f", --timeout {s.run['timeout']:g} s" if s.run.get("timeout") else ""))
    if s.timeout_left:
        lines.append(f"  timeout: no new trial starts after {_duration(s.timeout_left)} from now")
    if s.sampling_stopped:
        lines.append(f"  sampling stopped: {s.sampling_stopped}")
    if s.confirmation is not None and s.decision is None:
        c = s.confirmation
        lines.append(f"  confirmation: {c['done']} of {c['total']} runs complete, {c['running']} running ({c['note']})")
    if s.decision is not None:
        lines.extend(describe_decision(s.decision))
    elif s.skipped:
        lines.append(f"  confirmation skipped: {s.skipped}")
    if s.estimated_left is not None and s.n_trials is not None and s.finished < s.n_trials:
        lines.append(f"  estimated remaining: about {_duration(s.estimated_left)} ({s.n_trials - s.finished} "
                     f"trial(s) at a median {s.median_seconds:.0f} s each)")
    return "\n".join(lines)
