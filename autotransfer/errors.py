"""Errors raised by autotransfer.

Every user-facing error follows one template, after scikit-learn and Optuna:
"The '<what>' <must be ...>. Got <value> instead." Each class subclasses a builtin
(`ValueError`, `FileNotFoundError`) so callers can catch either.
"""

from __future__ import annotations

__all__ = [
    "AutotransferError",
    "BadImageError",
    "ConfigError",
    "DataError",
    "ModelError",
    "StudyMismatchError",
    "TrialFailed",
    "TrialTimeout",
    "WeightsNotFoundError",
    "describe",
]


class AutotransferError(Exception):
    """Base class of every error autotransfer raises on purpose."""


class ConfigError(AutotransferError, ValueError):
    """A search space, budget or option has a value that is not accepted."""


class DataError(AutotransferError, ValueError):
    """A dataset is missing, empty, or cannot be split for training."""


class ModelError(AutotransferError, ValueError):
    """A saved model folder is incomplete, altered, or does not describe a model this version can build."""


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


class TrialTimeout(TrialFailed):
    """A trial ran past its time limit (``--trial-timeout``).

    Args:
        reason: The stop reason (``"timeout: ..."``).
        epochs_done: Epochs completed (and reported) before the limit was hit.
    """

    def __init__(self, reason: str, epochs_done: int) -> None:
        super().__init__(reason)
        self.epochs_done = epochs_done


class BadImageError(AutotransferError, OSError):
    """An image that decoded when the dataset was scanned cannot be read any more (changed on disk).

    Args:
        key: The sample key (path relative to the dataset root).
        path: The file's full path.
        cause: What the decoder said.
    """

    def __init__(self, key: str, path: str, cause: str) -> None:
        super().__init__(f"bad image {path}: {cause}")
        self.key, self.path, self.cause = key, path, cause


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
