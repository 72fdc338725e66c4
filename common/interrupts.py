"""Termination signals as exceptions, so that every ``finally`` block (scratch and staging clean-up) runs.

Python turns SIGINT into ``KeyboardInterrupt`` already; :func:`install_signal_handlers` does the same for SIGTERM
(what ``kill``, Kubernetes and most schedulers send) and SIGHUP (a closed terminal). SIGKILL cannot be caught: what
a killed run leaves is swept by the next one (:mod:`folders`).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType


class Terminated(BaseException):
    """The process received a termination signal; ``code`` is the shell's exit status for it (128 + signal)."""

    def __init__(self, signum: int):
        self.signum, self.code = signum, 128 + signum
        super().__init__(f"terminated by {signal.Signals(signum).name}")


def _raise(signum: int, frame: FrameType | None) -> None:
    raise Terminated(signum)


def install_signal_handlers() -> dict[int, object]:
    """Raise :class:`Terminated` on SIGTERM and SIGHUP where they still have their default action (main thread
    only; elsewhere signals cannot be handled). Returns the handlers replaced."""
    replaced: dict[int, object] = {}
    if threading.current_thread() is not threading.main_thread():
        return replaced
    for name in ("SIGTERM", "SIGHUP"):
        number = getattr(signal, name, None)
        if number is not None and signal.getsignal(number) in (signal.SIG_DFL, None):
            replaced[number] = signal.signal(number, _raise)
    return replaced


@contextlib.contextmanager
def termination_raises() -> Iterator[None]:
    """:func:`install_signal_handlers` for the duration of the block (a command run in-process leaves the
    process's signal handling as it found it)."""
    replaced = install_signal_handlers()
    try:
        yield
    finally:
        for number, handler in replaced.items():
            signal.signal(number, handler)  # type: ignore[arg-type]
