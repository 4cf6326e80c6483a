"""The messaging endpoint's ipc listener: authenticated without CurveZMQ (same user, signed key).

What makes it as safe as Curve there is in snipe/transport.py: a process of another Unix user
is refused (by the socket file's permissions, and again by its uid), and so is a key the cluster
did not admit or a key whose signature of the token does not verify. Each refusal is checked
against an accepted connection made the same way, so the tests cannot pass by refusing all.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

import snipe
from snipe.identity import Identity
from snipe.localcluster import LocalCatalog
from snipe.runtime import now_ms
from snipe.transport import Link, ipc_token
from snipe.wire import Envelope, decode, encode
from tests.support import wait_for


@pytest.fixture
def joined(catalog: LocalCatalog, user: Identity) -> Iterator[Identity]:
    """This test process joined to the catalog as `user`, its messaging endpoint listening, its
    home in a folder everyone may enter (pytest's own is closed to other users), so that only
    the endpoint's own folder and socket file stand between another user and the socket."""
    home = Path(tempfile.mkdtemp(prefix="snipe-ipc-"))
    home.chmod(0o755)
    snipe.init(catalog=catalog.addresses, identity=user, admin_key=catalog.admin.key_id, home=home)
    try:
        snipe.recv(timeout=0)
        yield user
    finally:
        snipe.shutdown()
        shutil.rmtree(home, ignore_errors=True)


def _ipc_and_key() -> tuple[str, bytes]:
    values = snipe.catalog().get(snipe.me()).as_dict(now_ms())
    ipc = next(c["endpoint"] for c in values["comm"] if c.get("transport") == "ipc")
    return ipc, bytes.fromhex(values["key"])


def _answered(sock: zmq.Socket, timeout_ms: int) -> bool:
    """Send data in a version we do not speak: an accepted connection is told so; a refused
    one never hears anything."""
    try:            # a refused connection may already be gone: then there is nothing to send on
        sock.send_multipart(encode(Envelope("msg", 2, "data", 0, {"f": snipe.me()}), [b"x"]), zmq.NOBLOCK)
    except zmq.Again:
        return False
    if not sock.poll(timeout_ms):
        return False
    env, _ = decode(sock.recv_multipart())
    return env.kind == "error" and env.body.get("code") == "bad-version"


def test_ipc_admits_a_signed_admitted_key_and_refuses_strangers_and_bad_signatures(joined: Identity) -> None:
    ipc, server_key = _ipc_and_key()
    gate = snipe.session().endpoint().gate
    ctx = zmq.Context.instance()
    good = Link(ctx, joined, ipc, server_key, immediate=False, signed_ipc=True)
    stranger = Link(ctx, Identity.generate(), ipc, server_key, immediate=False, signed_ipc=True)
    forged = ctx.socket(zmq.DEALER)         # our key id, but a signature of another server's token
    forged.linger = 0
    forged.plain_username = joined.key_id.encode()
    forged.plain_password = joined.sign(ipc_token(Identity.generate().public_key, joined.public_key)).hex().encode()
    forged.connect(ipc)
    try:
        assert _answered(good.sock, 10_000), "the admitted key's signed connection was not accepted"
        assert not _answered(stranger.sock, 1_500)
        assert not _answered(forged, 1_500)
        assert snipe.recv(timeout=0.5) is None                  # nothing was delivered either
        refused = wait_for(lambda: len(gate.refused) >= 2 and list(gate.refused), 10, "the refusals")
        assert any("is not admitted" in r for r in refused), refused
        assert any("signature" in r for r in refused), refused
    finally:
        good.close()
        stranger.close()
        forged.close(0)


def _as_other_user(path: str, username: str, password: str, *, with_zmq: bool) -> list[str]:
    """In a child process running as user nobody: connect to the ipc socket file, and (with_zmq)
    present a valid token over ZeroMQ. What happened, in words. (A fork: nobody cannot run this
    machine's Python, whose files are the test user's.)"""
    rd, wr = os.pipe()
    pid = os.fork()
    if pid == 0:                                    # the child: no return from here
        code = 1
        try:
            os.close(rd)
            os.setgid(65534)
            os.setuid(65534)
            said = []
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
                said.append("connected")
            except PermissionError:
                said.append("permission-denied")
            s.close()
            if with_zmq:
                ctx = zmq.Context()
                d = ctx.socket(zmq.DEALER)
                d.linger = 0
                d.plain_username, d.plain_password = username.encode(), password.encode()
                d.connect("ipc://" + path)
                try:
                    d.send_multipart([b"\x92\xa3msg\x02", b"x"], zmq.NOBLOCK)
                    said.append("answered" if d.poll(1500) else "no-answer")
                except zmq.Again:
                    said.append("no-answer")
                d.close()
                ctx.term()
            os.write(wr, " ".join(said).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(wr)
    with os.fdopen(rd) as f:
        out = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, out
    return out.split()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a process as another user")
def test_ipc_refuses_a_process_of_another_user(joined: Identity) -> None:
    ipc, server_key = _ipc_and_key()
    path = ipc.removeprefix("ipc://")
    assert os.stat(path).st_mode & 0o077 == 0 and os.stat(os.path.dirname(path)).st_mode & 0o077 == 0
    token = joined.sign(ipc_token(server_key, joined.public_key)).hex()
    assert _as_other_user(path, joined.key_id, token, with_zmq=False) == ["permission-denied"]  # this user only
    # Opened to everyone, the socket still refuses them: the gate checks the connecting process's uid.
    gate = snipe.session().endpoint().gate
    folder_mode, file_mode = os.stat(os.path.dirname(path)).st_mode, os.stat(path).st_mode
    os.chmod(os.path.dirname(path), 0o711)
    os.chmod(path, 0o666)
    try:
        assert _as_other_user(path, joined.key_id, token, with_zmq=True) == ["connected", "no-answer"]
    finally:
        os.chmod(os.path.dirname(path), folder_mode & 0o7777)
        os.chmod(path, file_mode & 0o7777)
    assert any("not a process of this user" in r for r in gate.refused), gate.refused
    # The same token from this user's process is accepted (the refusal was the uid's).
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.plain_username, sock.plain_password = joined.key_id.encode(), token.encode()
    sock.connect(ipc)
    try:
        assert _answered(sock, 10_000)
    finally:
        sock.close(0)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:     # and the file is still there
        s.connect(path)


def test_a_read_cut_short_between_parts_leaves_the_endpoint_reading(joined: Identity) -> None:
    """A direct recv interrupted (KeyboardInterrupt in the application's thread) after it took a
    message's first parts leaves the rest on the router. The next read drops that rest rather
    than take it for a routing id and fail on the part it then expects (an I/O thread's read
    would end the thread), and the endpoint reads and answers on."""
    ipc, server_key = _ipc_and_key()
    ep = snipe.session().endpoint()
    good = Link(zmq.Context.instance(), joined, ipc, server_key, immediate=False, signed_ipc=True)
    try:
        assert _answered(good.sock, 10_000), "the admitted key's signed connection was not accepted"
        router = ep.ipc_router
        with ep.io:                          # the I/O thread stays out while this thread plays the reader
            good.sock.send_multipart([b"head", b"payload"])
            wait_for(lambda: router.poll(0), 10, "the message on the router")
            router.recv()                    # its routing id and first part; then the "interrupt"
            router.recv()
            ep._read_router(router)          # the rest ("payload") first: dropped, no exception
        assert _answered(good.sock, 10_000), "the endpoint stopped answering after the cut-short read"
    finally:
        good.close()
