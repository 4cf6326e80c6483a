"""The migrating process's shell around `core.Origin`.

Its daemon asks it to move (a msgpack message under the reserved tag `MIGRATE_TAG`, from the
daemon's own URN, naming the clone's transfer endpoints). The I/O thread only notes the request
and wakes the application's thread; that thread, at its next recv, probe or
safe_point, takes the application's state through the on_checkpoint hook, freezes messaging,
sends everything to the clone and waits for it to say `ready`. Then it commits: tells the clone
to run, redirects every peer, reports to its daemon, and stays `GRACE_S` seconds answering
stragglers with redirects before it exits. If anything fails before the commit it thaws and
returns to the application as if nothing had happened, having told its daemon why.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import msgpack
import zmq

from snipe import hooks
from snipe.errors import CodecError, SnipeError
from snipe.migration import transfer
from snipe.migration.core import Commit, Effect, Freeze, Origin, Report, SendState, Thaw
from snipe.migration.groups import export_groups
from snipe.transport import client_socket

if TYPE_CHECKING:
    from snipe.messaging.channel import Deliver
    from snipe.messaging.endpoint import Endpoint
    from snipe.runtime import Session

log = logging.getLogger("snipe.migration")

MIGRATE_TAG = -12            # daemon -> task: move to this clone
GRACE_S = float(os.environ.get("SNIPE_MIGRATION_GRACE_S", "5"))
TRACE = bool(os.environ.get("SNIPE_MIGRATION_TRACE"))      # phase times on stderr, for tuning


def trace(what: str) -> None:
    if TRACE:
        sys.stderr.write(f"migration {time.time():.4f} {what}\n")
READY_BASE_S = 10.0          # the clone's `ready` may take this, plus the transfer at READY_RATE
PREPARE_WAIT_S = 10.0        # how long the clone may take to admit our peers before we go ahead anyway
READY_RATE = 5e6             # bytes/s assumed at worst for the transfer (CurveZMQ on a loaded host)


class OriginShell:
    def __init__(self, session: Session, endpoint: Endpoint) -> None:
        self.session, self.endpoint = session, endpoint
        self.request: dict[str, Any] | None = None
        endpoint.system_handlers[MIGRATE_TAG] = endpoint.one_by_one(self._on_request)
        endpoint.at_safe_point = self.at_safe_point

    # I/O thread
    def _on_request(self, m: Deliver) -> None:
        if m.source != self.endpoint.host_urn:
            log.warning("a migration request from %s, not from this task's daemon: ignored", m.source)
            return
        try:
            req = msgpack.unpackb(m.payload, raw=False)
            ok = (isinstance(req, dict) and isinstance(req.get("id"), str)
                  and isinstance(req.get("until_s"), float | int) and isinstance(req.get("endpoints"), list)
                  and all(isinstance(e, str) for e in req["endpoints"]))
        except Exception:
            ok = False
        if not ok:
            log.warning("a malformed migration request from %s: ignored", m.source)
            return
        req["until"] = time.monotonic() + float(req["until_s"])
        keys = [k.hex() for k in self.endpoint.peer_keys()]
        threading.Thread(target=self._prepare, args=(req, keys), name="snipe-migrate", daemon=True).start()

    def _prepare(self, req: dict[str, Any], keys: list[str]) -> None:
        """Connect to the clone while the application works on, and have it admit the keys our
        peers will reach it with: the handshakes and catalog look-ups happen before the blackout.
        Only then (or after PREPARE_WAIT_S) ask for a safe point."""
        req["sock"] = sock = self._connect(req["endpoints"][0])
        sock.send_multipart(transfer.message("prepare", req["id"], keys=keys))
        limit = time.monotonic() + PREPARE_WAIT_S
        while (left := limit - time.monotonic()) > 0 and sock.poll(int(left * 1000) + 1):
            with contextlib.suppress(SnipeError, IndexError):
                env, _ = transfer.parse(sock.recv_multipart())
                if env.kind == "prepared" and env.body["id"] == req["id"]:
                    break
        trace("origin: clone prepared")
        old, self.request = self.request, req
        if old is not None:
            old["sock"].close(0)
        self.endpoint.ask_safe_point()

    # the application's thread
    def at_safe_point(self) -> None:
        req, self.request = self.request, None
        if req is None:
            return
        mid = req["id"]
        sock: zmq.Socket = req["sock"]
        trace("origin: safe point")
        if not hooks.has_checkpoint_hook():
            sock.close(0)
            self._report(mid, False, "the task registered no on_checkpoint hook, so it cannot be resumed "
                                     "mid-computation elsewhere; add snipe.on_checkpoint/on_restore, or restart it")
            return
        try:
            app = hooks.save_state()
        except SnipeError as exc:
            sock.close(0)
            self._report(mid, False, str(exc))
            return
        core = Origin(tuple(req["endpoints"]), ready_timeout=READY_BASE_S, bytes_per_s=READY_RATE)
        try:
            effects: list[Effect] = core.at_safe_point(time.monotonic(), req["until"])
            while effects:
                nxt: list[Effect] = []
                for e in effects:
                    match e:
                        case Freeze():
                            lib, payloads = self.endpoint.run_in_io(self._freeze_and_export)
                            groups = export_groups(self.session._membership)
                            trace("origin: frozen and exported")
                        case SendState():
                            try:
                                parts = transfer.encode_state(mid, lib, payloads, groups, app)
                                core.on_sending(sum(len(p) for p in parts), time.monotonic())
                                sock.send_multipart(parts, copy=False)
                                del parts
                            except (CodecError, zmq.ZMQError) as exc:
                                nxt += core.on_send_failed(str(exc), time.monotonic())
                                continue
                            trace("origin: state handed to zmq")
                            nxt += self._await_ready(core, sock, mid)
                            trace("origin: ready came")
                        case Commit(location):
                            sock.send_multipart(transfer.message("commit", mid))
                            self.endpoint.run_in_io(lambda loc=location: self.endpoint.move_to(loc))
                            trace("origin: committed, peers redirected")
                        case Thaw(reason):
                            self.endpoint.run_in_io(self.endpoint.thaw)
                            with contextlib.suppress(zmq.ZMQError):
                                sock.send_multipart(transfer.message("abort", mid, message=reason), zmq.NOBLOCK)
                        case Report(ok, reason):
                            self._report(mid, ok, reason)
                effects = nxt
        finally:
            sock.close(linger=1000 if core.state == "committed" else 0)
        if core.state == "committed":
            self._linger_and_exit()

    def _freeze_and_export(self) -> tuple[dict[str, Any], list[bytes]]:
        self.endpoint.freeze()
        return self.endpoint.export_state()

    def _connect(self, endpoint: str) -> zmq.Socket:
        ident = self.session.identity
        sock = client_socket(self.endpoint.ctx, zmq.DEALER, ident, ident.public_key)   # the clone holds our key
        sock.sndhwm = sock.rcvhwm = 0
        sock.connect(endpoint)
        return sock

    @staticmethod
    def _cut(monitor: zmq.Socket) -> bool:
        """Whether the connection to the clone broke (its process or host died)."""
        import zmq.utils.monitor
        while monitor.poll(0):
            if zmq.utils.monitor.recv_monitor_message(monitor)["event"] == zmq.EVENT_DISCONNECTED:
                return True
        return False

    def _await_ready(self, core: Origin, sock: zmq.Socket, mid: str) -> list[Effect]:
        monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        try:
            return self._await(core, sock, monitor, mid)
        finally:
            with contextlib.suppress(zmq.ZMQError):
                sock.disable_monitor()
            monitor.close(0)

    def _await(self, core: Origin, sock: zmq.Socket, monitor: zmq.Socket, mid: str) -> list[Effect]:
        while True:
            now = time.monotonic()
            if now >= core.deadline:
                return core.on_timer(now)
            if self._cut(monitor):
                return core.on_send_failed("the connection to the clone was cut (its process or host died)", now)
            if not sock.poll(max(1, min(250, int((core.deadline - now) * 1000)))):
                continue
            try:
                env, _ = transfer.parse(sock.recv_multipart())
            except SnipeError as exc:
                log.warning("a malformed answer from the clone: %s", exc)
                continue
            if env.body["id"] != mid:
                continue
            if env.kind == "ready" and isinstance(env.body.get("location"), dict):
                return core.on_ready(env.body["location"], time.monotonic())
            if env.kind == "refused":
                return core.on_refused(str(env.body.get("message")), time.monotonic())

    def _report(self, mid: str, ok: bool, reason: str | None) -> None:
        s = self.session
        if not ok:
            log.warning("migration %s failed: %s", mid, reason)
        if s.local_daemon is None:
            return
        try:
            s.call_local("migrate-done", {"urn": s.me, "id": mid, "ok": ok, "reason": reason}, timeout=10)
        except SnipeError as exc:
            log.warning("could not tell the daemon how migration %s went: %s", mid, exc)

    def _linger_and_exit(self) -> None:
        """The process lives on in the clone. Answer stragglers with redirects for a while, then go."""
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        time.sleep(GRACE_S)
        os._exit(0)


__all__ = ["GRACE_S", "MIGRATE_TAG", "OriginShell"]
