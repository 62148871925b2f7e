"""The report's plots, as plotly figures turned into plain JSON-ready dicts.

Optuna draws the optimization history and the hyperparameter importances
(``optuna.visualization``). Drawn here, because Optuna has no equivalent: learning curves with
each trial's state (Optuna's ``plot_intermediate_values`` draws one unmarked trace per trial,
which neither marks pruned trials nor stays light at 1,000 trials), value against cost with
the Pareto front (Optuna's Pareto plots need a multi-objective study) and the confusion matrix.

Every user-controlled string placed in a figure (class and backbone names) goes through
:func:`html.escape`: plotly renders a subset of HTML tags in labels, and its entity decoding
turns the escaped text back into the literal characters on screen.
"""

from __future__ import annotations

import html
import json
import warnings
from typing import Any

import numpy as np
import optuna
import pandas as pd
import plotly.graph_objects as go

from autotransfer.results.report.evidence import pareto_front

__all__ = ["IMPORTANCE_EVALUATOR", "confusion_figure", "cost_figure", "curves_figure", "history_figure",
           "importance_figure", "importance_left_out", "to_plain"]

IMPORTANCE_EVALUATOR = (
    "fANOVA (Hutter, Hoos and Leyton-Brown, ICML 2014) through Optuna's FanovaImportanceEvaluator "
    "(a 64-tree random forest, seed 0), fitted on the complete trials' objective values"
)
_STATE_STYLE = {  # state: (colour, dash, label)
    "COMPLETE": ("#2a7a2a", "solid", "complete"),
    "PRUNED": ("#c77c00", "dot", "pruned"),
    "RUNNING": ("#1f5fbf", "dash", "running"),
    "FAIL": ("#b22222", "dashdot", "failed"),
}
_LAYOUT = {"template": "plotly_white", "margin": {"l": 60, "r": 20, "t": 60, "b": 50}, "height": 420,
           "legend": {"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 0}}


def to_plain(fig: go.Figure) -> dict[str, Any]:
    """A figure as plain Python data (lists, dicts), ready for Jinja2's ``tojson``."""
    plain: dict[str, Any] = json.loads(fig.to_json())
    return plain


def history_figure(study: optuna.Study, metric: str) -> go.Figure | None:
    """Optuna's optimization history (objective value and best so far per trial), or None."""
    if not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        return None
    fig = optuna.visualization.plot_optimization_history(study, target_name=f"val {metric}")
    return fig.update_layout(**_LAYOUT, title=None)


def importance_left_out(study: optuna.Study) -> list[str]:
    """The parameters Optuna's importance evaluators leave out: sampled in some complete trials, not all.

    ``optuna.importance`` works on the intersection of the complete trials' search spaces, so a
    conditional dimension (LP-FT, only sampled when some of the backbone trains) drops out of the plot.
    """
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        return []
    seen = [set(t.params) for t in complete]
    return sorted(seen[0].union(*seen[1:]) - seen[0].intersection(*seen[1:]))


def importance_figure(study: optuna.Study, metric: str) -> tuple[go.Figure | None, str]:
    """Optuna's hyperparameter importance plot with the fANOVA evaluator.

    Returns:
        ``(figure, "")``, or ``(None, reason)`` when Optuna cannot compute importances (fewer
        than two complete trials, or no parameter varied).
    """
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fig = optuna.visualization.plot_param_importances(study, evaluator=evaluator,
                                                              target_name=f"val {metric}")
    except (ValueError, RuntimeError) as err:
        return None, f"Importances are not available yet: {err}"
    if not fig.data:
        return None, "Importances are not available yet: fewer than two complete trials with varied parameters."
    return fig.update_layout(**_LAYOUT, title=None), ""


def curves_figure(curves: pd.DataFrame, best: int | None, metric: str) -> go.Figure:
    """Val metric per epoch for every trial, styled by state; pruned trials end in a cross.

    Args:
        curves: From :func:`~autotransfer.results.report.evidence.learning_curves`.
        best: The best trial's number, drawn on top.
        metric: The metric's name, for the axis.
    """
    fig = go.Figure()
    for state, (colour, dash, label) in _STATE_STYLE.items():
        part = curves[curves["state"] == state]
        if part.empty:
            continue
        x, y, text = _broken_lines(part)
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=label, text=text, hoverinfo="text+y",
                                 line={"color": colour, "dash": dash, "width": 1}, marker={"size": 4},
                                 opacity=0.7, connectgaps=False))
    pruned_ends = curves[curves["state"] == "PRUNED"].groupby("number").tail(1)
    if not pruned_ends.empty:
        fig.add_trace(go.Scatter(x=pruned_ends["epoch"], y=pruned_ends["value"], mode="markers",
                                 name="pruned here", marker={"symbol": "x", "size": 10, "color": "#c77c00"},
                                 text=[f"trial {n} pruned after epoch {e}" for n, e in
                                       zip(pruned_ends["number"], pruned_ends["epoch"], strict=True)],
                                 hoverinfo="text+y"))
    for number, name, colour, width in ((best, "best", "#0b3d0b", 4),
                                        (_baseline_number(curves), "baseline", "#555555", 3)):
        part = curves[curves["number"] == number] if number is not None else curves.iloc[0:0]
        if not part.empty:
            fig.add_trace(go.Scatter(x=part["epoch"], y=part["value"], mode="lines+markers",
                                     name=f"{name} (trial {number})", line={"color": colour, "width": width}))
    fig.update_layout(**_LAYOUT, xaxis_title="epoch", yaxis_title=f"val {metric}",
                      xaxis={"dtick": 1}, hovermode="closest")
    return fig


