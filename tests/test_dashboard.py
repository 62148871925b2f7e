"""A study opens in optuna-dashboard unchanged: its HTTP API serves the trials and their user attributes,
from the SQLite file and from the journal file of a real search."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from autotransfer import search
from autotransfer.storage.records import TrialAttr
from tests.conftest import cli_env

pytest.importorskip("optuna_dashboard", reason="optuna-dashboard (the dashboard extra) is not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.loads(answer.read())


def _serve(storage: str) -> tuple[subprocess.Popen[bytes], str]:
    executable = shutil.which("optuna-dashboard")
    assert executable is not None, "optuna-dashboard is installed but its command is not on PATH"
    port = _free_port()
    process = subprocess.Popen([executable, storage, "--host", "127.0.0.1", "--port", str(port), "--quiet"],
                               env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            _get(f"{base}/api/studies")
            return process, base
        except (urllib.error.URLError, ConnectionError, OSError):
            if process.poll() is not None:
                raise AssertionError(process.stderr.read().decode() if process.stderr else "exited") from None
            time.sleep(0.3)
    process.kill()
    raise AssertionError("optuna-dashboard did not answer within 60 s")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_the_dashboard_reads_a_real_study(tmp_path: Path, kind: str, test_model_zoo: Path,
                                          tiny_space: dict[str, object]) -> None:
    out = tmp_path / "out"
    storage = f"sqlite:///{out / 'study.db'}" if kind == "sqlite" else str(out / "study.journal")
    result = search("digits", space=tiny_space, n_trials=3, epochs=1, zoo=test_model_zoo, device="cpu",
                    finalists=0, storage=storage, out=out)
    process, base = _serve(storage)
    try:
        studies = {s["study_name"]: s for s in _get(f"{base}/api/studies")["study_summaries"]}
        assert {"digits", "digits.baseline"} <= set(studies)  # the search and its strong baseline's runs
        detail = _get(f"{base}/api/studies/{studies['digits']['study_id']}")
        trials = detail["trials"]
        assert len(trials) == len(result.study.trials) == 3
        attrs = {a["key"]: a["value"] for a in trials[0]["user_attrs"]}
        assert attrs[TrialAttr.STOP_REASON] == "completed" and attrs[TrialAttr.BASELINE] == "True"
        assert TrialAttr.FAMILY in attrs and {p["name"] for p in trials[0]["params"]} >= {"backbone", "freeze_depth"}
    finally:
        process.terminate()
        process.wait(timeout=10)
