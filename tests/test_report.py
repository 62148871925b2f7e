from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from plotly.offline import get_plotlyjs
from sklearn.metrics import classification_report

from autotransfer import write_report
from autotransfer.results.report import (
    OutputWriter,
    collect,
    family_ranking,
    pareto_front,
    per_class_metrics,
    render_report,
    write_outputs,
)
from autotransfer.results.report import render as render_module
from autotransfer.results.report.evidence import summary
from benchmarks.synthetic_study import make_synthetic_study

EVIL = "<img src=x onerror=alert(1)>"
SECTIONS = ["summary", "ranking", "leaderboard", "curves", "importance", "cost", "best-trial", "baseline"]


def _figures(html: str) -> dict[str, object]:
    match = re.search(r"const FIGURES = (.*);\n", html)
    assert match is not None
    figures: dict[str, object] = json.loads(match.group(1))
    return figures


def test_pareto_front_keeps_only_undominated_trials() -> None:
    value = pd.Series([0.9, 0.8, 0.95, 0.7, 0.9, None], index=[10, 11, 12, 13, 14, 15])
    cost = pd.Series([50.0, 10.0, 200.0, 5.0, 60.0, 1.0], index=value.index)
    front = pareto_front(value, cost)
    assert front.to_dict() == {10: True, 11: True, 12: True, 13: True, 14: False, 15: False}


def test_per_class_metrics_agree_with_scikit_learn() -> None:
    labels, predictions = [0, 0, 1, 1, 2, 2, 2], [0, 1, 1, 1, 2, 0, 2]
    table, matrix = per_class_metrics(["a", "b", "c"], labels, predictions)
    reference = classification_report(labels, predictions, output_dict=True, zero_division=0)
    for row in table.to_dict(orient="records"):
        expected = reference[str(["a", "b", "c"].index(row["class"]))]
        assert row["precision"] == pytest.approx(expected["precision"])
        assert row["recall"] == pytest.approx(expected["recall"])
        assert row["f1"] == pytest.approx(expected["f1-score"])
    assert matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 2]]
    with pytest.raises(ValueError, match="7 labels but 2 predictions"):
        per_class_metrics(["a", "b", "c"], labels, [0, 1])


def test_family_ranking_scores_complete_trials_only() -> None:
    study = make_synthetic_study(60)
    ev = collect(study)
    table = family_ranking(ev.board)
    assert table["trials"].sum() == 60
    complete = ev.board[ev.board["state"] == "COMPLETE"]
    top = table.iloc[0]
    assert top["best"] == pytest.approx(complete["value"].max())
    assert top["family"] == complete.iloc[0]["family"]
    assert list(table["best"].dropna()) == sorted(table["best"].dropna(), reverse=True)
    assert {"backbone", "transfer", "head"} <= set(table.columns)


def test_summary_measures_the_lead_with_a_paired_test() -> None:
    study = optuna.create_study(direction="maximize")
    labels = [0, 1] * 20
    study.set_user_attr("autotransfer.split", {"val": [[f"{k}.jpg", y] for k, y in enumerate(labels)]})
    right, wrong = list(labels), [1 - y for y in labels]
    for family, predictions in (("A", right[:30] + wrong[30:]), ("B", wrong[:6] + right[6:28] + wrong[28:])):
        trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
        trial.set_user_attr("family", family)
        trial.set_user_attr("val_predictions", predictions)
        study.tell(trial, float(np.mean(np.array(predictions) == np.array(labels))))
    lead = summary(collect(study))["runner_up"]
    assert lead["number"] == 1 and lead["gap"] == pytest.approx(0.75 - 0.55)
    assert (lead["only_best"], lead["only_other"], lead["gap_images"]) == (8, 0, 8)  # images 0-5 and 28-29
    assert lead["p_value"] == pytest.approx(2 * 0.5**8)


def test_report_fills_every_section_and_shows_running_trials() -> None:
    study = make_synthetic_study(60)
    html = render_report(study)
    for section in SECTIONS:
        assert f'<section id="{section}">' in html
    assert set(_figures(html)) == {"history", "curves", "importance", "cost_seconds", "cost_params",
                                   "confusion_val", "confusion_test"}
    running = [t.number for t in study.trials if t.state.name == "RUNNING"]
    assert running and len(re.findall(r'<tr class="RUNNING', html)) == len(running)
    assert f"<strong>{len(running)} running</strong>" in html
    assert "Test split: final pick only" in html and "never used for selection" in html
    assert "Evaluator: fANOVA" in html
    page = html.replace(get_plotlyjs(), "")  # what is left after the inlined plotly.js bundle
    assert html.count(get_plotlyjs()) == 1 and len(page) < len(html) / 5
    assert "<script src" not in page and "<link" not in page and "http:" not in page and "https:" not in page


def test_report_of_an_empty_study_says_so() -> None:
    study = optuna.create_study(direction="maximize", study_name="empty")
    html = render_report(study)
    assert "No trial has completed yet" in html and _figures(html) == {}


