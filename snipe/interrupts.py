"""Ctrl-C (SIGINT) held until the program can act on it.

Python raises KeyboardInterrupt wherever the main thread happens to be when SIGINT comes: inside
Popen (the child then runs, and nothing has its PID to stop it), or inside an import before a
program's main has set up what it does when interrupted (a traceback from the middle of some
module instead). `hold()` records SIGINT instead; `release()` puts Python's handler back and
raises the KeyboardInterrupt that came meanwhile, now, where the program handles it.
`interrupt_after()` holds for the length of a block.

Only Python's own handler is replaced, and only in the main thread (signal handlers live there):
a program that installed a handler of its own keeps it, and holding is then a no-op.
Stdlib only: `snipe/__init__.py` holds with it before it imports anything else.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

_held: list[int] | None = None     # the SIGINTs that came while holding; None while not holding


def _record(signum: int, frame: FrameType | None) -> None:
    if _held is not None:
        _held.append(signum)


def hold() -> bool:
    """Record SIGINT from now until `release()` rather than raise KeyboardInterrupt. False, and
    nothing done, off the main thread or where Python's default handler is not the one in place
    (a program's own, or a hold already)."""
    global _held
    if threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return False
    _held = []
    signal.signal(signal.SIGINT, _record)
    return True


def _restore() -> bool:
    """Stop holding; whether a SIGINT came meanwhile."""
    global _held
    if _held is None:
        return False
    signal.signal(signal.SIGINT, signal.default_int_handler)     # first: a SIGINT from here on is raised
    held, _held = _held, None
    return bool(held)


def release() -> None:
    """Stop holding (if holding), and raise KeyboardInterrupt if a SIGINT came meanwhile."""
    if _restore():
        raise KeyboardInterrupt


def unblock() -> None:
    """Let SIGINT in where the program's launcher blocked it (bin/dev starts the demo with
    `env --block-signal=INT`, so that a Ctrl-C even before Python runs a line of the program
    waits, pending): one that came is raised now, as KeyboardInterrupt."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


@contextlib.contextmanager
def interrupt_after() -> Iterator[None]:
    """Hold Ctrl-C until the block ends, then raise KeyboardInterrupt. Around starting a process:
    interrupted inside Popen, the child runs but its Popen (and PID) is never returned, so
    nothing would stop it; held, the process is known first and stopped with the others. An
    exception from the block goes on as it is (a held Ctrl-C yields to it)."""
    if not hold():
        yield
        return
    try:
        yield
    except BaseException:
        _restore()
        raise
    release()


__all__ = ["hold", "interrupt_after", "release", "unblock"]
