"""This user's default runtime folder (the local cluster's home and the ipc sockets' folder):
private to the user, and refused when another user owns it.

By default it is $XDG_RUNTIME_DIR/snipe, else /tmp/snipe-<uid>, in a folder every user may
write to: a folder of that name made by another user first would let its owner replace what we
keep there (the local cluster's description names the catalog to trust), and one left open
lists our sockets. Only folders snipe names are made private or judged, by whoever names them;
one the user names ($SNIPE_HOME) or a folder passed in (to an Endpoint: `runtime_dir`) is taken
as it is, made if missing. So a daemon makes its own ipc folder, `<state_dir>/msg`, private
itself (a refusal then names its state folder, the setting to change), and the tasks and
endpoint it passes that folder to take it as it is: judged once, where the error can say what
to do, not again by every process with advice that is wrong for it.

A task a daemon started keeps its ipc socket in its daemon's own ipc folder, which the daemon
names in the task's environment (IPC_DIR_ENV), not in this user's default folder: two clusters'
tasks then never share a folder, and one's start-up sweep of stale sockets never meets another's.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

from snipe.errors import ConfigError

IPC_DIR_ENV = "SNIPE_IPC_DIR"      # set by a daemon for its tasks: the folder for their ipc sockets


def default_runtime_dir() -> Path:
    """$XDG_RUNTIME_DIR/snipe, else /tmp/snipe-<uid>."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    return Path(base) / "snipe" if base else Path(f"/tmp/snipe-{os.getuid()}")


def short_ipc_dir(folder: Path) -> Path:
    """A short private stand-in for `folder` when a socket path in it would not fit in a
    sockaddr_un (107 bytes): /tmp/snipe-<uid>/msg/<hash of folder>, so that the processes of
    different folders (two clusters' hosts) still never share one."""
    digest = hashlib.sha256(str(folder.absolute()).encode()).hexdigest()[:16]
    return private_dir(private_dir(private_dir(Path(f"/tmp/snipe-{os.getuid()}")) / "msg") / digest)


USERS_FIX = "set SNIPE_HOME (or XDG_RUNTIME_DIR) to a folder of your own"


def private_dir(path: Path, *, fix: str = USERS_FIX) -> Path:
    """Make `path` (and any missing parent) if needed, and see that it is this user's alone:
    a folder of ours open to others is closed (mode 0700); one of another user's is refused
    (ConfigError, ending with `fix`: what to change, for whoever named the folder)."""
    missing = [p for p in (path, *path.parents) if not os.path.lexists(p)]
    with contextlib.suppress(FileExistsError):        # not a folder: `_judge` says so
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    for made in missing[1:]:              # parents come with the umask's mode, not `mode`
        _judge(made, close=True, fix=fix)
    return _judge(path, close=True, fix=fix)


def refuse_if_not_ours(path: Path) -> Path:
    """`path` as it is, unless it is there and another user's (see `private_dir`)."""
    if os.path.lexists(path):
        _judge(path, close=False)
    return path


def _judge(path: Path, *, close: bool, fix: str = USERS_FIX) -> Path:
    me = os.getuid()
    link = os.lstat(path)
    if link.st_uid != me:
        raise ConfigError(f"{path} belongs to user id {link.st_uid}, not to this user ({me}): another user may have "
                          f"made it to read or replace what snipe keeps there; {fix}")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)   # the folder judged is the one closed
    except (NotADirectoryError, FileNotFoundError):
        raise ConfigError(f"{path} should be a folder of this user's, but it is not a folder (or a link to "
                          f"one); remove it, or {fix}") from None
    try:
        st = os.fstat(fd)
        if st.st_uid != me:
            raise ConfigError(f"{path} leads to a folder of user id {st.st_uid}, not of this user ({me}); remove "
                              f"the link, or {fix}")
        if close and st.st_mode & 0o077:
            os.fchmod(fd, 0o700)
    finally:
        os.close(fd)
    return path
