"""The gateway relay: a daemon forwards sealed msg/1 messages between hosts that share no network.

A thin shell around snipe.messaging.gateway.RelayCore, on its own thread with its own sockets
and catalog client: a CurveZMQ ROUTER (the daemon's key gate, so keys the cluster did not admit
never complete a handshake) where senders connect, and one DEALER per destination process.
It checks that a sender's key speaks for the source it names (the process's own key or its
owner's), looks destinations up in the catalog (their `comm`, `key` and host interfaces, direct
routes from this host only: a relay never relays through another), and carries out the core's
effects. It never opens what it carries (the messages are sealed end to end); anything
malformed is answered with an error or dropped, and the relay keeps serving.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

import zmq

from snipe.catalog.client import CatalogClient, now_ms
from snipe.errors import CodecError, ListenError, NotAuthorized, ProtocolVersionError, SnipeError
from snipe.identity import Identity, public_key_from_id
from snipe.messaging.channel import PROTOCOL, VERSION
from snipe.messaging.gateway import RELAY, Lookup, RelayCore, ToPeer, ToSender, parse_relay
from snipe.messaging.routes import ProcView, choose_routes
from snipe.startup import listen_on
from snipe.transport import Link, sender_key, server_socket
from snipe.wire import Envelope, decode, encode

log = logging.getLogger("snipe.daemon.relay")

TICK_S = 0.5
SOURCE_OK_S = 60.0            # a checked (source, key) pair is trusted this long


class Relay:
    def __init__(self, ctx: zmq.Context, identity: Identity, host_urn: str, catalog: list[str], admin_key: bytes,
                 listen: str) -> None:
        self.identity, self.host_urn, self.catalog_addrs, self.admin_key = identity, host_urn, catalog, admin_key
        self.ctx = ctx
        self.sock = server_socket(ctx, zmq.ROUTER, identity)
        self.sock.rcvhwm = self.sock.sndhwm = 100_000
        try:
            listen_on(self.sock, listen, "relay")
        except ListenError:
            self.sock.close(0)
            raise
        endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.port = int(endpoint.rsplit(":", 1)[1])
        self.core = RelayCore()
        self.links: dict[str, Link] = {}           # destination URN -> link to where it listens
        self.sources_ok: dict[tuple[str, str], float] = {}
        self.refused = 0
        self._stats: dict[str, Any] = {}
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="snipe-relay", daemon=True)
        self.catalog: CatalogClient | None = None

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop = True
        self._thread.join(5)
        self.sock.close(0)

    def status(self) -> dict[str, Any]:
        """Counters, as last copied by the relay thread (read from any thread)."""
        return dict(self._stats)

    # --- the relay thread ----------------------------------------------------------------------
    def _run(self) -> None:
        self.catalog = CatalogClient(self.catalog_addrs, self.identity, self.admin_key, timeout=1.0)
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        polled: dict[zmq.Socket, str] = {}
        next_tick = 0.0
        try:
            while not self._stop:
                ready = dict(poller.poll(int(TICK_S * 1000)))
                if self.sock in ready:
                    self._read_senders()
                for sock, dest in list(polled.items()):
                    if sock in ready:
                        self._read_peer(dest, sock)
                now = time.monotonic()
                if now >= next_tick:
                    next_tick = now + TICK_S
                    for dest in self.core.tick(now):
                        link = self.links.pop(dest, None)
                        if link is not None:
                            link.close()
                    for link in self.links.values():
                        link.check(now)
                    self._stats = {"port": self.port, "refused": self.refused, "pairs": self.core.stats()}
                socks = {link.sock: dest for dest, link in self.links.items()}
                for sock in set(polled) - set(socks):
                    with contextlib.suppress(KeyError, zmq.ZMQError):
                        poller.unregister(sock)
                for sock in set(socks) - set(polled):
                    poller.register(sock, zmq.POLLIN)
                polled = socks
        except Exception:  # say why the relay died; the daemon keeps serving everything else
            log.exception("the relay thread failed")
        finally:
            for link in self.links.values():
                link.close()
            self.catalog.close()

    def _read_senders(self) -> None:
        for _ in range(1000):
            try:
                parts = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            conn, key = parts[0].bytes, sender_key(parts[0])
            try:
                if len(parts) < 2:
                    raise CodecError("a message needs an envelope frame")
                env, frames = decode([p.bytes for p in parts[1:]])
                if env.protocol != PROTOCOL or env.version != VERSION:
                    raise ProtocolVersionError(f"this relay speaks {PROTOCOL}/{VERSION}, not "
                                               f"{env.protocol}/{env.version}; versions on offer: {VERSION}")
                source, dest, _ = parse_relay(env, frames)
                if not self._speaks_for(source, key):
                    raise NotAuthorized(f"key {key[:16]}… does not speak for {source}; this relay forwards "
                                        "only a process's own messages")
                self._apply(self.core.from_sender(conn, source, dest, [p.bytes for p in parts[1:]], time.monotonic()))
            except SnipeError as exc:
                self.refused += 1
                reply = Envelope(PROTOCOL, VERSION, "error", 0, {"code": exc.code, "message": str(exc)})
                with contextlib.suppress(zmq.ZMQError):
                    self.sock.send_multipart([conn, *encode(reply)], zmq.NOBLOCK)
            except Exception:  # a bug here must not stop the relay for everyone else
                self.refused += 1
                log.exception("the relay failed on a message from key %s…", key[:16])

    def _read_peer(self, dest: str, sock: zmq.Socket) -> None:
        for _ in range(1000):
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                env, frames = decode(parts)
                if env.kind == "error":
                    log.info("%s refused a relayed message: %s", dest, env.body.get("message"))
                    continue
                source, to, _ = parse_relay(env, frames)
            except SnipeError as exc:
                log.info("dropping a malformed answer from %s: %s", dest, exc)
                continue
            try:
                self._apply(self.core.from_peer(dest, source, to, parts, time.monotonic()))
            except Exception:  # a bug here must not stop the relay for everyone else
                log.exception("the relay failed on an answer from %s", dest)

    def _apply(self, effects: list[Any]) -> None:
        for e in effects:
            if isinstance(e, ToPeer):
                link = self.links.get(e.dest)
                if link is not None and (link.endpoint != e.endpoint or link.server_key.hex() != e.key):
                    link.close()
                    link = None
                if link is None:
                    try:
                        server_key = public_key_from_id(e.key)
                    except SnipeError:
                        continue
                    link = self.links[e.dest] = Link(self.ctx, self.identity, e.endpoint, server_key,
                                                     immediate=False, hwm=100_000,
                                                     signed_ipc=e.endpoint.startswith("ipc://"))
                with contextlib.suppress(zmq.Again):    # full: the sender's channel retransmits
                    link.sock.send_multipart(e.parts, zmq.NOBLOCK)
            elif isinstance(e, ToSender):
                with contextlib.suppress(zmq.ZMQError):  # the sender went away: it retransmits to us or another
                    self.sock.send_multipart([e.conn, *e.parts], zmq.NOBLOCK)
            elif isinstance(e, Lookup):
                endpoint, key = self._lookup(e.dest)
                self._apply(self.core.resolved(e.dest, endpoint, key, time.monotonic()))

    def _lookup(self, dest: str) -> tuple[str | None, str | None]:
        """Where `dest` listens, reached directly from this host, and its key; (None, None) if unknown."""
        assert self.catalog is not None
        try:
            self.catalog.invalidate(dest)
            values = self.catalog.get(dest, r=1).as_dict(now_ms())
            peer = ProcView.from_values(dest, values)
            routes = choose_routes(ProcView(self.host_urn, self.host_urn, ""), peer,
                                   self._host(self.host_urn), self._host(peer.host))
        except SnipeError as exc:
            log.info("cannot look up %s: %s", dest, exc)
            return None, None
        key = values.get("key")
        route = next((r for r in routes if r.kind in ("tcp", "ipc")), None)
        if route is None or not isinstance(key, str):
            return None, None
        return route.endpoint, key

    def _host(self, urn: str | None) -> dict[str, Any] | None:
        if urn is None or self.catalog is None:
            return None
        try:
            return self.catalog.cached(urn, max_age=5.0).as_dict(now_ms())
        except SnipeError:
            return None

    def _speaks_for(self, source: str, key: str) -> bool:
        """Does `key` speak for `source`? (Its own key, or the key that owns the URN.)"""
        hit = self.sources_ok.get((source, key))
        now = time.monotonic()
        if hit is not None and hit > now:
            return True
        assert self.catalog is not None
        try:
            entry = self.catalog.get(source, r=1)
        except SnipeError:
            return False
        ok = entry.as_dict(now_ms()).get("key") == key or entry.owner(self.admin_key, now_ms()) == key
        if ok:
            if len(self.sources_ok) > 10_000:
                self.sources_ok.clear()
            self.sources_ok[(source, key)] = now + SOURCE_OK_S
        return ok


__all__ = ["RELAY", "Relay"]
