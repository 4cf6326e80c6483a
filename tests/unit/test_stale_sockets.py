"""Socket files left by processes killed with SIGKILL are removed; live or young ones are not."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from snipe.transport import STALE_SOCKET_AGE_S, remove_stale_ipc_sockets


def _bound(path: Path, *, listening: bool) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    if listening:
        s.listen(8)
    return s


def _age(path: Path) -> None:
    old = time.time() - 2 * STALE_SOCKET_AGE_S
    os.utime(path, (old, old), follow_symlinks=False)


def test_only_old_socket_files_nobody_listens_on_are_removed(tmp_path: Path) -> None:
    dead = tmp_path / "msg-dead.sock"             # its process was killed: the file stays, no listener
    _bound(dead, listening=False).close()
    _age(dead)
    live = _bound(tmp_path / "msg-live.sock", listening=True)
    _age(tmp_path / "msg-live.sock")
    young = tmp_path / "msg-young.sock"           # bound a moment ago, maybe not listening yet
    _bound(young, listening=False).close()
    plain = tmp_path / "msg-plain.sock"           # not a socket at all
    plain.write_text("x")
    _age(plain)
    other = tmp_path / "daemon-dead.sock"         # another pattern: not ours to judge
    _bound(other, listening=False).close()
    _age(other)
    try:
        assert remove_stale_ipc_sockets(tmp_path, "msg-*.sock") == 1
        assert sorted(p.name for p in tmp_path.iterdir()) == [
            "daemon-dead.sock", "msg-live.sock", "msg-plain.sock", "msg-young.sock"]
        assert remove_stale_ipc_sockets(tmp_path, "msg-*.sock") == 0
    finally:
        live.close()
