"""The output folder of a search: where its storage, cache, leaderboard and report live (no PyTorch import).

One :class:`OutputFolder` names every path, so the search, the report command, refit and the
CLI agree on them::

    OUT/study.db          SQLite storage (one worker), or
    OUT/study.journal     Optuna journal file (several workers on one host)
    OUT/cache/            on-disk feature cache (cache/features/*.safetensors)
    OUT/leaderboard.csv   one row per trial, rewritten after every trial
    OUT/report.html       the self-contained report
    OUT/screen.csv        the ranked backbones of ``autotransfer screen``
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from autotransfer.errors import ConfigError
from autotransfer.storage.backends import check_workers, storage_file

__all__ = ["OutputFolder"]


@dataclass(frozen=True)
class OutputFolder:
    """The paths of one output folder.

    Attributes:
        path: The folder.
    """

    path: Path

    @classmethod
    def of_storage(cls, url: str) -> OutputFolder | None:
        """The folder a storage file lives in (SQLite or journal); None for database servers and memory."""
        file = storage_file(url)
        return None if file is None else cls(file.parent)

    @property
    def sqlite(self) -> Path:
        """``study.db``."""
        return self.path / "study.db"

    @property
    def journal(self) -> Path:
        """``study.journal``."""
        return self.path / "study.journal"

    @property
    def cache(self) -> Path:
        """``cache/``: the on-disk feature cache."""
        return self.path / "cache"

    @property
    def leaderboard(self) -> Path:
        """``leaderboard.csv``."""
        return self.path / "leaderboard.csv"

    @property
    def screen(self) -> Path:
        """``screen.csv``: the ranked candidates of ``autotransfer screen``."""
        return self.path / "screen.csv"

    @property
    def report(self) -> Path:
        """``report.html``."""
        return self.path / "report.html"

    def storage_url(self, workers: int) -> str:
        """The folder's storage: its existing ``study.journal`` or ``study.db``, else chosen by ``workers``.

        Raises:
            ConfigError: ``workers > 1`` and the folder's study is in SQLite.
        """
        if self.journal.is_file() or (workers > 1 and not self.sqlite.is_file()):
            return str(self.journal.resolve())
        url = f"sqlite:///{self.sqlite.resolve()}"
        check_workers(url, workers)
        return url

    def create(self) -> None:
        """Create the folder and check that files can be written in it.

        Raises:
            ConfigError: The folder cannot be created, or a file cannot be written in it.
        """
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.path, prefix=".write-probe-"):
                pass
        except OSError as err:
            raise ConfigError(f"The output folder {str(self.path)!r} cannot be written: "
                              f"{os.strerror(err.errno) if err.errno else err}. Pass --out with a folder you "
                              "can write to.") from err
