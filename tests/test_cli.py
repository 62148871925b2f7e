from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

import autotransfer
from autotransfer.cli import main
from tests.conftest import ZOO_FILE, needs_shared


def test_every_public_name_resolves() -> None:
    for name in autotransfer.__all__:
        assert getattr(autotransfer, name) is not None, name


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
                 "--seed", "--device", "--pruner"):
        assert flag in done.stdout


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
