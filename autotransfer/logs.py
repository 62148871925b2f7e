"""Logging set-up of the processes autotransfer starts itself: the command line and its worker processes.

The library only logs through ``logging.getLogger(__name__)``; handlers are installed here, by
the command line and by each worker process, never on import.
"""

from __future__ import annotations

import logging

import optuna

__all__ = ["configure_logging"]


def configure_logging(level: int = logging.INFO, *, prefix: str = "") -> None:
    """Plain message lines at ``level``; Optuna's own per-trial lines off (autotransfer prints its own).

    Args:
        level: The root logger's level.
        prefix: Put before every line (``"[worker 1] "`` in a worker process).
    """
    logging.basicConfig(level=level, format=f"{prefix}%(message)s")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    logging.getLogger("timm").setLevel(logging.WARNING)
