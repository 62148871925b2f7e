from __future__ import annotations

import importlib.util
import os
import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import ZOO_FILE, cli_env, needs_shared

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@needs_shared
@pytest.mark.slow
def test_search_api_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("AUTOTRANSFER_ZOO", str(ZOO_FILE))
    spec = importlib.util.spec_from_file_location("search_api", EXAMPLES / "search_api.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main("digits", n_trials=1, epochs=1, out=str(tmp_path))
    printed = capsys.readouterr().out
    assert "best val accuracy:" in printed
    assert len(pd.read_csv(tmp_path / "leaderboard.csv")) == 1


def _load(name: str):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@needs_shared
@pytest.mark.slow
def test_refit_api_example_runs(tmp_path: Path, tiny_hymenoptera: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("AUTOTRANSFER_ZOO", str(ZOO_FILE))
    _load("refit_api").main(str(tiny_hymenoptera), n_trials=1, epochs=1, out=str(tmp_path))
    printed = capsys.readouterr().out
    assert "refit on train (20 images), val accuracy:" in printed and "predicted:" in printed
    assert (tmp_path / "model" / "model.json").is_file()


@needs_shared
@pytest.mark.slow
def test_sklearn_estimator_example_runs(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("AUTOTRANSFER_ZOO", str(ZOO_FILE))
    _load("sklearn_estimator").main(n_images=100, n_trials=1, epochs=1, cv=2)
    printed = capsys.readouterr().out
    assert "2-fold accuracy of search + refit:" in printed and "best strategy:" in printed


@needs_shared
@pytest.mark.slow
def test_cli_example_runs(tmp_path: Path, tiny_hymenoptera: Path) -> None:
    env = {**cli_env(), "AUTOTRANSFER_ZOO": str(ZOO_FILE), "SPACE": "small", "PATH": os.environ["PATH"]}
    run = subprocess.run(["bash", str(EXAMPLES / "refit_predict_cli.sh"), str(tiny_hymenoptera), "1", "1",
                          str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "Saved the model to" in run.stdout and "Wrote 60 predictions" in run.stdout
    reported = re.search(r"Val: accuracy (\d\.\d{4})", run.stdout)
    reproduced = re.search(r"accuracy of the exported model on these 60 images: (\d\.\d{4})", run.stdout)
    assert reported and reproduced and reported.group(1) == reproduced.group(1)


def test_the_cluster_examples_parse_and_their_commands_are_valid() -> None:
    import shlex

    import yaml

    from autotransfer.cli.main import build_parser

    script = EXAMPLES / "slurm_array.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text(encoding="utf-8")
    assert "#SBATCH --array=" in text
    command = re.search(r"srun (autotransfer search .*?[^\\])\n", text, flags=re.S)
    assert command is not None
    words = shlex.split(re.sub(r"\$\{?\w+\}?", "X", command.group(1).replace("\\\n", " ")))
    args = build_parser().parse_args(words[1:])
    assert args.command == "search" and args.storage == "X" and args.finalists == 0
    (job,) = list(yaml.safe_load_all((EXAMPLES / "kubernetes_job.yaml").read_text(encoding="utf-8")))
    assert job["kind"] == "Job" and job["spec"]["parallelism"] == 8
    container = job["spec"]["template"]["spec"]["containers"][0]
    args = build_parser().parse_args([*container["command"][1:], *container["args"]])
    assert args.command == "search" and args.study_name == "flowers" and args.storage == "$(AUTOTRANSFER_DB)"
    assert {e["name"] for e in container["env"]} >= {"AUTOTRANSFER_DB", "AUTOTRANSFER_ZOO"}
