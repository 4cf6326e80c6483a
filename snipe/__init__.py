"""SNIPE for Python: URN-addressed processes and a signed, replicated catalog.

    import snipe
    snipe.init()                               # join (or start) a cluster
    code = snipe.publish("worker.py")          # mobile code, content-addressed
    p = snipe.spawn(code, "arg", quota={"memory_bytes": 1 << 30})
    print(p.wait()["exit_code"])
"""

import sys as _sys

from snipe import interrupts as _interrupts

# `python -m snipe.<program>` (the demo, the console) imports this package, the whole library
# (~0.25 s), before the program's code runs; sys.argv[0] is "-m" exactly then. A Ctrl-C meanwhile
# is held, and ends the program below, quietly with status 130 as an interrupted command does,
# rather than as a traceback from the middle of some import.
# Only for snipe's own programs: another program run with -m that imports snipe keeps Python's
# Ctrl-C as it is.
_orig_argv = getattr(_sys, "orig_argv", [])
_module = _orig_argv[_orig_argv.index("-m") + 1] if "-m" in _orig_argv[:-1] else ""
_starting_program = (_sys.argv[:1] == ["-m"] and (_module == "snipe" or _module.startswith("snipe."))
                     and _interrupts.hold())

try:
    from snipe.checkpoints import checkpoint
    from snipe.errors import SnipeError
    from snipe.hooks import on_checkpoint, on_restore
    from snipe.messaging.endpoint import Message
    from snipe.runtime import (
        Process,
        ProcessEvent,
        catalog,
        hosts,
        init,
        join,
        leave,
        mcast,
        me,
        members,
        messaging_stats,
        probe,
        publish,
        recv,
        recv_async,
        safe_point,
        send,
        send_async,
        send_obj,
        session,
        shutdown,
        spawn,
        stop_embedded,
    )
except BaseException:
    if _starting_program:       # a failed import (a missing dependency): Python's own Ctrl-C back
        _interrupts._restore()
    raise

if _starting_program:
    try:
        _interrupts.release()
    except KeyboardInterrupt:
        raise SystemExit(130) from None

__all__ = [
    "Message",
    "Process",
    "ProcessEvent",
    "SnipeError",
    "catalog",
    "checkpoint",
    "hosts",
    "init",
    "join",
    "leave",
    "mcast",
    "me",
    "members",
    "messaging_stats",
    "on_checkpoint",
    "on_restore",
    "probe",
    "publish",
    "recv",
    "recv_async",
    "safe_point",
    "send",
    "send_async",
    "send_obj",
    "session",
    "shutdown",
    "spawn",
    "stop_embedded",
]