def _baseline_number(curves: pd.DataFrame) -> int | None:
    rows = curves[curves["baseline"]]
    return int(rows["number"].iloc[0]) if not rows.empty else None


def _broken_lines(part: pd.DataFrame) -> tuple[list[Any], list[Any], list[Any]]:
    """One trace for many trials: each trial's points, then a None gap (fast at 1,000 trials)."""
    x: list[Any] = []
    y: list[Any] = []
    text: list[Any] = []
    for number, rows in part.groupby("number", sort=True):
        label = f"trial {number}: {html.escape(str(rows['family'].iloc[0]))}"
        x += [*rows["epoch"].tolist(), None]
        y += [*rows["value"].tolist(), None]
        text += [label] * len(rows) + [None]
    return x, y, text


def cost_figure(board: pd.DataFrame, cost: str, title: str, metric: str) -> go.Figure | None:
    """Complete trials' objective value against a cost column, Pareto front marked.

    Each point's label names its trial, family and, where the space searches it, its input size
    (the largest cost lever on a CPU).

    Args:
        board: The leaderboard.
        cost: ``"seconds"`` or ``"trainable_params"``.
        title: Axis title of the cost.
        metric: The metric's name, for the axis.

    Returns:
        The figure, or None when no complete trial has that cost recorded.
    """
    done = board[board["state"] == "COMPLETE"]
    frame = pd.DataFrame({"number": done["number"], "family": done["family"].astype(str),
                          "value": pd.to_numeric(done["value"], errors="coerce"),
                          "cost": pd.to_numeric(done[cost], errors="coerce")}).dropna()
    if frame.empty:
        return None
    frame["front"] = pareto_front(frame["value"], frame["cost"])
    sizes = done["params_input_size"].reindex(frame.index) if "params_input_size" in done else None
    text = [f"trial {n}: {html.escape(f)}" + (f", {int(px)} px" if sizes is not None and pd.notna(px) else "")
            for n, f, px in zip(frame["number"], frame["family"],
                                sizes if sizes is not None else [None] * len(frame), strict=True)]
    fig = go.Figure(go.Scatter(x=frame["cost"], y=frame["value"], mode="markers", name="complete trial",
                               text=text, hoverinfo="text+x+y", marker={"color": "#7a9cc6", "size": 7}))
    front = frame[frame["front"]].sort_values("cost")
    fig.add_trace(go.Scatter(x=front["cost"], y=front["value"], mode="lines+markers", name="Pareto front",
                             line={"shape": "hv", "color": "#b22222"}, marker={"size": 10, "color": "#b22222"},
                             text=[t for t, f in zip(text, frame["front"], strict=True) if f], hoverinfo="text+x+y"))
    log_x = bool(frame["cost"].min() > 0 and frame["cost"].max() / frame["cost"].min() > 20)
    fig.update_layout(**_LAYOUT, xaxis_title=title, yaxis_title=f"val {metric}",
                      xaxis_type="log" if log_x else "linear")
    return fig


def confusion_figure(classes: list[str], matrix: np.ndarray, title: str) -> go.Figure:
    """A heatmap of a confusion matrix (rows: true class, columns: predicted class).

    Args:
        classes: Class names (``K``).
        matrix: Counts of shape ``(K, K)``.
        title: Figure title.
    """
    names = [html.escape(c) for c in classes]
    show_counts = len(classes) <= 30
    fig = go.Figure(go.Heatmap(z=matrix.tolist(), x=names, y=names, colorscale="Blues",
                               text=matrix.tolist() if show_counts else None,
                               texttemplate="%{text}" if show_counts else None,
                               hovertemplate="true %{y}<br>predicted %{x}<br>%{z} images<extra></extra>"))
    size = min(900, max(360, 40 * len(classes) + 160))
    fig.update_layout(**{**_LAYOUT, "height": size}, title={"text": title, "y": 0.98}, xaxis_title="predicted",
                      yaxis_title="true",
                      yaxis={"autorange": "reversed"}, xaxis={"type": "category"})
    fig.update_yaxes(type="category")
    return fig
