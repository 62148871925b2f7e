"""Open an existing study from its storage, read-only in intent, with errors a person can act on.

Optuna's ``load_study`` on a SQLite URL whose file does not exist silently creates an empty
database; here a missing file, an unknown study name or an unreadable storage is refused with
the names that would be accepted.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import sqlalchemy.exc

from .errors import ConfigError

__all__ = ["CONFIG_ATTR", "EXCLUDED_ATTR", "SPLIT_ATTR", "TEST_ATTR", "load_existing_study", "sqlite_path"]

# The study user attributes autotransfer writes; the report reads them back.
CONFIG_ATTR = "autotransfer.config"  # dataset, split method, space, budget, baseline
SPLIT_ATTR = "autotransfer.split"  # {"train"|"val"|"test": [[key, label], ...]}
TEST_ATTR = "autotransfer.test"  # {"trial", "metrics", "predictions"} of the final pick on test
EXCLUDED_ATTR = "autotransfer.excluded"  # [[path, reason], ...] of undecodable files


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///PATH`` URL, or None for other URLs (and in-memory SQLite)."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or url[len(prefix):] in ("", ":memory:"):
        return None
    return Path(url[len(prefix):])


def load_existing_study(storage: str, study_name: str | None = None) -> optuna.Study:
    """Load a study that must already exist.

    Args:
        storage: An Optuna storage URL (``sqlite:///OUT/study.db``, ``postgresql://...``).
        study_name: The study's name; may be omitted when the storage holds exactly one study.

    Returns:
        The study (trials are read live, so a running study shows its running trials).

    Raises:
        ConfigError: The SQLite file does not exist, the storage cannot be read, or the study name
            is not in it (the message lists the names it holds).
    """
    path = sqlite_path(storage)
    if path is not None and not path.is_file():
        raise ConfigError(f"The storage {storage!r} names the file {str(path)!r}, which does not exist; "
                          "pass the sqlite:/// URL of an existing study.db (search writes OUT/study.db).")
    try:
        names = optuna.get_all_study_names(storage=storage)
    except (sqlalchemy.exc.SQLAlchemyError, ValueError, ImportError) as err:
        raise ConfigError(f"Cannot read the storage {storage!r}: {err}") from err
    if study_name is None:
        if len(names) != 1:
            raise ConfigError(f"The storage {storage!r} holds {len(names)} studies {sorted(names)}; "
                              "choose one with --study-name.")
        study_name = names[0]
    if study_name not in names:
        raise ConfigError(f"The storage {storage!r} has no study named {study_name!r}; "
                          f"it holds {sorted(names) or 'no studies'}.")
    return optuna.load_study(study_name=study_name, storage=storage)
