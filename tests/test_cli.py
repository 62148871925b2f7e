from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from sqlalchemy.exc import SQLAlchemyError

import autotransfer
from autotransfer.cli.main import main
from benchmarks.synthetic_study import make_synthetic_study
from tests.conftest import ZOO_FILE, needs_shared


def test_every_public_name_resolves() -> None:
    for name in autotransfer.__all__:
        assert getattr(autotransfer, name) is not None, name
    assert set(autotransfer.__all__) == {"__version__", *autotransfer._EXPORTS}
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        autotransfer.nope  # noqa: B018


def test_reading_a_study_does_not_import_pytorch() -> None:
    code = ("import sys, autotransfer.cli.main, autotransfer.results.report, autotransfer.storage.backends; "
            "from autotransfer.results.report import render_report; from autotransfer import load_existing_study; "
            "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"  # `autotransfer report` starts in about a second, not seven


def test_search_command_prints_progress_and_leaderboard(tmp_path: Path, test_model_zoo: Path,
                                                        tiny_space: dict[str, object],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({**tiny_space, "freeze_depth": [1.0]}))
    argv = ["search", "digits", "--space", str(space), "--zoo", str(test_model_zoo), "--n-trials", "2",
            "--epochs", "1", "--out", str(tmp_path / "out"), "--device", "cpu", "--study-name", "cli-test",
            "--batch-size", "128"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "trial 0/2 epoch 1/1" in printed and "best so far" in printed
    assert "Leaderboard (top 10)" in printed and "test_resnet.local" in printed
    assert len(pd.read_csv(tmp_path / "out" / "leaderboard.csv")) == 2


def test_bad_input_exits_1_with_a_clear_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["search", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "autotransfer: error:" in err
    bad_space = tmp_path / "s.yaml"
    bad_space.write_text("backbone: [a]\nfreeze_depth: [2]\nhead_width: [0]\nlearning_rate: {low: 0.1, high: 1}\n")
    assert main(["search", "digits", "--space", str(bad_space), "--out", str(tmp_path / "o")]) == 1
    assert "'freeze_depth' must be a fraction in [0, 1]" in capsys.readouterr().err


def test_console_script_help() -> None:
    done = subprocess.run([sys.executable, "-m", "autotransfer", "search", "--help"], capture_output=True,
                          text=True, check=True)
    for flag in ("--space", "--n-trials", "--timeout", "--epochs", "--out", "--storage", "--study-name", "--zoo",
                 "--seed", "--device", "--pruner", "--no-baseline"):
        assert flag in done.stdout
    done = subprocess.run([sys.executable, "-m", "autotransfer", "report", "--help"], capture_output=True,
                          text=True, check=True)
    for flag in ("--storage", "--study-name", "--out"):
        assert flag in done.stdout


def test_report_command_rebuilds_the_report_from_storage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    make_synthetic_study(20, storage=url, study_name="night")
    assert main(["report", "--storage", url, "--study-name", "night"]) == 0
    assert (tmp_path / "report.html").is_file()  # default: beside the SQLite file
    assert "from 20 trials of study 'night'" in capsys.readouterr().out
    assert main(["report", "--storage", url, "--out", str(tmp_path / "x" / "r.html")]) == 0  # the only study
    assert "autotransfer report: night" in (tmp_path / "x" / "r.html").read_text()


def test_report_command_refuses_a_missing_storage_or_study(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.db"
    assert main(["report", "--storage", f"sqlite:///{missing}", "--study-name", "x"]) == 1
    assert "does not exist" in capsys.readouterr().err and not missing.exists()  # not created empty
    url = f"sqlite:///{tmp_path / 'study.db'}"
    make_synthetic_study(2, storage=url, study_name="a")
    make_synthetic_study(2, storage=url, study_name="b")
    assert main(["report", "--storage", url, "--study-name", "c"]) == 1
    assert "has no study named 'c'; it holds ['a', 'b']" in capsys.readouterr().err
    assert main(["report", "--storage", url]) == 1
    assert "holds 2 studies ['a', 'b']; choose one with --study-name" in capsys.readouterr().err


def test_report_rebuilt_while_a_search_runs_shows_the_running_trial(tmp_path: Path, test_model_zoo: Path,
                                                                    tiny_space: dict[str, object]) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(tiny_space))
    url = f"sqlite:///{tmp_path / 'out' / 'study.db'}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("AUTOTRANSFER_ZOO", None)
    job = subprocess.Popen([sys.executable, "-m", "autotransfer", "search", "digits", "--space", str(space), "--zoo",
                            str(test_model_zoo), "--n-trials", "2", "--epochs", "500", "--pruner", "none", "--out",
                            str(tmp_path / "out"), "--study-name", "live", "--device", "cpu"],
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and job.poll() is None:
            trials = []
            if (tmp_path / "out" / "study.db").is_file():
                with contextlib.suppress(KeyError, SQLAlchemyError):  # the study or its tables are not made yet
                    trials = optuna.load_study(study_name="live", storage=url).get_trials()
            if any(t.state.name == "RUNNING" and t.intermediate_values for t in trials):
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"the search never reported an epoch: {job.stderr.read() if job.stderr else ''}")
        assert main(["report", "--storage", url, "--study-name", "live", "--out", str(tmp_path / "live.html")]) == 0
    finally:
        job.send_signal(signal.SIGINT)
        job.wait(timeout=60)
    html = (tmp_path / "live.html").read_text()
    assert '<tr class="RUNNING' in html and "<strong>1 running</strong>" in html
    assert '"name": "running"' in html  # its learning curve, drawn dashed
    assert job.returncode == 130
    stored = optuna.load_study(study_name="live", storage=url).trials
    assert [t.state.name for t in stored] == ["FAIL"] and stored[0].user_attrs["stop_reason"] == "interrupted"


@needs_shared
@pytest.mark.slow
def test_demo_runs_on_digits_with_the_real_zoo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("AUTOTRANSFER_ZOO", str(ZOO_FILE))
    space = tmp_path / "s.yaml"
    space.write_text(yaml.safe_dump({"backbone": ["tf_mobilenetv3_small_100.tf1_in1k"], "freeze_depth": [1.0],
                                     "head_width": [0], "learning_rate": {"low": 5e-3, "high": 1e-2}}))
    assert main(["demo", "--n-trials", "1", "--epochs", "1", "--space", str(space), "--out", str(tmp_path),
                 "--no-baseline"]) == 0
    board = pd.read_csv(tmp_path / "leaderboard.csv")
    assert board.loc[0, "state"] == "COMPLETE" and board.loc[0, "value"] > 0.7  # 10 digit classes


def test_the_command_line_prints_its_version_and_takes_quiet(capsys: pytest.CaptureFixture[str]) -> None:
    from autotransfer import __version__
    from autotransfer.cli.main import build_parser, main

    with pytest.raises(SystemExit) as stopped:
        main(["--version"])
    assert stopped.value.code == 0 and capsys.readouterr().out.strip() == f"autotransfer {__version__}"
    assert build_parser().parse_args(["status", "--storage", "sqlite:///x.db", "-q"]).quiet
