"""Termination signals as exceptions, so that every ``finally`` block (scratch and staging clean-up) runs.

Python turns SIGINT into ``KeyboardInterrupt`` already; :func:`install_signal_handlers` does the same for SIGTERM
(what ``kill``, Kubernetes and most schedulers send) and SIGHUP (a closed terminal). SIGKILL cannot be caught: what
a killed run leaves is swept by the next one (:mod:`outputs`).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType


class Terminated(BaseException):
    """The process received a termination signal; ``code`` is the shell's exit status for it (128 + signal)."""

    def __init__(self, signum: int):
        self.signum, self.code = signum, 128 + signum
        super().__init__(f"terminated by {signal.Signals(signum).name}")


def _raise(signum: int, frame: FrameType | None) -> None:
    raise Terminated(signum)


def install_signal_handlers() -> None:
    """Raise :class:`Terminated` on SIGTERM and SIGHUP (main thread only; elsewhere signals cannot be handled)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name) and signal.getsignal(getattr(signal, name)) in (signal.SIG_DFL, None):
            signal.signal(getattr(signal, name), _raise)
