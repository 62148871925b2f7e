from __future__ import annotations

from pathlib import Path

import optuna

from autotransfer import render_report, write_outputs

EVIL = "<img src=x onerror=alert(1)>"


def test_user_strings_are_escaped_and_files_written_atomically(tmp_path: Path) -> None:
    study = optuna.create_study(direction="maximize", study_name=f"study {EVIL}")
    study.set_user_attr("autotransfer.config", {"dataset": {"name": EVIL, "classes": ["ants", EVIL],
                                                            "counts": {"train": 4, "val": 2}}})
    study.set_user_attr("autotransfer.excluded", [[f"/data/{EVIL}.jpg", "OSError: broken"]])

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_categorical("backbone", [EVIL])
        trial.set_user_attr("stop_reason", f"error: {EVIL}")
        return 0.5

    study.optimize(objective, n_trials=1)
    html = render_report(study)
    assert EVIL not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    write_outputs(study, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"leaderboard.csv", "report.html"}  # no temporary left
