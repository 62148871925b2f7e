"""Live progress on a terminal: feature extraction, the batches of an epoch, the trials of a search.

The library reports progress through :func:`bar`; nothing is drawn unless the process enabled it
(:func:`enable`, which the command line calls when its standard error is a terminal), so library
users, log files and batch jobs see no control characters. Bars are ``tqdm`` bars on standard error
that disappear when done (``leave=False``); lines printed meanwhile go through :func:`write`, which
keeps them above the bars. Worker processes (``--workers N``) never draw: only the launching process
owns the terminal. A worker :func:`forward` s its bars, lines and finished trials as events over a
multiprocessing queue, and the launcher's :func:`relay` draws them (one bar per worker and task,
labelled with the worker) and advances its trials bar.
"""

from __future__ import annotations

import itertools
import os
import queue as queues
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

__all__ = ["Bar", "advance", "bar", "enable", "enabled", "forward", "relay", "write"]

_STATE: dict[str, Any] = {"enabled": False, "sink": None, "named": {}}
_SEND_EVERY = 0.25  # seconds between a forwarded bar's updates: enough for a person, few events
_KEYS = itertools.count()


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


class _Forwarded:
    """A bar in a worker process: its progress goes to the launcher as ``("update", key, n)`` events."""

    def __init__(self, sink: Any, key: tuple[str, int]) -> None:
        self.sink, self.key, self.pending, self.sent = sink, key, 0.0, time.monotonic()

    def update(self, n: float = 1) -> None:
        self.pending += n
        if time.monotonic() - self.sent >= _SEND_EVERY:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.sink.put(("update", self.key, self.pending))
        self.pending, self.sent = 0.0, time.monotonic()

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.sink.put(("postfix", self.key, s))


def forward(sink: Any, label: str) -> None:
    """In a worker process: send bars, lines and finished trials to the launcher instead of drawing.

    Args:
        sink: A ``multiprocessing`` queue the launcher's :func:`relay` reads.
        label: Prefixes every bar and line (``"worker 1"``).
    """
    _STATE["sink"] = (sink, label)  # at exit the worker flushes the queue; the launcher reads until workers end


@contextmanager
def bar(description: str, total: float | None, unit: str = "img", *, leave: bool = False,
        name: str | None = None) -> Iterator[Bar]:
    """A progress bar for the ``with`` block (a silent stand-in unless :func:`enable` or :func:`forward` was called).

    Args:
        description: What is counted (``"features mobilenetv2_100"``, ``"epoch 2/3"``).
        total: Units expected (None: unknown).
        unit: The unit's name (``"img"``, ``"batch"``, ``"trial"``); tqdm adds the rate and the time left.
        leave: Keep the finished bar on screen.
        name: Lets workers' :func:`advance` events move this bar (``"trials"``).
    """
    if _STATE["sink"] is not None:
        sink, label = _STATE["sink"]
        key = (label, next(_KEYS))
        sink.put(("open", key, f"{label} {description}", total, unit))
        forwarded = _Forwarded(sink, key)
        try:
            yield forwarded
        finally:
            forwarded.flush()
            sink.put(("close", key))
        return
    if not _STATE["enabled"]:
        yield _Silent()
        return
    with _tqdm(description, total, unit, leave) as shown:
        if name is not None:
            _STATE["named"][name] = shown
        try:
            yield shown
        finally:
            _STATE["named"].pop(name, None)


def _tqdm(description: str, total: float | None, unit: str, leave: bool) -> Any:
    """A tqdm bar on standard error (also a context manager that closes it)."""
    from tqdm.auto import tqdm

    # A terminal that reports no size (a fresh pseudo-terminal, some CI consoles) would hide the bars: tqdm
    # reads 0 rows and draws nothing
    size: dict[str, Any] = {"dynamic_ncols": True} if _columns() else {"ncols": 100, "nrows": 24}
    return tqdm(total=total, desc=description, unit=unit, leave=leave, file=sys.stderr, smoothing=0.1, **size)


def advance(name: str, postfix: str = "") -> None:
    """Advance the launcher's bar ``name`` by one (from a worker: an event; elsewhere the bar itself)."""
    if _STATE["sink"] is not None:
        _STATE["sink"][0].put(("advance", name, postfix))
        return
    shown = _STATE["named"].get(name)
    if shown is not None:
        shown.update(1)
        if postfix:
            shown.set_postfix_str(postfix)


@contextmanager
def relay(sink: Any) -> Iterator[None]:
    """In the launching process: draw the events workers :func:`forward` while the ``with`` block runs.

    A thread reads ``sink`` and draws (only when :func:`enable` was called; otherwise the events are
    read and dropped, so no worker ever blocks on a full pipe); after the block it drains what is left.
    """
    stop = threading.Event()

    def run() -> None:
        with _Relay() as drawing:
            while not stop.is_set() or not _empty(sink):
                try:
                    event = sink.get(timeout=0.1)
                except (queues.Empty, EOFError, OSError):
                    continue
                drawing.handle(event)

    thread = threading.Thread(target=run, name="autotransfer-progress-relay", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def _empty(sink: Any) -> bool:
    try:
        return bool(sink.empty())
    except OSError:
        return True


class _Relay:
    """The launcher's side of :func:`relay`: one tqdm bar per open worker bar."""

    def __init__(self) -> None:
        self.bars: dict[Any, Any] = {}

    def __enter__(self) -> _Relay:
        return self

    def __exit__(self, *exc: object) -> None:
        for shown in self.bars.values():
            shown.close()

    def handle(self, event: tuple[Any, ...]) -> None:
        kind, key = event[0], event[1]
        if kind == "write":
            write(str(key))
        elif kind == "advance":
            advance(str(key), str(event[2]))
        elif not _STATE["enabled"]:
            return
        elif kind == "open":
            self.bars[key] = _tqdm(event[2], event[3], event[4], leave=False)
        elif kind == "update" and key in self.bars:
            self.bars[key].update(event[2])
        elif kind == "postfix" and key in self.bars:
            self.bars[key].set_postfix_str(event[2])
        elif kind == "close" and key in self.bars:
            self.bars.pop(key).close()


def _columns() -> int:
    """The width standard error's terminal reports (0 when it reports none)."""
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return 0


def write(line: str) -> None:
    """Print ``line`` to standard output, above any bar being drawn (from a worker: through the launcher)."""
    if _STATE["sink"] is not None:
        _STATE["sink"][0].put(("write", line))
    elif _STATE["enabled"]:
        from tqdm.auto import tqdm

        tqdm.write(line, file=sys.stdout)
    else:
        print(line, flush=True)
