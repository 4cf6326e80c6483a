"""SNIPE for Python: URN-addressed processes and a signed, replicated catalog.

    import snipe
    snipe.init()                               # join (or start) a cluster
    code = snipe.publish("worker.py")          # mobile code, content-addressed
    p = snipe.spawn(code, "arg", quota={"memory_bytes": 1 << 30})
    print(p.wait()["exit_code"])
"""

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
