"""Live progress on a terminal: feature extraction, the batches of an epoch, the trials of a search.

The library reports progress through :func:`bar`; nothing is drawn unless the process enabled it
(:func:`enable`, which the command line calls when its standard error is a terminal), so library
users, log files and batch jobs see no control characters. Bars are ``tqdm`` bars on standard error
that disappear when done (``leave=False``); lines printed meanwhile go through :func:`write`, which
keeps them above the bars. Worker processes (``--workers N``) never draw: only the launching process
owns the terminal, and it shows the trials done against ``--n-trials``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

__all__ = ["Bar", "bar", "enable", "enabled", "write"]

_STATE = {"enabled": False}


class Bar(Protocol):
    """What :func:`bar` yields: ``update(n)`` advances it by ``n`` units, ``set_postfix_str(text)`` labels it."""

    def update(self, n: float = 1) -> Any: ...

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> Any: ...


class _Silent:
    def update(self, n: float = 1) -> None:
        return None

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        return None


def enable(on: bool = True) -> None:
    """Draw progress bars in this process (the command line: only when standard error is a terminal)."""
    _STATE["enabled"] = bool(on)


def enabled() -> bool:
    """Whether this process draws progress bars."""
    return _STATE["enabled"]


@contextmanager
def bar(description: str, total: float | None, unit: str = "img", *, leave: bool = False) -> Iterator[Bar]:
    """A progress bar for the ``with`` block (a silent stand-in unless :func:`enable` was called).

    Args:
        description: What is counted (``"features mobilenetv2_100"``, ``"epoch 2/3"``).
        total: Units expected (None: unknown).
        unit: The unit's name (``"img"``, ``"batch"``, ``"trial"``); tqdm adds the rate and the time left.
        leave: Keep the finished bar on screen.
    """
    if not _STATE["enabled"]:
        yield _Silent()
        return
    from tqdm.auto import tqdm

    # A terminal that reports no size (a fresh pseudo-terminal, some CI consoles) would hide the bars: tqdm
    # reads 0 rows and draws nothing
    size: dict[str, Any] = {"dynamic_ncols": True} if _columns() else {"ncols": 100, "nrows": 24}
    with tqdm(total=total, desc=description, unit=unit, leave=leave, file=sys.stderr, smoothing=0.1,
              **size) as shown:
        yield shown


def _columns() -> int:
    """The width standard error's terminal reports (0 when it reports none)."""
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return 0


def write(line: str) -> None:
    """Print ``line`` to standard output, above any bar being drawn."""
    if _STATE["enabled"]:
        from tqdm.auto import tqdm

        tqdm.write(line, file=sys.stdout)
    else:
        print(line, flush=True)
