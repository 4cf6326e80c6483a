"""How a task saves and restores its own state, for migration and checkpoint/restart.

    state = {"count": 0}
    snipe.on_checkpoint(lambda: state)             # any msgpack-able value, or bytes
    snipe.on_restore(lambda saved: state.update(saved))

The library takes a task's state only at a safe point: inside a call the application's own
thread makes into `snipe` (recv, send, probe, checkpoint), never from another thread while the
application is mid-update. `on_restore` registered in a process that was started from saved
state (a migration clone, or a restart from a checkpoint) calls `fn` at once with that state,
so the same code runs fresh and restored. A task without hooks can still be restarted from the
beginning; it cannot be resumed mid-computation.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from snipe.errors import HookError

__all__ = ["HookError", "hand_over", "has_checkpoint_hook", "on_checkpoint", "on_restore", "reset",
           "run_restore", "save_state"]

SaveFn = Callable[[], Any]
RestoreFn = Callable[[Any], None]

_lock = threading.Lock()
_save: SaveFn | None = None
_restore: RestoreFn | None = None
_pending: list[Any] = []     # state handed to this process at start, until on_restore takes it


def on_checkpoint(fn: SaveFn) -> None:
    """Register how this task saves its state; `fn()` returns a msgpack-able value or bytes."""
    global _save
    if not callable(fn):
        raise TypeError(f"on_checkpoint needs a callable, got {type(fn).__name__}")
    with _lock:
        _save = fn


def on_restore(fn: RestoreFn) -> None:
    """Register how this task restores saved state; called at once if this process was restored."""
    global _restore
    if not callable(fn):
        raise TypeError(f"on_restore needs a callable, got {type(fn).__name__}")
    with _lock:
        _restore = fn
        pending = _pending[:1]
        _pending.clear()
    if pending:
        run_restore(fn, pending[0])


def has_checkpoint_hook() -> bool:
    return _save is not None


def save_state() -> Any:
    """The application's state from its hook (None without one). Call only at a safe point."""
    fn = _save
    if fn is None:
        return None
    try:
        return fn()
    except Exception as e:
        raise HookError(f"the on_checkpoint hook raised {type(e).__name__}: {e}") from e


def run_restore(fn: RestoreFn, state: Any) -> None:
    try:
        fn(state)
    except Exception as e:
        raise HookError(f"the on_restore hook raised {type(e).__name__}: {e}") from e


def hand_over(state: Any) -> None:
    """Give this process the state it was started from: to the hook now, or when one registers."""
    with _lock:
        fn = _restore
        if fn is None:
            _pending[:] = [state]
            return
    run_restore(fn, state)


def reset() -> None:
    """Forget the hooks (tests, and a process that shuts its session down)."""
    global _save, _restore
    with _lock:
        _save = _restore = None
        _pending.clear()
