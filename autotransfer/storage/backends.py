"""Where studies live: SQLite, a journal file, or a database server, and how to read them back.

Three storages:

* ``sqlite:///PATH``: the embedded default, one worker process at a time (SQLite with several
  writing processes fails with "database is locked", so more workers are refused).
* a file path (``OUT/study.journal``): Optuna's ``JournalStorage`` with a ``JournalFileBackend``,
  for several worker processes on one host.
* ``postgresql://...`` (or ``mysql://...``): Optuna's ``RDBStorage`` with heartbeats, for workers
  on several hosts; a trial whose worker stops beating for ``grace_period`` seconds is failed
  as stale and retried once more through ``RetryHeartbeatStaleTrialCallback``.

Optuna's ``load_study`` on a SQLite URL whose file does not exist silently creates an empty
database; here a missing file, an unknown study name or an unreadable storage is refused with
the names that would be accepted. Nothing here imports PyTorch.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc
from optuna.exceptions import ExperimentalWarning
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend

from autotransfer.errors import ConfigError, describe
from autotransfer.storage.records import COMPANION_SUFFIXES

__all__ = [
    "check_workers",
    "load_existing_study",
    "make_storage",
    "sqlite_path",
    "stale_retry_callback",
    "storage_file",
    "storage_kind",
]

MAX_STALE_RETRIES = 3  # a strategy that keeps killing its worker (host OOM killer) is given up after this


def stale_retry_callback() -> RetryHeartbeatStaleTrialCallback:
    """Optuna's callback that re-enqueues a stale trial's parameters (at most 3 times per strategy)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback(max_retry=MAX_STALE_RETRIES)


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///PATH`` URL, or None for other URLs (and in-memory SQLite)."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or url[len(prefix):] in ("", ":memory:"):
        return None
    return Path(url[len(prefix):])


def storage_file(url: str) -> Path | None:
    """The file a storage lives in: a journal file's path or a SQLite database's; None for servers."""
    return Path(url).expanduser() if storage_kind(url) == "journal" else sqlite_path(url)


def storage_kind(url: str | None) -> str:
    """``"memory"``, ``"sqlite"``, ``"journal"`` (a file path) or ``"rdb"`` (a database server URL)."""
    if url is None:
        return "memory"
    if url.startswith("sqlite:"):
        return "sqlite"
    if "://" in url:
        return "rdb"
    return "journal"


