"""Errors raised by autotransfer.

Every user-facing error follows one template, after scikit-learn and Optuna:
"The '<what>' <must be ...>. Got <value> instead." Each class subclasses a builtin
(`ValueError`, `FileNotFoundError`) so callers can catch either.
"""

from __future__ import annotations

__all__ = [
    "AutotransferError",
    "ConfigError",
    "DataError",
    "StudyMismatchError",
    "TrialFailed",
    "WeightsNotFoundError",
    "describe",
]


class AutotransferError(Exception):
    """Base class of every error autotransfer raises on purpose."""


class ConfigError(AutotransferError, ValueError):
    """A search space, budget or option has a value that is not accepted."""


class DataError(AutotransferError, ValueError):
    """A dataset is missing, empty, or cannot be split for training."""


class WeightsNotFoundError(AutotransferError, FileNotFoundError):
    """Pretrained weights for a backbone could not be found anywhere that was tried."""


class StudyMismatchError(AutotransferError, ValueError):
    """A stored study was created with a different dataset, split, space or budget."""


class TrialFailed(AutotransferError, RuntimeError):
    """One trial could not finish (diverged, bad image, out of memory); the study goes on.

    Args:
        reason: Short machine-readable reason, stored as the trial's ``stop_reason``.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def describe(what: str, expected: str, got: object) -> str:
    """Format the project's one error-message template.

    Args:
        what: The name of the bad key, option or argument.
        expected: What would be accepted, phrased to follow "must be".
        got: The value that was given.

    Returns:
        ``"The '<what>' must be <expected>. Got <got!r> instead."``
    """
    return f"The '{what}' must be {expected}. Got {got!r} instead."
