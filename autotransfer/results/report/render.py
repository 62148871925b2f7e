"""Render the report to one self-contained HTML file, and write it atomically.

The page embeds plotly.js once (from the installed ``plotly`` package, so it works offline and
fetches nothing) and passes every figure's data through Jinja2's ``tojson``. Jinja2 runs with
autoescaping on: class names, paths, parameter values, error messages and the study name are
shown as text. Files are written through a temporary file in the same folder and
``os.replace`` (atomic on POSIX): a crash mid-render leaves the previous report intact.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
import markupsafe
import optuna
import pandas as pd
from optuna.trial import FrozenTrial
from plotly.offline import get_plotlyjs

from autotransfer._version import __version__
from autotransfer.files import atomic_write_text
from autotransfer.results.leaderboard import leaderboard
from autotransfer.results.report.evidence import (
    Evidence,
    baseline_comparison,
    collect,
    family_ranking,
    learning_curves,
    per_class_metrics,
    summary,
)
from autotransfer.results.report.figures import (
    IMPORTANCE_EVALUATOR,
    confusion_figure,
    cost_figure,
    curves_figure,
    history_figure,
    importance_figure,
    importance_left_out,
    to_plain,
)
from autotransfer.results.report.strong_baseline import strong_baseline_comparison
from autotransfer.results.status import sampling_stopped
from autotransfer.settings import SCREEN_SCORES
from autotransfer.space.dimensions import DIMENSIONS
from autotransfer.space.strategy import CORE
from autotransfer.storage.output_folder import OutputFolder
from autotransfer.storage.records import StudyAttr, TrialAttr

__all__ = ["OutputWriter", "atomic_write_text", "render_report", "write_outputs", "write_report"]

logger = logging.getLogger(__name__)

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("autotransfer.results.report", "templates"),
    autoescape=True,  # select_autoescape would not escape a .html.j2 template
    undefined=jinja2.StrictUndefined,
)
_TRIAL_COLUMNS = {TrialAttr.EPOCHS_RUN: "epochs", TrialAttr.SECONDS: "seconds",
                  TrialAttr.TRAINABLE_PARAMS: "trainable params", TrialAttr.IMAGES_PER_SECOND: "images/s",
                  TrialAttr.STOP_REASON: "stop reason"}


def _leaderboard_columns(board: pd.DataFrame) -> dict[str, str]:
    """Leaderboard column -> header: every dimension the board holds, by its declared label."""
    dims = {f"params_{name}": dim.label for name, dim in DIMENSIONS.items() if f"params_{name}" in board}
    return {"rank": "rank", "number": "trial", "state": "state", "value": "value", **dims, **_TRIAL_COLUMNS}


def _recipe(params: dict[str, Any]) -> str:
    """The recipe dimensions of a strategy, as ``", weight decay 0.05"`` ("" when it samples none)."""
    return "".join(f", {dim.label} {dim.format(params[name])}" for name, dim in DIMENSIONS.items()
                   if name in params and name not in CORE)


def _num(value: Any, spec: str = "%.4f") -> str:
    """Format a number for the page; missing values (None, NaN, NA) read as "n/a"."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "n/a" if value is None or value is pd.NA else str(value)
    return "n/a" if number != number else spec % number


def _count(value: Any) -> str:
    """Format a count with thousands separators ("n/a" when missing)."""
    text = _num(value, "%.0f")
    return text if text == "n/a" else f"{int(float(text)):,}"


_ENV.filters["num"] = _num
_ENV.filters["count"] = _count
_ENV.filters["recipe"] = _recipe


@cache
def _plotly_js() -> markupsafe.Markup:
    # plotly's own minified bundle, the file plotly's to_html(include_plotlyjs=True) inlines.
    return markupsafe.Markup(get_plotlyjs())