def check_workers(url: str | None, workers: int) -> None:
    """Refuse storages that cannot take ``workers`` processes, before anything runs.

    Raises:
        ConfigError: ``workers`` is not a positive integer, or several workers were asked of
            SQLite or of an in-memory study.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(describe("workers", "a positive integer", workers))
    if workers == 1:
        return
    kind = storage_kind(url)
    if kind == "sqlite":
        raise ConfigError(
            f"SQLite ({url}) cannot take {workers} worker processes: concurrent writers fail with "
            "'database is locked'. Use a journal file on this host (--storage OUT/study.journal, the "
            "default for a new --out with --workers > 1) or PostgreSQL (--storage postgresql://...), "
            "or run with --workers 1.")
    if kind == "memory":
        raise ConfigError(f"{workers} worker processes need a storage they can share: pass --out (a journal "
                          "file is used) or --storage.")


def make_storage(url: str | None, *, heartbeat_interval: int = 60) -> optuna.storages.BaseStorage | None:
    """Open the storage named by ``url`` for a search.

    Args:
        url: ``sqlite:///PATH``, a database server URL (``postgresql://user:pw@host/db``), a
            journal file path, or None (in memory).
        heartbeat_interval: Seconds between heartbeats of a running trial on a database server;
            a trial silent for twice that long is failed as stale and retried (Optuna's
            ``RDBStorage(heartbeat_interval, grace_period, heartbeat_stale_trial_callback)``).

    Returns:
        What ``optuna.create_study(storage=...)`` accepts.

    Raises:
        ConfigError: The journal path is a SQLite file, the server cannot be reached, or its
            driver is not installed.
    """
    kind = storage_kind(url)
    if url is None:
        return None
    if kind == "sqlite":
        return _open_rdb(url)
    if kind == "journal":
        path = Path(url).expanduser()
        if path.is_file() and path.read_bytes()[:16] == b"SQLite format 3\x00":
            raise ConfigError(f"{url!r} is a SQLite database, not a journal file; pass it as sqlite:///{path}.")
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if isinstance(heartbeat_interval, bool) or not isinstance(heartbeat_interval, int) or heartbeat_interval < 1:
        raise ConfigError(describe("heartbeat_interval", "a positive whole number of seconds", heartbeat_interval))
    return _open_rdb(url, heartbeat_interval=heartbeat_interval, grace_period=2 * heartbeat_interval,
                     heartbeat_stale_trial_callback=stale_retry_callback(), engine_kwargs={"pool_pre_ping": True})


# Tries at opening a database whose schema another process may be creating at the same moment.
_SCHEMA_RACE_TRIES = 5


def _open_rdb(url: str, **kwargs: Any) -> RDBStorage:
    """``RDBStorage(url, **kwargs)``, retried while another process is creating the same schema.

    Optuna creates the tables and stamps the Alembic version in separate transactions, so two
    processes opening a new database at once (a search starting while ``autotransfer status`` or a
    second worker polls it) can collide: one gets ``UNIQUE constraint failed: alembic_version`` or
    ``table ... already exists``. Both are harmless once the other process has finished, so the
    open is retried (Optuna has no lock for this; it is written here for that reason).

    Raises:
        ConfigError: The driver is missing, or the database cannot be opened.
    """
    for attempt in range(_SCHEMA_RACE_TRIES):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                return RDBStorage(url, **kwargs)
        except ImportError as err:
            raise ConfigError(f"The storage {_redact(url)!r} needs a database driver: {err}. For PostgreSQL, "
                              "pip install 'autotransfer[postgres]' (psycopg 3).") from err
        except sqlalchemy.exc.SQLAlchemyError as err:
            if _schema_race(err) and attempt + 1 < _SCHEMA_RACE_TRIES:
                time.sleep(0.2 * (attempt + 1))
                continue
            raise ConfigError(f"Cannot open the storage {_redact(url)!r}: {type(err).__name__}: "
                              f"{str(err).splitlines()[0]}") from err
    raise AssertionError("unreachable")  # the loop returns or raises


def _schema_race(err: sqlalchemy.exc.SQLAlchemyError) -> bool:
    """Whether ``err`` comes from two processes creating the same Optuna schema at once."""
    if isinstance(err, sqlalchemy.exc.IntegrityError):
        return True
    text = str(err).lower()
    return isinstance(err, sqlalchemy.exc.OperationalError) and ("already exists" in text or "locked" in text)


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return url


def load_existing_study(storage: str, study_name: str | None = None) -> optuna.Study:
    """Load a study that must already exist.

    Args:
        storage: ``sqlite:///OUT/study.db``, a journal file path, or a database server URL.
        study_name: The study's name; may be omitted when the storage holds exactly one study (its
            confirmation study, ``<name>.confirm``, does not count).

    Returns:
        The study (trials are read live, so a running study shows its running trials).

    Raises:
        ConfigError: The SQLite or journal file does not exist, the storage cannot be read, or the
            study name is not in it (the message lists the names it holds).
    """
    path = storage_file(storage)
    if path is not None and not path.is_file():
        raise ConfigError(f"The storage {storage!r} names the file {str(path)!r}, which does not exist; "
                          "pass the sqlite:/// URL of an existing study.db or the path of a study.journal.")
    try:
        opened: Any = make_storage(storage)
        names = optuna.get_all_study_names(storage=opened)
    except (sqlalchemy.exc.SQLAlchemyError, ValueError, ImportError) as err:
        raise ConfigError(f"Cannot read the storage {_redact(storage)!r}: {err}") from err
    if study_name is None:
        names = [n for n in names if not any(n.endswith(suffix) and n.removesuffix(suffix) in names
                                             for suffix in COMPANION_SUFFIXES)]
        if len(names) != 1:
            raise ConfigError(f"The storage {_redact(storage)!r} holds {len(names)} studies {sorted(names)}; "
                              "choose one with --study-name.")
        study_name = names[0]
    if study_name not in names:
        raise ConfigError(f"The storage {_redact(storage)!r} has no study named {study_name!r}; "
                          f"it holds {sorted(names) or 'no studies'}.")
    return optuna.load_study(study_name=study_name, storage=opened)
