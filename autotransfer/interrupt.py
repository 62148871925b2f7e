"""Clean stops on SIGINT and SIGTERM: finish the current step, end the trial, write the outputs.

Python's default SIGINT handler raises ``KeyboardInterrupt`` wherever the main thread happens to
be: Optuna fails the running trial when that is inside the objective, but not when it is inside
Optuna's own code that creates or records a trial, and SIGTERM kills the process with the trial
left RUNNING. :func:`graceful_stop` instead records the first signal; the trainer calls
:func:`check` between steps and the search loop between trials, so the stop happens at a known
point within a few seconds. A second signal exits at once (the command line) or raises
``KeyboardInterrupt`` immediately (the Python API, so a notebook kernel is not killed).

No library offers this for an Optuna loop, hence this small module.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["Interrupted", "check", "graceful_stop", "listen", "request", "requested"]

logger = logging.getLogger(__name__)

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_state: dict[str, int | None] = {"signum": None, "depth": 0}
# Called on the first signal (graceful) and before a hard exit; worker launchers forward signals here.
_listeners: list[tuple[Callable[[int], None], Callable[[int], None]]] = []


class Interrupted(KeyboardInterrupt):
    """The search was asked to stop by a signal.

    Args:
        signum: The signal number (``signal.SIGINT`` or ``signal.SIGTERM``).

    Attributes:
        exit_status: ``128 + signum``, the shell's convention (130 for SIGINT, 143 for SIGTERM).
    """

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.signame = signal.Signals(signum).name
        self.exit_status = 128 + signum
        super().__init__(f"stopped by {self.signame}")


def requested() -> int | None:
    """The signal that asked for a stop, or None."""
    return _state["signum"]


def request(signum: int = signal.SIGTERM) -> None:
    """Ask for a stop as if ``signum`` had been received (used by tests and worker launchers)."""
    if _state["signum"] is None:
        _state["signum"] = signum


def check() -> None:
    """Raise :class:`Interrupted` if a stop was requested; call it between training steps.

    Raises:
        Interrupted: A signal asked for a stop.
    """
    signum = _state["signum"]
    if signum is not None:
        raise Interrupted(signum)


@contextmanager
def listen(first: Callable[[int], None], hard: Callable[[int], None]) -> Iterator[None]:
    """Inside the block, call ``first(signum)`` on the first stop signal and ``hard(signum)`` before a hard exit.

    If a stop was already requested, ``first`` is called at once.
    """
    entry = (first, hard)
    _listeners.append(entry)
    try:
        if _state["signum"] is not None:
            first(_state["signum"])
        yield
    finally:
        _listeners.remove(entry)


@contextmanager
def graceful_stop(*, hard_exit: bool) -> Iterator[None]:
    """Handle SIGINT and SIGTERM as stop requests inside the ``with`` block.

    Only the main thread can install signal handlers; elsewhere, or when an enclosing block
    already handles them, this does nothing. The previous handlers and state are restored on exit.

    Args:
        hard_exit: What a second signal does: ``os._exit(128 + signum)`` at once (True: the
            command line) or raise ``KeyboardInterrupt`` at once (False: the Python API).
    """
    if threading.current_thread() is not threading.main_thread() or _state["depth"]:
        yield
        return

    def handle(signum: int, frame: FrameType | None) -> None:
        if _state["signum"] is None:
            _state["signum"] = signum
            logger.warning("\n%s received: ending the current trial and writing the outputs "
                           "(send it again to exit at once).", signal.Signals(signum).name)
            for first, _ in list(_listeners):
                first(signum)
            return
        if hard_exit:
            os.write(2, f"\n{signal.Signals(signum).name} again: exiting now.\n".encode())
            for _, hard in list(_listeners):
                hard(signum)
            os._exit(128 + signum)
        raise KeyboardInterrupt

    previous = {sig: signal.getsignal(sig) for sig in _SIGNALS}
    _state["depth"], _state["signum"] = 1, None
    for sig in _SIGNALS:
        signal.signal(sig, handle)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        _state["depth"], _state["signum"] = 0, None
