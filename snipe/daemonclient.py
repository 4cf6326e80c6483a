"""The `daemon/1` protocol: what clients ask a host daemon, and the client that asks.

Requests (client -> snipe-daemon; the reply echoes the request id, kind "ok" or "error"):
  hello                                  -> {protocols, host, key, endpoint}
  spawn   {code, args, env, quota, notify, owner_urn} -> {urn, pid, host}
  status  {urn}                          -> {urn, state, pid, cpu_s, rss, open_files, age_s, exit_code, reason}
  wait    {urn, timeout}                 -> {..status.., stderr_tail}
  kill | suspend | resume {urn}          -> {urn, state}
  signal  {urn, signum}                  -> {urn, state}
  ps                                     -> {tasks: [status...]}
  put-code {urn, manifest} frame: blob   -> {urn, path}
  get-code {urn}                         -> frame: blob
  drain   {on}                           -> {draining}
  mcast-join {group, member}             -> {routers}: this host stands for election as a router
  mcast-leave {group, member}            -> {}
  mcast-status                           -> {routing, local, relayed}
Who may do what: any admitted key may spawn and read; only a task's owner (the key that
spawned it) or the admin may kill, signal, suspend or resume it; only the host's own key or the
admin may drain.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import zmq

from snipe.errors import NotAuthorized, NotDelivered, Unreachable
from snipe.identity import Identity, public_key_from_id
from snipe.transport import Link
from snipe.wire import Envelope, decode, encode

PROTOCOL = "daemon"
VERSION = 1
VERSIONS = (1,)


def parse_daemon_address(text: str) -> tuple[str, bytes]:
    """`tcp://host:port#<key id>` -> (endpoint, key)."""
    endpoint, sep, key = text.partition("#")
    if not sep:
        raise Unreachable(f"daemon address {text!r} lacks its key; write it as ENDPOINT#KEYID")
    transport, colon_slashes, where = endpoint.partition("://")
    if not colon_slashes or transport not in ("tcp", "ipc") or not where:
        raise Unreachable(f"daemon address {text!r}: {endpoint!r} is not a tcp:// or ipc:// endpoint")
    return endpoint, public_key_from_id(key)


CONNECT_WAIT_S = 5.0        # how long a request waits for a connection to come up before it is dropped unsent


class DaemonClient:
    """Request/reply to one snipe-daemon over CurveZMQ. One per thread."""

    def __init__(self, address: str, identity: Identity, *, timeout: float = 10.0) -> None:
        self.address = address
        self.endpoint, self.key = parse_daemon_address(address)
        self.identity = identity
        self.timeout = timeout
        try:
            self.link = Link(zmq.Context.instance(), identity, self.endpoint, self.key, immediate=False)
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
             timeout: float | None = None) -> tuple[dict[str, Any], list[bytes]]:
        rid = next(self._ids)
        parts = encode(Envelope(PROTOCOL, VERSION, kind, rid, body or {}), frames)
        start = time.monotonic()
        self.link.check(start)                 # a connection that dropped since the last call is down
        unsent_since = None if self.link.up else (start, self.link.handshakes)
        self.link.sock.send_multipart(parts)
        deadline = start + (timeout or self.timeout)
        connect_by = start + min(CONNECT_WAIT_S, timeout or self.timeout)
        while True:
            now = time.monotonic()
            if unsent_since is not None and now >= connect_by:
                self.link.check(now)
                if self.link.handshakes == unsent_since[1] and not self.link.refused:
                    # No connection came up since the request was queued: drop it unsent, so
                    # that a daemon coming back later cannot act on a request we gave up on.
                    self.link.remake()
                    raise NotDelivered(f"daemon {self.endpoint} did not accept a connection within "
                                       f"{connect_by - start:.1f} s; {kind!r} was not sent")
                unsent_since = None
            left = deadline - now
            if left <= 0:
                self.link.check(time.monotonic())
                if self.link.refused:
                    raise NotAuthorized(f"daemon {self.endpoint} refused this key {self.identity.key_id[:16]}…: "
                                        "it is not admitted to the cluster")
                raise Unreachable(f"daemon {self.endpoint} did not answer {kind!r} within "
                                  f"{timeout or self.timeout} s")
            if self.link.sock.poll(min(left, 0.2) * 1000):
                env, out = decode(self.link.sock.recv_multipart())
                if env.request_id != rid:
                    continue          # a late answer to a request we gave up on
                return env.raise_if_error().body, out
            if self.link.check(time.monotonic()):
                if self.link.refusals >= 3:
                    break
                self.link.sock.send_multipart(parts)
        raise NotAuthorized(f"daemon {self.endpoint} refused this key {self.identity.key_id[:16]}… "
                            f"{self.link.refusals} times: it is not admitted to the cluster")
