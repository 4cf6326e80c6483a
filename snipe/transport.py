"""CurveZMQ sockets keyed by our Ed25519 identities, and the admission check for servers.

Every TCP link is encrypted and authenticated with CurveZMQ, keys derived from the Ed25519
identity (snipe/identity.py). A server installs a `KeyGate`: its ZAP handler maps the client's
Curve key back to the Ed25519 key it came from, asks the server whether that key is known, and
tags each accepted connection with the Ed25519 key id (ZeroMQ's "User-Id" frame property), so
a server always knows which key sent a message.

ipc links (same host, same user) are authenticated but not encrypted (`ipc_server_socket`,
`Link` to an ipc:// endpoint): the client presents its Ed25519 key and its signature of
(`IPC_TOKEN`, server key, client key) as ZeroMQ PLAIN credentials; the gate accepts the
connection only if the signature verifies, the key is admitted, and the connecting process
belongs to our own Unix user (SO_PEERCRED, which libzmq passes to ZAP in the address as
"host:uid:gid:pid"). It is as safe as CurveZMQ there: the socket file is 0600 in a 0700
folder and the uid is checked again, so only this user's processes reach it, and they can read
this user's SNIPE keys and trace its processes anyway; the bytes never leave the kernel, so
there is nobody else to encrypt them against; and the sending key is proven and tagged on the
connection as with Curve (an unknown key or a bad signature is refused). Encryption cost most
of the throughput of large messages on ipc (1 MiB: ~0.15x of plain pyzmq with it).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import nacl.bindings
import zmq

from snipe.errors import SnipeError
from snipe.identity import Identity, curve_public_key, public_key_from_id, verify_detached

log = logging.getLogger("snipe.transport")

Admit = Callable[[bytes], bool]           # Ed25519 public key -> known?
IPC_TOKEN = b"snipe ipc/1"                # what an ipc client signs, with the server's key and its own


def ipc_token(server_key: bytes, client_key: bytes) -> bytes:
    """The message an ipc client signs to prove its key to the server holding `server_key`."""
    return IPC_TOKEN + b"\0" + server_key + client_key


class KeyGate:
    """ZAP handler: accepts a Curve client iff `admit(ed25519_key)` says so, and an ipc client by
    its signed token (`check_ipc`); tags each accepted connection with the Ed25519 key id.

    Its own thread with a plain, level-triggered zmq poll on a socket made in that thread. (It
    was pyzmq's ThreadAuthenticator, whose asyncio poller wraps a ZAP socket made in another
    thread; now and then it slept through a waiting request, so a client's handshake stalled
    until its call timed out: a standby could not fetch its code for 30 s.)"""

    domain = b"snipe"
    ZAP_ENDPOINT = "inproc://zeromq.zap.01"      # where libzmq sends every ZAP request of the context

    def __init__(self, context: zmq.Context, admit: Admit,
                 resolve: Callable[[bytes], bytes | None] = lambda curve: None, server_key: bytes = b"") -> None:
        self.context = context
        self.server_key = server_key          # our Ed25519 key: what ipc clients' tokens must name
        self._admit = admit
        self._resolve = resolve
        self._curve_to_ed: dict[bytes, bytes] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.refused: list[str] = []

    def learn(self, ed_key: bytes) -> None:
        """Remember which Curve key belongs to an Ed25519 key (the map is one-way otherwise)."""
        curve = nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(ed_key)
        with self._lock:
            self._curve_to_ed[curve] = ed_key

    def ed_key_of(self, curve: bytes) -> bytes | None:
        with self._lock:
            ed = self._curve_to_ed.get(curve)
        if ed is None:
            ed = self._resolve(curve)
            if ed is not None:
                with self._lock:
                    self._curve_to_ed[curve] = ed
        return ed

    def install(self) -> None:
        """Bind the context's ZAP endpoint and start answering (raises if another gate holds it)."""
        bound = threading.Event()
        failed: list[BaseException] = []

        def run() -> None:
            sock = self.context.socket(zmq.REP)
            sock.linger = 0
            try:
                sock.bind(self.ZAP_ENDPOINT)
            except zmq.ZMQError as exc:
                failed.append(exc)
                sock.close(0)
                bound.set()
                return
            bound.set()
            try:
                self._serve(sock)
            finally:
                sock.close(0)

        self._stop.clear()
        self._thread = threading.Thread(target=run, name="snipe-keygate", daemon=True)
        self._thread.start()
        # Without a ZAP handler bound, libzmq would accept every client unauthenticated: never go on.
        if not bound.wait(10):
            raise SnipeError("cannot install the key gate: its thread did not bind the ZAP endpoint in 10 s")
        if failed:
            raise SnipeError(f"cannot install the key gate: {failed[0]} (one gate per ZeroMQ context)")

    def stop(self) -> None:
        """Stop answering; returns once the thread has closed its socket (a lookup in progress,
        bounded by the catalog client's timeout, finishes first): the context can then terminate."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
            if self._thread.is_alive():
                log.warning("the key gate's thread did not stop in 30 s; terminating the context may hang")
            self._thread = None

    def _serve(self, sock: zmq.Socket) -> None:
        while not self._stop.is_set():
            if not sock.poll(50):                 # short: stop() waits for this turn to end
                continue
            for _ in range(1000):                 # every request waiting, then poll again
                try:
                    msg = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                try:
                    reply = self.answer(msg)
                except Exception as exc:  # a bug or a failed lookup must not stop the gate
                    reply = self._reply(msg, False, f"the gate failed: {exc.__class__.__name__}", "")
                sock.send_multipart(reply)

    def answer(self, msg: list[bytes]) -> list[bytes]:
        """The ZAP reply frames for one request (RFC 27: version, request id, domain, address,
        identity, mechanism, credentials...)."""
        if len(msg) < 6 or msg[0] != b"1.0":
            return self._reply(msg, False, "not a ZAP 1.0 request", "")
        domain, address, mechanism, credentials = msg[2], msg[3].decode("utf-8", "replace"), msg[5], msg[6:]
        if domain != self.domain:
            return self._reply(msg, False, f"unknown domain {domain[:32]!r}", "")
        if mechanism == b"PLAIN" and len(credentials) == 2:
            ok, reason, user = self.check_ipc(address, credentials[0], credentials[1])
            if not ok:
                self._note_refused(f"ipc {credentials[0][:64].decode('utf-8', 'replace')}: {reason}")
            return self._reply(msg, ok, reason, user)
        if mechanism == b"CURVE" and len(credentials) == 1 and len(credentials[0]) == 32:
            ed = self.ed_key_of(credentials[0])
            if ed is not None and self._admit(ed):
                return self._reply(msg, True, "OK", ed.hex())
            import zmq.utils.z85
            self._note_refused(zmq.utils.z85.encode(credentials[0]).decode())
            return self._reply(msg, False, "key not admitted", "")
        return self._reply(msg, False, f"mechanism {mechanism[:16]!r} with these credentials is not accepted", "")

    @staticmethod
    def _reply(msg: list[bytes], ok: bool, reason: str, user: str) -> list[bytes]:
        request_id = msg[1] if len(msg) > 1 else b""
        return [b"1.0", request_id, b"200" if ok else b"400", reason.encode()[:255], user.encode(), b""]

    def _note_refused(self, what: str) -> None:
        self.refused.append(what)
        del self.refused[:-100]

    def check_ipc(self, address: str, username: bytes, password: bytes) -> tuple[bool, str, str]:
        """(ok, reason, user id) for PLAIN credentials on our ipc socket: a process of our Unix
        user presenting an admitted Ed25519 key (username, hex) and its signature (password, hex)
        of `ipc_token(our key, its key)`."""
        parts = address.rsplit(":", 3)       # "host:uid:gid:pid" (SO_PEERCRED) on ipc
        if len(parts) != 4 or parts[1] != str(os.getuid()):
            return False, f"ipc connection from {address!r}: not a process of this user", ""
        try:
            key = public_key_from_id(username.decode("ascii"))
            verify_detached(key, ipc_token(self.server_key, key), bytes.fromhex(password.decode("ascii")))
        except (SnipeError, ValueError, UnicodeDecodeError):
            return False, "ipc credentials: not a key id with its signature of the token", ""
        if not self._admit(key):
            return False, f"key {key.hex()[:16]}… is not admitted", ""
        return True, "OK", key.hex()


def server_socket(ctx: zmq.Context, kind: int, identity: Identity) -> zmq.Socket:
    sock = ctx.socket(kind)
    pub, sec = identity.curve_keypair()
    sock.curve_publickey = pub
    sock.curve_secretkey = sec
    sock.curve_server = True
    sock.zap_domain = b"snipe"
    sock.linger = 0
    return sock


def ipc_server_socket(ctx: zmq.Context, kind: int) -> zmq.Socket:
    """A server socket for ipc: PLAIN credentials checked by the KeyGate (see the module docstring)."""
    sock = ctx.socket(kind)
    sock.plain_server = True
    sock.zap_domain = b"snipe"
    sock.linger = 0
    return sock


STALE_SOCKET_AGE_S = 60.0      # a socket file younger than this may be bound but not listening yet
STALE_SOCKETS_LOOKED_AT = 256  # at most this many files a start looks at (it stays quick)


def remove_stale_ipc_sockets(folder: Path, pattern: str) -> int:
    """Remove this user's socket files matching `pattern` in `folder` that nobody listens on:
    a process killed with SIGKILL leaves its ipc socket file behind, and the folder would fill
    up. A file is removed only when a connection to it is refused (no listener) and it is older
    than STALE_SOCKET_AGE_S; returns how many were."""
    cutoff = time.time() - STALE_SOCKET_AGE_S
    return sum(remove_unused_ipc_socket(path, older_than=cutoff)
               for path in itertools.islice(folder.glob(pattern), STALE_SOCKETS_LOOKED_AT))


def remove_unused_ipc_socket(path: Path, *, older_than: float | None = None) -> bool:
    """Remove `path` if it is a socket file of this user's that nobody listens on (a connection to
    it is refused), and, given `older_than` (a time.time()), last changed before then (a younger
    one may be bound but not listening yet). Whether it was removed."""
    try:
        st = path.lstat()
        if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.getuid() or (
                older_than is not None and st.st_mtime > older_than):
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(0.2)
            try:
                probe.connect(str(path))
                return False                  # somebody listens
            except ConnectionRefusedError:
                pass
        path.unlink()
        return True
    except OSError:                           # gone meanwhile, a backlog full (alive), ...: leave it
        return False


def bound_ipc_sockets(process: Any) -> list[Path]:
    """The socket files a process (a psutil.Process) has bound: its ipc listeners, which it
    removes when it closes them, and leaves behind when it is killed. Read while it runs (after,
    nothing says whose a file was); [] if it cannot be read (gone, another user's)."""
    import psutil

    try:       # psutil 6 renamed connections() to net_connections()
        found = getattr(process, "net_connections", None) or process.connections
        conns = found(kind="unix")
    except psutil.Error:
        return []
    # A bound socket (listening, or a connection it accepted) names its file; one that only
    # connected names none. Abstract sockets (no file) do not start with "/".
    return sorted({Path(c.laddr) for c in conns if isinstance(c.laddr, str) and c.laddr.startswith("/")})


def ipc_client_socket(ctx: zmq.Context, kind: int, identity: Identity, server_key: bytes) -> zmq.Socket:
    """A socket presenting `identity` to the ipc server holding `server_key` (its signed token)."""
    sock = ctx.socket(kind)
    sock.plain_username = identity.key_id.encode()
    sock.plain_password = identity.sign(ipc_token(server_key, identity.public_key)).hex().encode()
    sock.linger = 0
    return sock


def client_socket(ctx: zmq.Context, kind: int, identity: Identity, server_key: bytes) -> zmq.Socket:
    """A socket that will only complete a handshake with the holder of `server_key` (Ed25519)."""
    sock = ctx.socket(kind)
    pub, sec = identity.curve_keypair()
    sock.curve_publickey = pub
    sock.curve_secretkey = sec
    sock.curve_serverkey = curve_public_key(server_key)
    sock.linger = 0
    return sock


_SNDMORE = int(zmq.SNDMORE)
_ZERO_COPY_FROM = 65536           # pyzmq's own copy_threshold


# pyzmq's Socket.send is a Python wrapper (routing ids, groups) around its compiled send; the hot
# paths call the compiled one directly, half the cost of a frame (0.7 against 1.35 us here).
_send_frame = zmq.backend.Socket.send


def send_parts(sock: zmq.Socket, parts: Sequence[Any], flags: int = 0) -> None:
    """`sock.send_multipart(parts, flags)` without its per-frame enum arithmetic (microseconds
    a message on the hot paths); `flags` as a plain int, e.g. int(zmq.NOBLOCK). Large parts go
    without a copy (ZeroMQ holds a reference until sent), small ones copied (cheaper for them)."""
    last = len(parts) - 1
    more = flags | _SNDMORE
    for i, part in enumerate(parts):
        _send_frame(sock, part, more if i < last else flags, len(part) < _ZERO_COPY_FROM)


def send_two(sock: zmq.Socket, head: bytes, body: Any, flags: int = 0) -> None:
    """`send_parts(sock, [head, body], flags)` for the usual message of an envelope (`head`, small:
    copied) and one payload, without the loop."""
    _send_frame(sock, head, flags | _SNDMORE, True)
    _send_frame(sock, body, flags, len(body) < _ZERO_COPY_FROM)


def recv_parts(sock: zmq.Socket, flags: int = 0) -> list[zmq.Frame]:
    """`sock.recv_multipart(flags, copy=False)`, reading each frame's more-flag from the frame
    itself rather than by a socket option lookup per frame."""
    parts = [sock.recv(flags, copy=False)]
    while parts[-1].more:
        parts.append(sock.recv(flags, copy=False))
    return parts


def sender_key(frame: zmq.Frame) -> str:
    """The Ed25519 key id the ZAP handler attached to a received frame ("" if none)."""
    try:
        return frame.get("User-Id") or ""
    except zmq.ZMQError:
        return ""


class Link:
    """A DEALER to one server (CurveZMQ, or `signed_ipc`), remade after the server refuses our key.

    libzmq does not reconnect after a CurveZMQ handshake is refused (ZAP status 400), yet a
    refusal is often temporary: the server learns of our key a moment later (a replica just
    added to the set, a key just admitted). `check()` reads the handshake events and, once
    `retry_s` has passed since a refusal, replaces the socket with a fresh one.
    """

    def __init__(self, ctx: zmq.Context, identity: Identity, endpoint: str, server_key: bytes, *,
                 hwm: int = 100_000, immediate: bool = True, retry_s: float = 1.0, signed_ipc: bool = False,
                 heartbeat: tuple[float, float] | None = None) -> None:
        self.ctx = ctx
        self.signed_ipc = signed_ipc      # an ipc_server_socket's: PLAIN with a signed token, not Curve
        self.identity = identity
        self.endpoint = endpoint
        self.server_key = server_key
        self.hwm = hwm
        self.immediate = immediate
        self.retry_s = retry_s
        self.refused_at: float | None = None
        self.refusals = 0
        self.heartbeat = heartbeat
        self._make()

    def _make(self) -> None:
        make = ipc_client_socket if self.signed_ipc else client_socket
        self.sock = make(self.ctx, zmq.DEALER, self.identity, self.server_key)
        self.sock.immediate = int(self.immediate)
        self.sock.sndhwm = self.sock.rcvhwm = self.hwm
        if self.heartbeat is not None:            # (interval, timeout): a silent peer's connection is dropped
            self.sock.heartbeat_ivl, self.sock.heartbeat_timeout = (int(t * 1000) for t in self.heartbeat)
        self.monitor = self.sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_SUCCEEDED)
        self.sock.connect(self.endpoint)

    def check(self, now: float) -> bool:
        """Read handshake events; remake the socket if due. True if the socket was replaced."""
        import zmq.utils.monitor
        while True:
            try:
                ev = zmq.utils.monitor.recv_monitor_message(self.monitor, zmq.NOBLOCK)
            except zmq.Again:
                break
            if ev["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self.refused_at = now
                self.refusals += 1
            elif ev["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.refused_at = None
        if self.refused_at is not None and now - self.refused_at >= self.retry_s:
            self.remake()
            return True
        return False

    def remake(self) -> None:
        """A fresh socket: whatever the old one still queued is dropped unsent."""
        self.close()
        self._make()
        self.refused_at = None

    @property
    def refused(self) -> bool:
        return self.refused_at is not None

    def close(self) -> None:
        with contextlib.suppress(zmq.ZMQError):
            self.sock.disable_monitor()
        self.monitor.close(0)
        self.sock.close(0)
