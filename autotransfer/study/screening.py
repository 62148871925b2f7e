"""The backbone screen of a search: run it once per study, store it, and reuse it when the study resumes.

A screened study stores the screen's configuration (``config["screen"]``: score, K and the space's
backbones, compared on resume like the rest of the configuration) and its result
(``StudyAttr.SCREEN``). A resumed study keeps the stored kept backbones: screening again would cost the
extraction, and a re-ranking could change the space mid-study. A resume that asks for another screen
is refused before anything is extracted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import optuna

from autotransfer.data.dataset import ImageDataset
from autotransfer.errors import StudyMismatchError
from autotransfer.models.zoo import Zoo
from autotransfer.screen.scores import METHODS
from autotransfer.screen.screen import ScreenResult, screen
from autotransfer.settings import SearchSettings
from autotransfer.space.search_space import SearchSpace
from autotransfer.storage.records import ScreenKey, StudyAttr, read_config
from autotransfer.training.runtime import Runtime

__all__ = ["StoredScreen", "check_screen_target", "screen_space", "store_screen", "stored_screen"]

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class StoredScreen:
    """What an existing study holds of a screen.

    Attributes:
        configured: The study holds a search's configuration (False: only ``autotransfer screen
            --storage`` wrote to it so far).
        entry: The configuration's ``screen`` entry (None: searched without a screen, or not configured).
        record: The stored screen (``StudyAttr.SCREEN``), or None.
    """

    configured: bool
    entry: dict[str, Any] | None
    record: dict[str, Any] | None


def stored_screen(storage: str | optuna.storages.BaseStorage | None, study_name: str) -> StoredScreen | None:
    """The screen stored with an existing study of this name, or None when there is no such study."""
    if storage is None:
        return None
    try:
        stored = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return None
    config = read_config(stored)
    entry = config.get(ScreenKey.CONFIG)
    record = stored.user_attrs.get(StudyAttr.SCREEN)
    return StoredScreen(bool(config), entry if isinstance(entry, dict) else None,
                        record if isinstance(record, dict) else None)


def store_screen(storage: str | optuna.storages.BaseStorage, study_name: str, result: ScreenResult) -> None:
    """Store a screen of ``autotransfer screen --storage`` in a study that a later search can rank again.

    Raises:
        StudyMismatchError: The study already holds a search (see :func:`check_screen_target`).
    """
    check_screen_target(storage, study_name)
    study = optuna.create_study(storage=storage, study_name=study_name, direction="maximize", load_if_exists=True)
    study.set_user_attr(StudyAttr.SCREEN, result.record())


def check_screen_target(storage: str | optuna.storages.BaseStorage, study_name: str) -> None:
    """Refuse to store a screen in a search's study (its screen belongs to its configuration).

    Raises:
        StudyMismatchError: The study exists and holds a search's configuration.
    """
    stored = stored_screen(storage, study_name)
    if stored is not None and stored.configured:
        raise StudyMismatchError(f"Study {study_name!r} already holds a search, whose screen (if any) is part of "
                                 "its configuration; store this screen under another --study-name.")


def _reusable(record: dict[str, Any] | None, space: SearchSpace, score: str) -> bool:
    """Whether a screen ``autotransfer screen`` stored covers exactly the space's backbones, once each, at
    their own resolution, with today's estimators and the score asked for."""
    if not record or record.get(ScreenKey.METHODS) != METHODS:
        return False
    rows = record.get(ScreenKey.CANDIDATES) or []
    names = [row.get("backbone") for row in rows]
    return (sorted(names) == sorted(space.backbones) and all(row.get(score) is not None for row in rows)
            and not record.get(ScreenKey.RESOLUTIONS))


def _comparable(entry: dict[str, Any]) -> tuple[Any, Any, list[str]]:
    return entry.get(ScreenKey.SCORE), entry.get(ScreenKey.K), sorted(entry.get(ScreenKey.BACKBONES) or [])


def screen_space(dataset: ImageDataset, space: SearchSpace, settings: SearchSettings, zoo: Zoo, runtime: Runtime,
                 stored: StoredScreen | None = None) -> tuple[ScreenResult | None, dict[str, Any], SearchSpace]:
    """Screen the space's backbones, or reuse the stored screen of the study being resumed.

    Args:
        dataset: The split dataset.
        space: The search space before the screen.
        settings: Its ``screen`` (K) and ``screen_score`` are used.
        zoo: The local zoo.
        runtime: Caches (the screen's features are the linear-probe trials' cache).
        stored: :func:`stored_screen` of the study, or None for a new study.

    Returns:
        ``(result, configuration entry, narrowed space)``; the result is None when the stored one is reused.

    Raises:
        StudyMismatchError: The study exists and was created without a screen, or with another score,
            K or backbones (raised before any image is read).
    """
    entry = {ScreenKey.SCORE: settings.screen_score, ScreenKey.K: settings.screen,
             ScreenKey.BACKBONES: space.backbones}
    if stored is not None and not stored.configured and _reusable(stored.record, space, settings.screen_score):
        assert stored.record is not None
        ranked = ScreenResult.from_record(stored.record, settings.screen_score, settings.screen)
        logger.info("Screen: ranked the screen stored by autotransfer screen by %s, keeping %s",
                    settings.screen_score, ", ".join(ranked.kept))
        return ranked, entry, space.with_backbones(ranked.kept)
    if stored is not None and stored.configured:
        stored_entry, record = stored.entry, stored.record
        if stored_entry is None:
            raise StudyMismatchError("The study was created without a backbone screen; resume it without --screen "
                                     "(or start a new study with another --study-name or --out).")
        if _comparable(stored_entry) != _comparable(entry):
            raise StudyMismatchError(
                f"The study was screened by {stored_entry.get(ScreenKey.SCORE)!r} keeping "
                f"{stored_entry.get(ScreenKey.K)} of {stored_entry.get(ScreenKey.BACKBONES)}; asked: "
                f"{entry[ScreenKey.SCORE]!r} keeping {entry[ScreenKey.K]} of {entry[ScreenKey.BACKBONES]}. Resume "
                f"it with --screen {stored_entry.get(ScreenKey.K)} --screen-score {stored_entry.get(ScreenKey.SCORE)} "
                "and the same space.")
        if record and record.get(ScreenKey.KEPT):
            kept = list(record[ScreenKey.KEPT])
            logger.info("Screen: reusing the stored screen by %s, which kept %s", settings.screen_score,
                        ", ".join(kept))
            return None, entry, space.with_backbones(kept)
    screened = screen(dataset, space.backbones, score=settings.screen_score, k=settings.screen, zoo=zoo,
                      device=settings.device, runtime=runtime, seed=settings.seed)
    logger.info("Screen by %s kept %s", settings.screen_score, ", ".join(screened.kept))
    return screened, entry, space.with_backbones(screened.kept)
