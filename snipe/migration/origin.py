"""The migrating process's shell around `core.Origin`.

Its daemon asks it to move (a msgpack message under the reserved tag `MIGRATE_TAG`, from the
daemon's own URN, naming the clone's transfer endpoints). The I/O thread only notes the request
and wakes the application's thread; that thread, at its next snipe call (recv, send, probe,
safe_point), takes the application's state through the on_checkpoint hook, freezes messaging,
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
    from snipe.messaging.endpoint import Endpoint, Message
    from snipe.runtime import Session

log = logging.getLogger("snipe.migration")

MIGRATE_TAG = -12            # daemon -> task: move to this clone
GRACE_S = float(os.environ.get("SNIPE_MIGRATION_GRACE_S", "5"))
READY_BASE_S = 10.0          # the clone's `ready` may take this, plus the transfer at READY_RATE
READY_RATE = 20e6            # bytes/s assumed at worst for the transfer (CurveZMQ on a loaded host)


class OriginShell:
    def __init__(self, session: Session, endpoint: Endpoint) -> None:
        self.session, self.endpoint = session, endpoint
        self.request: dict[str, Any] | None = None
        endpoint.system_handlers[MIGRATE_TAG] = self._on_request
        endpoint.at_safe_point = self.at_safe_point

    # I/O thread
    def _on_request(self, m: Message) -> None:
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
        self.request = req
        self.endpoint.ask_safe_point()

    # the application's thread
    def at_safe_point(self) -> None:
        req, self.request = self.request, None
        if req is None:
            return
        mid = req["id"]
        if not hooks.has_checkpoint_hook():
            self._report(mid, False, "the task registered no on_checkpoint hook, so it cannot be resumed "
                                     "mid-computation elsewhere; add snipe.on_checkpoint/on_restore, or restart it")
            return
        try:
            app = hooks.save_state()
        except SnipeError as exc:
            self._report(mid, False, str(exc))
            return
        size = len(app) if isinstance(app, bytes | bytearray | memoryview) else 0
        core = Origin(tuple(req["endpoints"]), ready_timeout=READY_BASE_S + size / READY_RATE)
        sock: zmq.Socket | None = None
        try:
            effects: list[Effect] = core.at_safe_point(time.monotonic(), req["until"])
            while effects:
                nxt: list[Effect] = []
                for e in effects:
                    match e:
                        case Freeze():
                            lib, payloads = self.endpoint.run_in_io(self._freeze_and_export)
                            groups = export_groups(self.session._membership)
                        case SendState(endpoints):
                            sock = self._connect(endpoints[0])
                            try:
                                sock.send_multipart(transfer.encode_state(mid, lib, payloads, groups, app), copy=False)
                            except (CodecError, zmq.ZMQError) as exc:
                                nxt += core.on_send_failed(str(exc), time.monotonic())
                                continue
                            nxt += self._await_ready(core, sock, mid)
                        case Commit(location):
                            assert sock is not None
                            sock.send_multipart(transfer.message("commit", mid))
                            self.endpoint.run_in_io(lambda loc=location: self.endpoint.move_to(loc))
                        case Thaw(reason):
                            self.endpoint.run_in_io(self.endpoint.thaw)
                            if sock is not None:
                                sock.send_multipart(transfer.message("abort", mid, message=reason), zmq.NOBLOCK)
                        case Report(ok, reason):
                            self._report(mid, ok, reason)
                effects = nxt
        finally:
            if sock is not None:
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

    def _await_ready(self, core: Origin, sock: zmq.Socket, mid: str) -> list[Effect]:
        while True:
            now = time.monotonic()
            if now >= core.deadline:
                return core.on_timer(now)
            if not sock.poll(max(1, int((core.deadline - now) * 1000))):
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
            s.daemon(s.local_daemon).call("migrate-done", {"urn": s.me, "id": mid, "ok": ok, "reason": reason},
                                          timeout=10)
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