def test_user_strings_are_escaped(tmp_path: Path) -> None:
    study = optuna.create_study(direction="maximize", study_name=f"study {EVIL}")
    study.set_user_attr("autotransfer.config", {"dataset": {"name": EVIL, "classes": ["ants", EVIL],
                                                            "counts": {"train": 4, "val": 2}}})
    study.set_user_attr("autotransfer.split", {"val": [["a.jpg", 0], [f"{EVIL}.jpg", 1]]})
    study.set_user_attr("autotransfer.excluded", [[f"/data/{EVIL}.jpg", "OSError: broken"]])

    def objective(trial: optuna.Trial) -> float:
        backbone = trial.suggest_categorical("backbone", [EVIL, "b"])
        trial.set_user_attr("family", f"{backbone} / linear probe / linear head")
        trial.set_user_attr("stop_reason", f"error: {EVIL}")
        trial.set_user_attr("val_predictions", [0, 1])
        trial.report(0.5, 1)
        return 0.5 + trial.number / 10

    study.optimize(objective, n_trials=3)
    html = render_report(study)
    assert EVIL not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    figure = _figures(html)["confusion_val"]
    assert figure["data"][0]["x"] == ["ants", "&lt;img src=x onerror=alert(1)&gt;"]  # plotly shows it as text
    write_outputs(study, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"leaderboard.csv", "report.html"}  # no temporary left


def test_report_write_is_atomic_and_readable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    study = make_synthetic_study(8)
    target = write_report(study, tmp_path / "r" / "report.html")
    before = target.read_text()
    assert stat.S_IMODE(target.stat().st_mode) & 0o044  # not mkstemp's 0600: others can read the report

    def crash(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        write_report(study, target)
    assert target.read_text() == before
    assert [p.name for p in target.parent.iterdir()] == ["report.html"]


def test_output_writer_refreshes_the_report_at_most_every_n_seconds(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    study = make_synthetic_study(5)
    renders: list[int] = []
    real = render_module.render_report
    monkeypatch.setattr(render_module, "render_report", lambda s: renders.append(1) or real(s))
    writer = OutputWriter(tmp_path, every=3600)
    for trial in study.trials:
        writer(study, trial)
    assert len(renders) == 1 and (tmp_path / "leaderboard.csv").is_file()
    writer.final(study)
    assert len(renders) == 2


def test_evidence_keeps_test_figures_for_the_final_pick_only() -> None:
    study = make_synthetic_study(30)
    ev = collect(study)
    assert ev.test is not None and ev.best is not None
    study.set_user_attr("autotransfer.test", {**study.user_attrs["autotransfer.test"], "trial": ev.best.number + 1})
    assert collect(study).test is None
    assert "No test figures yet for the current best trial" in render_report(study)


def test_a_failing_report_does_not_end_the_search(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    study = make_synthetic_study(3)

    def broken(study: optuna.Study) -> str:
        raise RuntimeError("plotting bug")

    monkeypatch.setattr(render_module, "render_report", broken)
    writer = OutputWriter(tmp_path, every=0)
    writer(study, study.trials[-1])
    writer.final(study)
    assert "plotting bug" in caplog.text and "autotransfer report --storage" in caplog.text
    assert (tmp_path / "leaderboard.csv").is_file() and not (tmp_path / "report.html").exists()


def test_the_importance_plot_names_the_conditional_dimensions_it_leaves_out(tmp_path: Path) -> None:
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    from autotransfer.results.report.figures import importance_left_out

    study = optuna.create_study(direction="maximize")
    depth = CategoricalDistribution([0.0, 1.0])
    rate, lpft = FloatDistribution(1e-4, 1e-2, log=True), CategoricalDistribution([False, True])
    for i in range(6):
        params: dict[str, object] = {"freeze_depth": float(i % 2), "learning_rate": 1e-3 * (i + 1)}
        dists: dict[str, object] = {"freeze_depth": depth, "learning_rate": rate}
        if i % 2 == 0:  # LP-FT is sampled only when some of the backbone trains
            params["lp_ft"], dists["lp_ft"] = bool(i % 4), lpft
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=0.5 + 0.01 * i))
    assert importance_left_out(study) == ["lp_ft"]
    html = write_report(study, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "Left out of the plot: lp_ft" in html
    assert importance_left_out(optuna.create_study()) == []


def test_a_screen_stored_by_an_earlier_release_is_shown_with_what_it_lacks() -> None:
    study = optuna.create_study(direction="maximize", study_name="screened")
    old = {"score": "logme", "k": 1, "kept": ["a"], "candidates": [
        {"rank": 1, "backbone": "a", "resolution": 224, "n_features": 8, "logme": 0.1, "h_score": 0.5, "knn": 0.9,
         "linear_probe": 0.8, "images": 10, "seconds": 1.0, "kept": True},
        {"rank": 2, "backbone": "b", "resolution": 224, "n_features": 8, "logme": -0.2, "h_score": 0.4, "knn": 0.95,
         "linear_probe": 0.7, "images": 10, "seconds": 1.0, "kept": False}]}
    study.set_user_attr("autotransfer.screen", old)
    html = render_report(study)
    section = html[html.index('<section id="screen">'):html.index('<section id="space">')]
    assert "Stored by an earlier release" in section and "<strong>logme</strong>: a." in section
    study.set_user_attr("autotransfer.screen", {**old, "methods": {"knn": "leave-one-out, k = 5"}})
    section = render_report(study)
    assert "Stored by an earlier release" not in section and "<strong>knn</strong>: leave-one-out, k = 5" in section
