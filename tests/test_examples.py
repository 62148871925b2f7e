from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import ZOO_FILE, needs_shared

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
