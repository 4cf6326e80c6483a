"""Pre-started interpreters that become tasks: the daemon's warm pool (see daemon/pool.py).

Starting Python and importing the library costs hundreds of milliseconds of CPU, far more than
everything else in a spawn. A zygote pays that ahead of time: it has imported what tasks use
and blocks reading one JSON line on stdin. The line says what to become: working directory,
environment, rlimits, stdout/stderr files, and the argv of a Python program. The zygote
applies them to itself and runs the program in place, so the task's pid, process group and
session are the zygote's. Only Python programs run here (the argv must start with this
interpreter); others are started cold by the task runner.

Zygotes come from a *template* (``python -m snipe_daemon.zygote --template FD``): one process
the pool starts once, which imports what tasks use, freezes its objects out of the garbage
collector (so children do not dirty the shared pages) and then forks a zygote per request on
the unix socket FD. A request carries one descriptor, the read end of a pipe, which becomes
the zygote's stdin. The template forks twice and the middle process exits at once, so the
zygote is re-parented to the daemon (a child subreaper, PR_SET_CHILD_SUBREAPER): the daemon
reaps it, reads its exit code, and may signal its group until then, as for any task it started
itself. The template answers with the zygote's pid only after reaping the middle process, so
by then the zygote already is the daemon's child. A zygote calls setsid(), closes every other
descriptor, and costs a few hundred KiB of its own until it runs something: the rest of its
memory is shared with the template. A fork takes a few milliseconds instead of the whole start
of an interpreter, so the pool refills at once even during a burst of spawns.

What forked zygotes share with the template, and so with each other: the imported modules and
the string hash seed (PYTHONHASHSEED is drawn once per interpreter). The template holds no key
or task data; `random` is reseeded in every child by Python itself, and os.urandom, uuid4,
secrets and libsodium draw from the kernel.

``python -m snipe_daemon.zygote`` without ``--template`` is one zygote started directly (by
exec), for a daemon that cannot be a subreaper.

Idle zygotes are named ``snipe-zygote`` and the template ``snipe-template`` (the process name
``ps`` and psutil show); a zygote takes back the interpreter's name when it becomes a task.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import runpy
import socket
import struct
import sys

# What tasks import, paid for before the task exists.
import snipe.runtime  # noqa: F401

ZYGOTE_NAME = "snipe-zygote"
TEMPLATE_NAME = "snipe-template"
_PID = struct.Struct("!i")


def _read_name() -> str:
    try:
        with open("/proc/self/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


_INTERPRETER_NAME = _read_name()


def set_name(name: str) -> None:
    """The process name (Linux comm, 15 bytes at most); nothing happens where it cannot be set."""
    try:
        with open("/proc/self/comm", "w") as f:
            f.write(name[:15])
    except OSError:
        pass


def become(command: dict) -> None:
    if _INTERPRETER_NAME:
        set_name(_INTERPRETER_NAME)
    os.chdir(command["cwd"])
    os.environ.clear()
    os.environ.update(command["env"])
    for name, soft, hard in command.get("limits", []):
        resource.setrlimit(getattr(resource, "RLIMIT_" + name), (int(soft), int(hard)))
    for fd, path in ((1, command["stdout"]), (2, command["stderr"])):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(f, fd)
        os.close(f)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    argv = command["argv"][1:]
    if argv and argv[0] == "-c":
        sys.argv = ["-c", *argv[2:]]
        code = compile(argv[1], "<string>", "exec")
        exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
    else:
        sys.argv = list(argv)
        sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))
        runpy.run_path(argv[0], run_name="__main__")


def _read_exact(fd: int, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = os.read(fd, n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _fork_zygote(stdin_fd: int) -> int:
    """Fork a zygote (through a middle process that exits); its pid, -1 if the forks failed, and
    0 in the zygote itself."""
    r, w = os.pipe()
    try:
        middle = os.fork()
    except OSError:
        os.close(r)
        os.close(w)
        return -1
    if middle == 0:
        try:
            os.close(r)
            pid = os.fork()
            if pid == 0:
                os.close(w)
                return 0
            os.write(w, _PID.pack(pid))
        except BaseException:
            pass
        os._exit(0)
    os.close(w)
    try:
        data = _read_exact(r, _PID.size)
    finally:
        os.close(r)
        os.waitpid(middle, 0)           # from here on the zygote is the subreaper's child
    return _PID.unpack(data)[0] if len(data) == _PID.size else -1


def serve_template(fd: int) -> bool:
    """Fork a zygote per request on the unix socket `fd` until it closes. False in the template
    when it is done; True in a zygote, which then reads its task from stdin."""
    set_name(TEMPLATE_NAME)
    sock = socket.socket(fileno=fd)
    gc.collect()
    gc.freeze()              # children share these objects' pages; the collector no longer writes to them
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(sock, 16, 1)
        except OSError:
            return False
        if not msg:
            return False                 # the daemon closed the pool
        if not fds:
            continue
        stdin_fd = fds[0]
        pid = _fork_zygote(stdin_fd)
        if pid == 0:                     # the zygote: its own session, the pipe as stdin, nothing else open
            os.setsid()
            sock.detach()                # no Python object may later close a descriptor number reused by the task
            os.dup2(stdin_fd, 0)
            os.closerange(3, os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 65536)
            set_name(ZYGOTE_NAME)
            return True
        os.close(stdin_fd)
        try:
            sock.sendall(_PID.pack(pid))
        except OSError:
            return False


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--template":
        if not serve_template(int(sys.argv[2])):
            return
    else:
        set_name(ZYGOTE_NAME)
    line = sys.stdin.readline()
    if not line:          # the daemon closed the pool: leave quietly
        return
    become(json.loads(line))


if __name__ == "__main__":
    main()
