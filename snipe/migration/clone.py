"""The clone's shell around `core.Clone`: what `snipe.init()` does in a process its daemon
started as the target of a migration (SNIPE_MIGRATION names the migration).

Before the original is disturbed it readies everything slow: the messaging endpoint (bound,
not yet announced), a transfer socket (CurveZMQ, accepting only the process's own key), and
tells its daemon where that socket listens. Then it waits for the state, restores it without
running anything, answers `ready` with its location, and on `commit` starts its messaging
thread, announces itself in the catalog (in the background: its peers were already redirected
to it) and returns the application's state for the on_restore hook. Without the state or the
commit in time, or with a state it cannot read, it exits: the original is still the process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import zmq

from snipe.catalog.client import CatalogClient
from snipe.daemonclient import DaemonClient
from snipe.errors import SnipeError
from snipe.messaging.endpoint import Endpoint
from snipe.migration import transfer
from snipe.migration.core import Clone, Effect, Exit, Restore, Run, SayReady
from snipe.migration.groups import join_here, reregister, restore_groups
from snipe.migration.origin import trace
from snipe.transport import sender_key, server_socket

if TYPE_CHECKING:
    from snipe.runtime import Session

log = logging.getLogger("snipe.migration")

STATE_WAIT_S = float(os.environ.get("SNIPE_MIGRATION_STATE_WAIT_S", "300"))
COMMIT_WAIT_S = 60.0


def become_clone(s: Session, mid: str) -> Any:
    """Take over the process from its original; returns the application's state."""
    assert s.me is not None
    me = s.me
    ep = Endpoint(me, s.identity, s.catalog_addresses, s.admin_key, host_urn=s.host,
                  runtime_dir=s.ipc_folder())
    ep.learn_comm(lambda values: s.catalog.set_many(me, values))
    ep.gate.learn(s.identity.public_key)        # the original connects with our own key
    sock = server_socket(ep.ctx, zmq.ROUTER, s.identity)
    sock.rcvhwm = sock.sndhwm = 0
    port = sock.bind_to_random_port("tcp://*")
    endpoints = [c["endpoint"].rsplit(":", 1)[0] + f":{port}" for c in ep.comm if c.get("transport") == "tcp"]
    core = Clone(state_timeout=STATE_WAIT_S, commit_timeout=COMMIT_WAIT_S)
    core.start(time.monotonic())
    assert s.local_daemon is not None
    s.daemon(s.local_daemon).call("clone-ready", {"urn": me, "id": mid, "endpoints": endpoints}, timeout=30)
    app: Any = None
    lib: dict[str, Any] = {}
    payloads: list[bytes] = []
    groups: dict[str, Any] = {}
    origin: bytes | None = None
    try:
        while True:
            now = time.monotonic()
            effects: list[Effect] = core.on_timer(now)
            if not effects and sock.poll(max(1, int(min(1.0, core.deadline - now) * 1000))):
                parts = sock.recv_multipart(copy=False)
                if sender_key(parts[0]) != s.identity.key_id:
                    continue                          # only the process itself may hand over its state
                try:
                    env, frames = transfer.parse([parts[1].bytes, *(p.buffer for p in parts[2:])])
                except (SnipeError, IndexError) as exc:
                    log.warning("a malformed migration message: %s", exc)
                    continue
                if env.body["id"] != mid:
                    continue
                origin = parts[0].bytes
                trace(f"clone: {env.kind} came")
                if env.kind == "prepare":              # before the blackout: admit the peers now
                    _admit_ahead(ep, env.body.get("keys"))
                    sock.send_multipart([origin, *transfer.message("prepared", mid)])
                    continue
                if env.kind == "state":
                    try:
                        lib, payloads, groups, app = transfer.decode_state(env, frames)
                    except SnipeError as exc:
                        sock.send_multipart([origin, *transfer.message("refused", mid, message=str(exc))])
                        effects = core.on_bad_state(str(exc), time.monotonic())
                    else:
                        effects = core.on_state(time.monotonic())
                elif env.kind == "commit":
                    effects = core.on_commit(time.monotonic())
                elif env.kind == "abort":
                    effects = core.on_abort(str(env.body.get("message")), time.monotonic())
            for e in effects:
                match e:
                    case Restore():
                        ep.restore_state(lib, payloads)
                        s._endpoint = ep
                        if groups:
                            restore_groups(s.membership(), groups)
                    case SayReady():
                        trace("clone: restored")
                        assert origin is not None
                        sock.send_multipart([origin, *transfer.message("ready", mid, location=ep.location())])
                    case Run():
                        ep.run()
                        trace("clone: running")
                        threading.Thread(target=_announce, args=(s, ep, mid, bool(groups)), daemon=True,
                                         name="snipe-migrated").start()
                        return app
                    case Exit(reason):
                        sys.stderr.write(f"snipe: migration {mid} abandoned: {reason}\n")
                        sys.stderr.flush()
                        os._exit(3)
    finally:
        sock.close(0)


def _admit_ahead(ep: Endpoint, keys: Any) -> None:
    """Learn and admit the keys the original's peers will reach us with after the redirect, so
    their handshakes need no catalog look-up then."""
    for key in keys if isinstance(keys, list) else []:
        with contextlib.suppress(ValueError, TypeError, SnipeError):
            k = bytes.fromhex(key)
            ep.gate.learn(k)
            ep.admission.admit(k)


def _announce(s: Session, ep: Endpoint, mid: str, in_groups: bool) -> None:
    """Tell the catalog and our daemon that the process is here now."""
    assert s.me is not None and s.local_daemon is not None
    try:                  # clients of our own: the application's thread uses the session's
        with CatalogClient(s.catalog_addresses, s.identity, s.admin_key) as catalog:
            catalog.set_many(s.me, ep.location())
            if in_groups and s._membership is not None:
                reregister(s._membership, catalog, s.host)
        with DaemonClient(s.local_daemon, s.identity) as daemon:
            daemon.call("clone-running", {"urn": s.me, "id": mid}, timeout=30)
            if in_groups and s._membership is not None:
                join_here(s._membership, lambda kind, body: daemon.call(kind, body, timeout=30))
    except SnipeError as exc:
        log.warning("migration %s: could not announce the new location: %s", mid, exc)


__all__ = ["become_clone"]