def render_report(study: optuna.Study | Evidence) -> str:
    """Render the HTML report of a study from its storage.

    Works at any time: while trials run (shown as running), after the study ends, after a crash.

    Args:
        study: The study (one made by :func:`autotransfer.search` fills every section), or its
            :class:`~autotransfer.results.report.Evidence` when already collected.

    Returns:
        The HTML page as a string (about 5 MB, most of it plotly.js).
    """
    ev = study if isinstance(study, Evidence) else collect(study)
    figures: dict[str, Any] = {}
    notes: dict[str, str] = {}

    def add(key: str, fig: Any, note: str = "") -> None:
        if fig is not None:
            figures[key] = to_plain(fig)
        elif note:
            notes[key] = note

    study = ev.study  # one consistent in-memory snapshot for every section
    add("history", history_figure(study, ev.metric), "No trial has completed yet.")
    curves = learning_curves(ev.trials)
    add("curves", curves_figure(curves, ev.best.number if ev.best else None, ev.metric) if len(curves) else None,
        "No trial has reported an epoch yet.")
    importance, reason = importance_figure(study, ev.metric)
    add("importance", importance, reason)
    add("cost_seconds", cost_figure(ev.board, "seconds", "seconds per trial", ev.metric), "No complete trial yet.")
    add("cost_params", cost_figure(ev.board, "trainable_params", "trainable parameters", ev.metric),
        "No complete trial yet.")
    best_val, best_test = _best_trial_sections(ev, add)
    refit = _refit_section(ev, add)
    headers = _leaderboard_columns(ev.board)
    board = ev.board.rename(columns=headers)
    return _ENV.get_template("report.html.j2").render(
        study_name=study.study_name, version=__version__, optuna_version=optuna.__version__,
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        config=ev.config, dataset=ev.config.get("dataset", {}), budget=ev.config.get("budget", {}),
        split=ev.config.get("split", {}), metric=ev.metric, summary=summary(ev),
        families=family_ranking(ev.board, _confirmed_families(ev.decision)).to_dict(orient="records"),
        decision=ev.decision, skipped=ev.study.user_attrs.get(StudyAttr.CONFIRM_SKIPPED),
        hygiene=ev.study.user_attrs.get(StudyAttr.HYGIENE) or {},
        sampling_stopped=sampling_stopped(ev.study),
        optuna_best=ev.optuna_best.number if ev.optuna_best is not None else None,
        columns=list(headers.values()), rows=_records(board, list(headers.values())),
        baseline_flags=ev.board["baseline"].fillna(False).astype(bool).tolist(),
        best_number=ev.best.number if ev.best else None, importance_evaluator=IMPORTANCE_EVALUATOR,
        importance_left_out=importance_left_out(study),
        best_val=best_val, best_test=best_test, refit=refit, baseline=baseline_comparison(ev),
        strong=strong_baseline_comparison(ev),
        excluded=ev.excluded, screen=ev.screen, screen_scores=SCREEN_SCORES, figures=figures, notes=notes,
        plotly_js=_plotly_js(),
    )


def _records(frame: pd.DataFrame, columns: list[str]) -> list[dict[str, Any]]:
    table = frame[columns]
    return [{str(k): v for k, v in row.items()}
            for row in table.astype(object).where(table.notna(), None).to_dict(orient="records")]


def _confirmed_families(decision: dict[str, Any] | None) -> dict[str, float] | None:
    """Each confirmed finalist family's mean score over the repeats."""
    if decision is None:
        return None
    return {str(f["family"]): float(f["mean"]) for f in decision.get("finalists", [])}


