"""A first HTML report and the leaderboard CSV, rebuilt from the study's storage only.

The page is self-contained (no scripts, no external fetch), rendered by Jinja2 with
autoescaping on, so class names, paths and error messages appear as text. Files are written
atomically: a temporary file in the same folder, then ``os.replace``; a crash mid-write leaves
the previous file intact.
"""

from __future__ import annotations

import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jinja2
import optuna
import pandas as pd
from optuna.trial import TrialState

from .leaderboard import leaderboard

__all__ = ["atomic_write_text", "render_report", "write_outputs"]

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("autotransfer", "templates"),
    autoescape=True,  # select_autoescape would not escape a .html.j2 template
    undefined=jinja2.StrictUndefined,
)


def _num(value: Any, spec: str = "%.4f") -> str:
    """Format a number for the page; missing values (None, NaN, NA) read as "n/a"."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "n/a" if value is None or value is pd.NA else str(value)
    return "n/a" if number != number else spec % number


_ENV.filters["num"] = _num
_TABLE_COLUMNS = ["rank", "number", "state", "value", "params_backbone", "params_freeze_depth",
                  "params_head_width", "params_learning_rate", "val_accuracy", "val_macro_f1",
                  "epochs", "seconds", "trainable_params", "stop_reason"]


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace`` (atomic on POSIX)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def render_report(study: optuna.Study, board: pd.DataFrame | None = None) -> str:
    """Render the HTML report of a study.

    Args:
        study: The study (any storage; running trials are shown as running).
        board: Its leaderboard, if already built.

    Returns:
        The HTML page as a string.
    """
    board = leaderboard(study) if board is None else board
    config: dict[str, Any] = study.user_attrs.get("autotransfer.config", {})
    states = board["state"].value_counts().to_dict() if len(board) else {}
    complete = board[board["state"] == TrialState.COMPLETE.name]
    best = complete.iloc[0].to_dict() if len(complete) else None
    runner_up = complete.iloc[1].to_dict() if len(complete) > 1 else None
    table = board[_TABLE_COLUMNS].rename(columns=lambda c: c.removeprefix("params_"))
    return _ENV.get_template("report.html.j2").render(
        study_name=study.study_name,
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        dataset=config.get("dataset", {}),
        budget=config.get("budget", {}),
        split=config.get("split", {}),
        states=states,
        total_seconds=float(pd.to_numeric(board["seconds"], errors="coerce").sum()) if len(board) else 0.0,
        best=best,
        runner_up=runner_up,
        columns=list(table.columns),
        rows=table.astype(object).where(table.notna(), "").to_dict(orient="records"),
        excluded=study.user_attrs.get("autotransfer.excluded", []),
    )


def write_outputs(study: optuna.Study, out: Path) -> None:
    """Write ``out/leaderboard.csv`` and ``out/report.html`` from the study, atomically."""
    board = leaderboard(study)
    atomic_write_text(out / "leaderboard.csv", board.to_csv(index=False))
    atomic_write_text(out / "report.html", render_report(study, board))
