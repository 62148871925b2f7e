"""Overnight jobs: SIGKILL and restart, SIGTERM, stale trials, parallel workers, PostgreSQL.

These run the real command line in child processes on scikit-learn's digits (real scans of
handwritten digits) with timm's tiny ``test_resnet``.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.exc import SQLAlchemyError

from autotransfer import ConfigError, search
from autotransfer.cli.main import main
from autotransfer.storage.backends import make_storage
from autotransfer.storage.records import counts_towards_n_trials as counts_towards_budget
from autotransfer.storage.records import stop_reason
from autotransfer.study.recovery import finished_trials, reclaim_stale_trials
from tests.conftest import cli_env


def _command(space: Path, zoo: Path, out: Path, *extra: str, n_trials: int = 8, epochs: int = 2) -> list[str]:
    return [sys.executable, "-m", "autotransfer", "search", "digits", "--space", str(space), "--zoo", str(zoo),
            "--n-trials", str(n_trials), "--epochs", str(epochs), "--out", str(out), "--study-name", "night",
            "--device", "cpu", "--batch-size", "64", *extra]


def _trials(storage: str, name: str = "night") -> list[FrozenTrial]:
    with contextlib.suppress(KeyError, SQLAlchemyError, ValueError):  # not created yet
        return optuna.load_study(study_name=name, storage=storage).get_trials()
    return []


def _wait_for(condition: Callable[[], bool], job: subprocess.Popen[str], what: str, limit: float = 120) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if condition():
            return
        if job.poll() is not None:
            err = job.stderr.read() if job.stderr else ""
            pytest.fail(f"the search exited ({job.returncode}) before {what}: {err}")
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def _best(trials: list[FrozenTrial]) -> float:
    return max((t.value for t in trials if t.state == TrialState.COMPLETE and t.value is not None), default=-1.0)


def _assert_clean(trials: list[FrozenTrial], n_trials: int) -> None:
    counted = [t for t in trials if counts_towards_budget(t)]
    assert len(counted) == n_trials, [(t.number, t.state.name, stop_reason(t)) for t in trials]
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    params = [tuple(sorted(t.params.items())) for t in counted]
    assert len(set(params)) == len(params), "two finished trials ran the same strategy"


@pytest.mark.slow
def test_sigkill_at_three_random_moments_then_resume(tmp_path: Path, test_model_zoo: Path,
                                                     tiny_space_file: Path) -> None:
    out, n_trials, rng = tmp_path / "out", 8, random.Random(os.getpid())
    storage = f"sqlite:///{out / 'study.db'}"
    best_so_far, killed_mid_trial = -1.0, 0
    for kill in range(3):
        job = subprocess.Popen(_command(tiny_space_file, test_model_zoo, out, n_trials=n_trials), env=cli_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        before = len(_trials(storage))
        # A random moment while a trial of this run is training (the case that leaves it RUNNING).
        _wait_for(lambda before=before: any(t.state == TrialState.RUNNING and t.number >= before  # type: ignore[misc]
                                            for t in _trials(storage)), job, f"kill {kill}: a running trial")
        time.sleep(rng.uniform(0.0, 2.0))
        job.kill()
        job.wait(timeout=30)
        trials = _trials(storage)
        killed_mid_trial += any(t.state == TrialState.RUNNING for t in trials)
        assert _best(trials) >= best_so_far
        best_so_far = _best(trials)
    assert killed_mid_trial >= 1
    done = subprocess.run(_command(tiny_space_file, test_model_zoo, out, n_trials=n_trials), env=cli_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    trials = _trials(storage)
    _assert_clean(trials, n_trials)
    assert _best(trials) >= best_so_far
    stale = [t for t in trials if stop_reason(t) == "stale"]
    assert len(stale) >= killed_mid_trial
    retried = {t.system_attrs.get("failed_trial") for t in trials if counts_towards_budget(t)}
    assert {t.number for t in stale} & retried, "a stale trial's strategy was not retried"


def test_sigterm_stops_within_seconds_and_rewrites_the_outputs(tmp_path: Path, test_model_zoo: Path,
                                                               tiny_space_file: Path) -> None:
    out = tmp_path / "out"
    storage = f"sqlite:///{out / 'study.db'}"
    job = subprocess.Popen(_command(tiny_space_file, test_model_zoo, out, "--pruner", "none", epochs=500),
                           env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: any(t.intermediate_values for t in _trials(storage)), job, "the first epoch")
    time.sleep(0.5)
    sent = time.monotonic()
    job.send_signal(signal.SIGTERM)
    _, err = job.communicate(timeout=30)
    assert time.monotonic() - sent < 10
    assert job.returncode == 143 and "Stopped by SIGTERM" in err
    trials = _trials(storage)
    assert [(t.state, stop_reason(t)) for t in trials] == [(TrialState.FAIL, "interrupted")]
    report = out / "report.html"
    assert report.stat().st_mtime >= time.time() - (time.monotonic() - sent) - 1  # written after the signal
    assert "interrupted" in report.read_text()


@pytest.mark.slow
def test_four_workers_on_a_journal_file(tmp_path: Path, test_model_zoo: Path, tiny_space_file: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run(_command(tiny_space_file, test_model_zoo, out, "--workers", "4", n_trials=20),
                          env=cli_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert (out / "study.journal").is_file() and not (out / "study.db").exists()
    study = optuna.load_study(study_name="night",
                              storage=optuna.storages.JournalStorage(
                                  optuna.storages.journal.JournalFileBackend(str(out / "study.journal"))))
    trials = study.get_trials()
    _assert_clean(trials, 20)
    assert finished_trials(study) == 20
    workers = {(t.user_attrs["worker"]["index"], t.user_attrs["worker"]["pid"]) for t in trials}
    assert {index for index, _ in workers} == {0, 1, 2, 3} and len({pid for _, pid in workers}) == 4
    assert "Workers exited with [0, 0, 0, 0]" in done.stderr
    assert main(["status", "--storage", str(out / "study.journal")]) == 0


def test_sqlite_with_several_workers_is_refused_with_what_to_use(tmp_path: Path, test_model_zoo: Path,
                                                                 tiny_space: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match=r"journal file.*postgresql://"):
        search("digits", space=tiny_space, zoo=test_model_zoo, storage=f"sqlite:///{tmp_path / 's.db'}", workers=2)
    assert not (tmp_path / "s.db").exists()  # refused before anything was created
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "study.db").write_bytes(b"")
    with pytest.raises(ConfigError, match="cannot take 2 worker processes"):
        search("digits", space=tiny_space, zoo=test_model_zoo, out=tmp_path / "o", workers=2)
    with pytest.raises(ConfigError, match="'workers' must be a positive integer"):
        search("digits", space=tiny_space, zoo=test_model_zoo, out=tmp_path / "o", workers=0)


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_start_up_reclaims_only_trials_of_dead_processes(tmp_path: Path, kind: str) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}" if kind == "sqlite" else str(tmp_path / "s.journal")
    study = optuna.create_study(storage=make_storage(url), direction="maximize")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    import socket

    for pid in (int(dead.stdout), os.getppid()):
        trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
        trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": pid, "index": 0})
        trial.set_user_attr("stop_reason", "running")
    assert reclaim_stale_trials(study) == [0]
    trials = study.get_trials()
    assert [(t.state, stop_reason(t)) for t in trials] == [
        (TrialState.FAIL, "stale"), (TrialState.RUNNING, "running"), (TrialState.WAITING,
                                                                      "waiting (retry of stale trial 0)")]
    assert trials[2].params == trials[0].params


POSTGRES = os.environ.get("AUTOTRANSFER_TEST_POSTGRES", "postgresql+psycopg://autotransfer:autotransfer@127.0.0.1:5432/autotransfer")


def _postgres_or_skip() -> str:
    try:
        import sqlalchemy

        with sqlalchemy.create_engine(POSTGRES, connect_args={"connect_timeout": 3}).connect():
            return POSTGRES
    except Exception as err:  # driver missing or server unreachable
        reason = f"no PostgreSQL server reachable at {POSTGRES} ({type(err).__name__}); .ci/run starts one"
        if os.environ.get("AUTOTRANSFER_REQUIRE_POSTGRES"):
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.mark.slow
def test_postgres_two_hosts_finish_the_study_and_retry_a_killed_workers_trial(
        tmp_path: Path, test_model_zoo: Path, tiny_space_file: Path) -> None:
    url, name, n_trials = _postgres_or_skip(), f"pg-{uuid.uuid4().hex[:8]}", 10

    def start(out: str) -> subprocess.Popen[str]:
        cmd = _command(tiny_space_file, test_model_zoo, tmp_path / out, "--storage", url, "--heartbeat-interval",
                       "1", n_trials=n_trials, epochs=3)
        cmd[cmd.index("night")] = name
        return subprocess.Popen(cmd, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    victim = start("a")
    _wait_for(lambda: any(t.state == TrialState.RUNNING and t.intermediate_values for t in _trials(url, name)),
              victim, "the first worker's first epoch")
    survivor = start("b")
    victim.kill()
    victim.wait(timeout=30)
    killed = [t.number for t in _trials(url, name) if t.state == TrialState.RUNNING]
    _, err = survivor.communicate(timeout=600)
    assert survivor.returncode == 0, err
    trials = _trials(url, name)
    _assert_clean(trials, n_trials)
    assert killed and all(stop_reason(trials[n]) == "stale" for n in killed)
    retries = [t for t in trials if t.system_attrs.get("failed_trial") in killed]
    assert retries and all(counts_towards_budget(t) for t in retries)
    assert {t.user_attrs["worker"]["pid"] for t in trials} == {victim.pid, survivor.pid}  # one study, two workers
    assert all(t.user_attrs["worker"]["pid"] == survivor.pid for t in retries)


_OPEN_AT = """
import sys, time
import optuna
from autotransfer.storage.backends import make_storage
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
optuna.create_study(storage=make_storage(sys.argv[1]), study_name="race", load_if_exists=True)
"""


def test_processes_opening_a_new_sqlite_file_at_once_all_succeed(tmp_path: Path) -> None:
    # A search starting while `autotransfer status` (or a test) polls its new study.db: Optuna
    # creates the schema in several transactions, and without a retry one side failed with
    # "UNIQUE constraint failed: alembic_version" or "table studies already exists".
    for round_ in range(3):
        url = f"sqlite:///{tmp_path / f'race{round_}.db'}"
        start = time.time() + 4
        jobs = [subprocess.Popen([sys.executable, "-c", _OPEN_AT, url, str(start)], env=cli_env(),
                                 stderr=subprocess.PIPE, text=True) for _ in range(6)]
        errors = [job.stderr.read() if job.stderr else "" for job in jobs if job.wait(timeout=120) != 0]
        assert not errors, errors[0]
        assert optuna.get_all_study_names(storage=url) == ["race"]
