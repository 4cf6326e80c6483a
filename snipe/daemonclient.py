"""The `daemon/1` protocol: what clients ask a host daemon, and the client that asks.

Requests (client -> snipe-daemon; the reply echoes the request id, kind "ok" or "error"):
  hello                                  -> {protocols, host, key, endpoint}
  spawn   {code, args, env, quota, notify, owner_urn, timeout} -> {urn, pid, host}: `timeout`, how
                                            long the client waits for the answer (SPAWN_TIMEOUT_S if
                                            absent): a spawn still waiting for its code to be fetched
                                            then is answered with an error, and nothing is started
  status  {urn}                          -> {urn, state, pid, cpu_s, rss, open_files, age_s, exit_code, reason}
  wait    {urn, timeout, renew}          -> {..status.., stderr_tail}: when the task ends or after
                                            timeout s (at most MAX_WAIT_S; a longer one is refused);
                                            a request with renew: true (it will ask again) may also
                                            be answered when the daemon's hold ends first
                                            (WAIT_HOLD_S by default), with renew: true
  kill | suspend | resume {urn}          -> {urn, state}
  signal  {urn, signum}                  -> {urn, state}
  ps                                     -> {tasks: [status...]}
  put-code {urn, manifest} frame: blob   -> {urn, path}
  get-code {urn}                         -> frame: blob
  drain   {on}                           -> {draining}
  mcast-join {group, member}             -> {routers}: this host stands for election as a router;
                                            QuotaExceeded past 64 groups per key or 512 per host
                                            (counting live members: one that ends is forgotten)
  mcast-leave {group, member}            -> {}
  mcast-status                           -> {routing, restored, local, relayed, ...} (restored: groups
                                            it routed before a restart, not yet decided again)
Who may do what: any admitted key may spawn and read; only a task's owner (the key that
spawned it) or the admin may kill, signal, suspend or resume it; only the host's own key or the
admin may drain; mcast-join and mcast-leave name as `member` a process the caller speaks for
(its own key, the key that spawned it or owns its URN, or the admin), else NotAuthorized.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

import zmq

from snipe.errors import NotAuthorized, NotDelivered, Unreachable
from snipe.identity import Identity, public_key_from_id
from snipe.transport import Link, send_parts
from snipe.wire import Envelope, decode, encode

_NOBLOCK = int(zmq.NOBLOCK)

PROTOCOL = "daemon"
VERSION = 1
VERSIONS = (1,)
MAX_WAIT_S = 3600.0      # the longest `wait` timeout a daemon takes; a longer wait asks again
# A daemon answers a `wait` that asks for renew after this long at most (renew: true if the
# task runs on and the timeout has not passed); a client still waiting asks again. Such a wait
# whose client left quietly thus frees its slot within this: a ROUTER says nothing of a peer
# that left. A wait without renew (an older client) is held to its timeout, as it expects.
WAIT_HOLD_S = 30.0
SPAWN_TIMEOUT_S = 120.0  # how long snipe's spawn waits for a daemon's answer (a fetch of the code included)
WAIT_TURN_S = 0.2        # `call`: how often it looks up from a wait (and calls `while_waiting`)


def parse_daemon_address(text: str) -> tuple[str, bytes]:
    """`tcp://host:port#<key id>` -> (endpoint, key)."""
    endpoint, sep, key = text.partition("#")
    if not sep:
        raise Unreachable(f"daemon address {text!r} lacks its key; write it as ENDPOINT#KEYID")
    transport, colon_slashes, where = endpoint.partition("://")
    if not colon_slashes or transport not in ("tcp", "ipc") or not where:
        raise Unreachable(f"daemon address {text!r}: {endpoint!r} is not a tcp:// or ipc:// endpoint")
    return endpoint, public_key_from_id(key)


HEARTBEAT_S = 2.0           # a daemon silent this long (its host died or was cut off) ...
HEARTBEAT_TIMEOUT_S = 6.0   # ... is taken as gone after this: its connection drops, and requests wait for a new one
REFUSALS_GIVEN_UP = 3       # handshakes refused in a row before a call says this key is not admitted


class DaemonClient:
    """Request/reply to one snipe-daemon over CurveZMQ. One per thread.

    A request goes out only on a connection whose handshake completed (ZeroMQ's `immediate`), so
    a call knows whether it sent one: one that no connection took within `connect_wait` raises
    NotDelivered (nothing was sent; asking another daemon instead is safe), one sent but not
    answered in time raises Unreachable (the daemon may have acted on it)."""

    def __init__(self, address: str, identity: Identity, *, timeout: float = 10.0) -> None:
        self.address = address
        self.endpoint, self.key = parse_daemon_address(address)
        self.identity = identity
        self.timeout = timeout
        try:
            self.link = Link(zmq.Context.instance(), identity, self.endpoint, self.key, immediate=True,
                             heartbeat=(HEARTBEAT_S, HEARTBEAT_TIMEOUT_S))
        except zmq.ZMQError as exc:         # an endpoint ZeroMQ cannot connect to, e.g. tcp://nohost
            raise Unreachable(f"daemon address {address!r}: cannot connect to {self.endpoint!r}: {exc}") from None
        self._ids = itertools.count(1)

    def close(self) -> None:
        self.link.close()

    def __enter__(self) -> DaemonClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, kind: str, body: dict[str, Any] | None = None, frames: tuple[bytes, ...] = (),
             timeout: float | None = None, *, connect_wait: float | None = None,
             while_waiting: Callable[[], None] | None = None) -> tuple[dict[str, Any], list[bytes]]:
        """Send one request and wait up to `timeout` for its answer. `connect_wait` (default: all
        of `timeout`) bounds the wait for a connection to send it on; a caller with another
        daemon to ask passes a short one. `while_waiting` is called every WAIT_TURN_S meanwhile
        (a daemon calling from its loop keeps its host lease with it)."""
        timeout = timeout or self.timeout
        rid = next(self._ids)
        parts = encode(Envelope(PROTOCOL, VERSION, kind, rid, body or {}), frames)
        start = time.monotonic()
        deadline = start + timeout
        self._send_when_connected(kind, parts, start, start + min(timeout, connect_wait or timeout), while_waiting)
        while True:
            if while_waiting is not None:
                while_waiting()
            left = deadline - time.monotonic()
            if left <= 0:
                raise Unreachable(f"daemon {self.endpoint} did not answer {kind!r} within {timeout:g} s")
            if self.link.sock.poll(min(left, WAIT_TURN_S) * 1000):
                env, out = decode(self.link.sock.recv_multipart())
                if env.request_id != rid:
                    continue          # a late answer to a request we gave up on
                return env.raise_if_error().body, out

    def _send_when_connected(self, kind: str, parts: list[bytes], start: float, connect_by: float,
                             while_waiting: Callable[[], None] | None = None) -> None:
        """Send `parts` as soon as a connection whose handshake completed takes them; raise
        NotAuthorized if the daemon keeps refusing our key, NotDelivered if none took them by
        `connect_by` (with `immediate`, ZeroMQ queues nothing meanwhile: nothing was sent)."""
        refusals = self.link.refusals
        while True:
            try:
                send_parts(self.link.sock, parts, _NOBLOCK)
                return
            except zmq.Again:
                pass
            now = time.monotonic()
            self.link.check(now)                  # reads handshake events; remakes a refused socket when due
            if self.link.refusals - refusals >= REFUSALS_GIVEN_UP:
                raise NotAuthorized(f"daemon {self.endpoint} refused this key {self.identity.key_id[:16]}… "
                                    f"{self.link.refusals - refusals} times: it is not admitted to the cluster")
            if now >= connect_by:
                if self.link.refusals > refusals:
                    raise NotAuthorized(f"daemon {self.endpoint} refused this key {self.identity.key_id[:16]}…: "
                                        "it is not admitted to the cluster")
                raise NotDelivered(f"daemon {self.endpoint} did not accept a connection within "
                                   f"{now - start:.1f} s; {kind!r} was not sent")
            if while_waiting is not None:
                while_waiting()
            self.link.sock.poll(min(0.05, max(0.0, connect_by - now)) * 1000, zmq.POLLOUT)