def _best_trial_sections(ev: Evidence, add: Any) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Section 7: per-class val metrics and confusion of the best trial; test only for the final pick."""
    if ev.best is None:
        return None, None
    val = _per_class(ev, ev.best, ev.val_labels, ev.predictions.get(ev.best.number), "val split")
    if val is not None:
        add("confusion_val", val.pop("figure"))
    test = ev.test
    test_section = None
    if test is not None:
        split = ev.study.user_attrs.get(StudyAttr.SPLIT, {})
        labels = [int(label) for _, label in split.get("test", [])]
        test_section = _per_class(ev, ev.best, labels, test.get("predictions"), "test split") or {}
        if "figure" in test_section:
            add("confusion_test", test_section.pop("figure"))
        test_section["metrics"] = test.get("metrics", {})
    return val, test_section


def _refit_section(ev: Evidence, add: Any) -> dict[str, Any] | None:
    """The latest refit's held-out figures (per class when its predictions were stored)."""
    record = ev.refit
    if record is None:
        return None
    split_name = record.get("eval_split")
    labels = [int(label) for _, label in ev.study.user_attrs.get(StudyAttr.SPLIT, {}).get(split_name or "", [])]
    trial = next((t for t in ev.trials if t.number == record.get("trial")), None)
    section = (_per_class(ev, trial, labels, record.get("predictions"), f"{split_name} split, refit on "
                          f"{record.get('train_on')}") if trial else None)
    section = section or {}
    if "figure" in section:
        add("confusion_refit", section.pop("figure"))
    is_best = ev.best is not None and ev.best.number == record.get("trial")
    return {**record, **section, "is_best": is_best}


def _per_class(ev: Evidence, trial: FrozenTrial, labels: list[int], predictions: list[int] | None,
               split: str) -> dict[str, Any] | None:
    if not labels or predictions is None or len(predictions) != len(labels) or not ev.classes:
        return None
    table, matrix = per_class_metrics(ev.classes, labels, predictions)
    title = f"Confusion matrix, {split}, trial {trial.number}"
    return {"rows": table.to_dict(orient="records"), "n": len(labels),
            "figure": confusion_figure(ev.classes, matrix, title)}


def write_report(study: optuna.Study, path: str | Path) -> Path:
    """Render the report of ``study`` and write it atomically to ``path``.

    Returns:
        The path written.
    """
    target = Path(path)
    atomic_write_text(target, render_report(study))
    return target


def write_outputs(study: optuna.Study, out: str | Path) -> None:
    """Write ``out/leaderboard.csv`` and ``out/report.html`` from one read of the study, atomically."""
    folder = OutputFolder(Path(out))
    ev = collect(study)
    atomic_write_text(folder.leaderboard, ev.board.to_csv(index=False))
    atomic_write_text(folder.report, render_report(ev))


class OutputWriter:
    """Study callback that keeps ``leaderboard.csv`` current and refreshes ``report.html``.

    The leaderboard is rewritten after every trial; the report after the first trial and then
    whenever ``every`` seconds, and at least ten times the last render's duration, have passed
    since the last render (so refreshing costs at most about a tenth of the search, even at 1,000
    trials), and always on :meth:`final`.

    Args:
        out: The output folder.
        every: Minimum seconds between two report renders.
    """

    def __init__(self, out: Path, every: float = 30.0) -> None:
        self.out, self.every = out, every
        self._last: float | None = None
        self._render_seconds = 0.0

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self._last is None or time.monotonic() - self._last >= max(self.every, 10 * self._render_seconds):
            self.final(study)
        else:
            self._guarded(lambda: atomic_write_text(OutputFolder(self.out).leaderboard,
                                                    leaderboard(study).to_csv(index=False)))

    def final(self, study: optuna.Study) -> None:
        """Write both files now."""
        start = time.monotonic()
        self._guarded(lambda: write_outputs(study, self.out))
        self._last = time.monotonic()
        self._render_seconds = self._last - start

    def _guarded(self, write: Callable[[], object]) -> None:
        # The outputs are by-products of the study, which stays in storage: a failure to write
        # them (disk full, a plotting bug) must not end a night's search. It is logged with
        # the command that rebuilds them.
        try:
            write()
        except Exception as err:
            logger.error("Could not write the outputs in %s (%s: %s); the trials are safe in the study's storage: "
                         "rebuild the report with `autotransfer report --storage URL --study-name NAME`.",
                         self.out, type(err).__name__, err)
