"""The daemons' part of process migration (SNIPE 4.6; the protocol is snipe/migration/core.py).

Source side (`migrate {urn, host, timeout}` from the task's owner or the admin): one worker
thread per migration carries out `core.Source`'s effects: it asks the target daemon for a clone
(`clone`), which answers once the clone is up and listening for the state; it asks the task to
move (a message under MIGRATE_TAG from this daemon's own URN); and it waits for the task's
verdict (`migrate-done`). The main loop answers the caller with the verdict and, on success,
marks the task "migrated": its process lingers a few seconds for stragglers and its exit is not
published (the process lives on elsewhere).

Target side (`clone {...}` from the daemon of the host the catalog says the task is on): start
the clone with the task's own key and SNIPE_MIGRATION set, and answer when it says
`clone-ready` (or fail if it exits or does not say so in time). Nothing is published for it
until it says `clone-running`; then this daemon becomes its supervisor, and appends a
`migrated` event (which Process.events() watchers see) and tells the notify list. A migrated
task's records are signed with the task's own key, which its first host delegated every name
to: the first host owns the URN and only it could delegate to this daemon's key, and it may be
gone by now.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgpack
from snipe_daemon.fields import environment_of, seconds_of, seq_of, shown, texts_of
from snipe_daemon.tasks import LIVE_STATES, Quota

from snipe.catalog.client import now_ms
from snipe.daemonclient import DaemonClient
from snipe.errors import CodecError, MigrationFailed, NotAuthorized, NotFound, SnipeError
from snipe.identity import Identity
from snipe.migration.core import AskTask, DropClone, Effect, Finish, Source, StartClone
from snipe.migration.origin import MIGRATE_TAG
from snipe.urn import validate_urn
from snipe.wire import Envelope, field_of

if TYPE_CHECKING:
    from snipe_daemon.server import Daemon

log = logging.getLogger("snipe.daemon.migration")

CLONE_TIMEOUT_S = 60.0
MIGRATION_FAILED = "migration-failed"      # the event a task gets when a move of it failed (it runs on)
NOTIFY_TAG = 0x7FFF0000     # what a notify-list process receives: msgpack {urn, seq, kind, at, reason}


@dataclass
class Outgoing:
    mid: str
    urn: str
    target: str
    target_daemon: str
    client: bytes
    env: Envelope
    core: Source
    reports: queue.Queue[tuple[bool, str | None]] = field(default_factory=queue.Queue)


@dataclass
class Incoming:
    mid: str
    client: bytes
    env: Envelope
    deadline: float


class Migrations:
    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon
        self.outgoing: dict[str, Outgoing] = {}
        self.incoming: dict[str, Incoming] = {}
        self.finished: queue.Queue[tuple[Outgoing, Finish]] = queue.Queue()

    # --- source side ---------------------------------------------------------------------------
    def begin(self, client: bytes, key: str, env: Envelope) -> None:
        d = self.d
        urn = d._known(env)
        if key != d.cfg.identity.key_id:           # the host itself may move its tasks (drain)
            d._check_controller(key, urn)
        timeout = seconds_of(env, "timeout", 120.0)
        rec = d.tasks[urn]
        if rec["state"] != "running":
            raise MigrationFailed(f"{urn} is {rec['state']} on {d.cfg.host_urn}; only a running task can migrate")
        if urn in self.outgoing:
            raise MigrationFailed(f"{urn} is already migrating to {self.outgoing[urn].target}")
        target = validate_urn(field_of(env, "host", str))
        if not target.startswith("urn:snipe:host:"):
            raise CodecError(f"migrate: host must be a host URN (urn:snipe:host:<id>), not {target}")
        if target == d.cfg.host_urn:
            raise MigrationFailed(f"{urn} already runs on {target}")
        entry = d.catalog.get(target)
        address = entry.value("daemon", now_ms())
        if not isinstance(address, str) or entry.value("alive", now_ms()) is not True:
            raise MigrationFailed(f"{target} has no live daemon in the catalog; choose a live host")
        if entry.value("draining", now_ms()) is True:
            raise MigrationFailed(f"{target} is draining and takes no new tasks; choose another host")
        core = Source(urn, target, clone_timeout=min(CLONE_TIMEOUT_S, timeout), move_timeout=timeout)
        mig = Outgoing(uuid.uuid4().hex, urn, target, address, client, env, core)
        self.outgoing[urn] = mig
        threading.Thread(target=self._work, args=(mig,), name=f"migrate-{urn[-8:]}", daemon=True).start()

    def _work(self, mig: Outgoing) -> None:
        """Carry out the Source core's effects (a worker thread: blocking calls are fine here)."""
        core = mig.core
        began = time.monotonic()
        effects: list[Effect] = core.start(began)
        try:
            while True:
                nxt: list[Effect] = []
                for e in effects:
                    match e:
                        case StartClone():
                            try:
                                with DaemonClient(mig.target_daemon, self.d.cfg.identity) as target:
                                    reply, _ = target.call("clone", self._clone_body(mig), timeout=core.clone_timeout)
                                nxt += core.on_clone_ready(list(reply.get("endpoints", [])), time.monotonic())
                                log.info("migration %s of %s: clone ready on %s after %.3f s", mig.mid, mig.urn,
                                         mig.target, time.monotonic() - began)
                            except SnipeError as exc:
                                nxt += core.on_clone_failed(str(exc), time.monotonic())
                        case AskTask(endpoints):
                            ask = {"id": mig.mid, "endpoints": list(endpoints),
                                   "until_s": max(0.0, core.deadline - time.monotonic())}
                            self.d.endpoint.send(mig.urn, msgpack.packb(ask), MIGRATE_TAG, deadline_s=core.move_timeout)
                        case DropClone():
                            with contextlib.suppress(SnipeError), \
                                    DaemonClient(mig.target_daemon, self.d.cfg.identity) as target:
                                target.call("clone-drop", {"urn": mig.urn, "id": mig.mid}, timeout=10)
                        case Finish():
                            log.info("migration %s of %s: %s after %.3f s", mig.mid, mig.urn,
                                     "done" if e.ok else f"failed ({e.reason})", time.monotonic() - began)
                            self.finished.put((mig, e))
                if core.state in ("done", "failed"):
                    return
                if nxt:
                    effects = nxt
                    continue
                try:
                    ok, reason = mig.reports.get(timeout=max(0.01, core.deadline - time.monotonic()))
                    effects = core.on_task_report(ok, reason, time.monotonic())
                except queue.Empty:
                    effects = core.on_timer(time.monotonic())
        except Exception as exc:        # a bug must still answer the caller
            log.exception("migration %s failed", mig.mid)
            self.finished.put((mig, Finish(False, f"the daemon failed while migrating ({exc})")))

    def _clone_body(self, mig: Outgoing) -> dict[str, Any]:
        d = self.d
        rec = d.tasks[mig.urn]
        record = rec["record"]
        ident = Identity.load(Path(record["cwd"]) / "task.key")
        return {"urn": mig.urn, "id": mig.mid, "code": rec["code"], "args": rec.get("args", record["argv"][2:]),
                "env": rec.get("env", {}), "quota": record["quota"], "owner": rec["owner"],
                "notify": rec.get("notify", []), "events": rec["events"], "seq": rec["seq"],
                "restart": rec.get("restart"), "every": float(rec.get("every") or 0.0),
                "seed": ident.seed.hex(), "from": d.cfg.host_urn,
                "timeout": mig.core.clone_timeout}        # the target gives up then too (a fetch of the code)

    def task_report(self, client: bytes, key: str, env: Envelope) -> None:
        """`migrate-done {urn, id, ok, reason}` from the migrating task itself."""
        d = self.d
        urn = d._known(env)
        if key != self._task_key(urn):
            raise NotAuthorized(f"only {urn} itself may report how its migration went")
        mig = self.outgoing.get(urn)
        if mig is not None and mig.mid == field_of(env, "id", str):
            mig.reports.put((bool(field_of(env, "ok", bool)), env.body.get("reason")))
        d._reply(client, env.reply())

    def _finish(self, mig: Outgoing, verdict: Finish) -> None:
        d = self.d
        self.outgoing.pop(mig.urn, None)
        if not verdict.ok:
            self._note_failure(mig, verdict.reason)
            d._reply(mig.client, mig.env.error_reply(MigrationFailed(
                f"{mig.urn} was not moved to {mig.target} and still runs on {d.cfg.host_urn}: {verdict.reason}")))
            return
        rec = d.tasks[mig.urn]
        rec["state"], rec["moved_to"] = "migrated", mig.target
        d.state.put_task(mig.urn, rec)
        d._reply(mig.client, mig.env.reply(urn=mig.urn, **{"from": d.cfg.host_urn}, to=mig.target,
                                           supervisor=mig.target_daemon))

    def _note_failure(self, mig: Outgoing, reason: str | None) -> None:
        """A failed migration is an event of the task's (`Process.events()`, `snipe-console events`),
        which runs on here: its state stays as it was (the clone on the target is dropped, never a task)."""
        d = self.d
        rec = d.tasks.get(mig.urn)
        if rec is None or rec["state"] not in LIVE_STATES:      # it ended meanwhile: that is its last word
            return
        d._note_event(mig.urn, MIGRATION_FAILED, f"not moved to {mig.target}, still runs on {d.cfg.host_urn}: "
                                                 f"{reason or 'no reason given'}")
        self._tell_notify_list(mig.urn, rec)

    # --- target side ---------------------------------------------------------------------------
    def clone(self, client: bytes, key: str, env: Envelope) -> None:
        d = self.d
        urn = validate_urn(field_of(env, "urn", str))
        mid = field_of(env, "id", str)
        entry = d.catalog.get(urn)
        now = now_ms()
        host = entry.value("host", now)
        host_key = d.catalog.get(host).value("key", now) if isinstance(host, str) else None
        if key != host_key and key != d.cfg.admin_key.hex():
            raise NotAuthorized(f"only the daemon of {urn}'s host ({host}) may move it here")
        if d.draining:
            raise NotAuthorized(f"{d.cfg.host_urn} is draining and takes no new tasks; choose another host")
        old = d.tasks.get(urn)
        if old is not None and old["state"] in ("running", "suspended"):
            raise MigrationFailed(f"{urn} already runs on {d.cfg.host_urn}")
        # Every field is checked before anything is stopped, written or started.
        seed = field_of(env, "seed", str)
        if len(seed) != 64 or not all(c in "0123456789abcdefABCDEF" for c in seed):
            raise CodecError(f"clone: seed must be the task key's 32-byte seed in hex (64 digits), not {shown(seed)}")
        ident = Identity.from_seed(bytes.fromhex(seed))
        if ident.key_id != entry.value("key", now):
            raise NotAuthorized(f"the key sent for {urn} is not the key the catalog names for it")
        code = validate_urn(field_of(env, "code", str))
        args = texts_of(env, "args")
        extra_env = environment_of(env, "env")
        quota = Quota.from_value(field_of(env, "quota", dict, {}))
        every = seconds_of(env, "every", 0.0)
        owner = field_of(env, "owner", str)
        events = field_of(env, "events", list, [])
        if not all(isinstance(e, dict) and type(e.get("seq")) is int for e in events):
            raise CodecError("clone: events must be a list of maps, each with an integer seq")
        seq = seq_of(env, "seq", 1)
        notify = [validate_urn(u) for u in field_of(env, "notify", list, [])]
        source = field_of(env, "from", str, "")
        if source:
            validate_urn(source)
        restart = env.body.get("restart")
        code_dir, manifest = d._fetch_code(code)     # before anything is stopped: it may wait for the fetch
        if old is not None:
            self._end_lingering(urn)
        workdir = d.tasks_dir / urn.rsplit(":", 1)[1]
        workdir.mkdir(parents=True, exist_ok=True)
        ident.save(workdir / "task.key")
        record = d.launch(urn, code_dir, manifest, args, extra_env, quota, workdir, {"SNIPE_MIGRATION": mid}, every)
        d.tasks[urn] = {"record": record.to_value(), "owner": owner, "code": code,
                        "state": "running", "events": list(events), "seq": seq, "notify": notify,
                        "args": args, "env": extra_env, "key": ident.key_id, "key_file": str(workdir / "task.key"),
                        "incoming": mid, "from": source, "every": every,
                        "restart": restart if isinstance(restart, str) else None}
        d.state.put_task(urn, d.tasks[urn])
        d.task_keys[urn] = ident
        self.incoming[urn] = Incoming(mid, client, env, time.monotonic() + CLONE_TIMEOUT_S)

    def _end_lingering(self, urn: str) -> None:
        """The task comes back to a host where its earlier self may still linger, answering
        stragglers with redirects: end that one now (the new original redirects its peers)."""
        d = self.d
        with contextlib.suppress(SnipeError):
            if d.runner.record(urn).live:
                d.runner.kill(urn, reason="the task came back here; its earlier self stops redirecting")
                d.runner.wait(urn, 10)
        d._poll_tasks()                       # its exit is taken while the record still says it moved
        with contextlib.suppress(SnipeError):
            d.runner.forget(urn)

    def clone_ready(self, client: bytes, key: str, env: Envelope) -> None:
        urn = self.d._known(env)
        inc = self._incoming_of(urn, key, env)
        endpoints = [str(e) for e in field_of(env, "endpoints", list)]
        self.incoming.pop(urn, None)
        if inc is not None:
            self.d._reply(inc.client, inc.env.reply(endpoints=endpoints, pid=self.d.tasks[urn]["record"]["pid"]))
        self.d._reply(client, env.reply())

    def clone_running(self, client: bytes, key: str, env: Envelope) -> None:
        d = self.d
        urn = d._known(env)
        rec = d.tasks[urn]
        if key != rec.get("key") or rec.get("incoming") != field_of(env, "id", str):
            raise NotAuthorized(f"only the clone of {urn} may say it runs")
        del rec["incoming"]
        rec["seq"] += 1
        event = {"seq": rec["seq"], "kind": "migrated", "at": time.time(),
                 "reason": f"moved from {rec.get('from') or 'another host'} to {d.cfg.host_urn}"}
        rec["events"] = (rec["events"] + [event])[-64:]
        d.state.put_task(urn, rec)
        d._reply(client, env.reply())
        self.put_as_task(urn, {"host": d.cfg.host_urn, "supervisor": d.cfg.address, "state": "running",
                               "events": rec["events"], "pid": rec["record"]["pid"]})
        self._tell_notify_list(urn, rec)

    def _tell_notify_list(self, urn: str, rec: dict[str, Any]) -> None:
        """Tell the task's notify list of its latest event: how a migration of it went."""
        event = rec["events"][-1]
        told = {"urn": urn, "seq": event["seq"], "kind": event["kind"], "at": event["at"], "reason": event["reason"]}
        for n in rec.get("notify", []):
            with contextlib.suppress(SnipeError):
                self.d.endpoint.send(n, msgpack.packb(told), NOTIFY_TAG)

    def clone_drop(self, client: bytes, key: str, env: Envelope) -> None:
        d = self.d
        if d.drop_parked_clone(key, validate_urn(field_of(env, "urn", str)), field_of(env, "id", str)):
            d._reply(client, env.reply())       # it was waiting for its code: never launched
            return
        urn = d._known(env)
        rec = d.tasks[urn]
        source = rec.get("from")
        source_key = d.catalog.get(source).value("key", now_ms()) if source else None
        if key not in (source_key, d.cfg.admin_key.hex()):
            raise NotAuthorized(f"only the daemon that asked for the clone of {urn} may drop it")
        if rec.get("incoming") == field_of(env, "id", str):
            self._drop(urn, "the migration was abandoned")
        d._reply(client, env.reply())

    def _drop(self, urn: str, why: str) -> None:
        inc = self.incoming.pop(urn, None)
        if inc is not None:
            self.d._reply(inc.client, inc.env.error_reply(MigrationFailed(why)))
        with contextlib.suppress(SnipeError):
            self.d.runner.kill(urn, reason=why)

    def _incoming_of(self, urn: str, key: str, env: Envelope) -> Incoming | None:
        rec = self.d.tasks[urn]
        if key != rec.get("key") or rec.get("incoming") != field_of(env, "id", str):
            raise NotAuthorized(f"only the clone of {urn} for this migration may say so")
        return self.incoming.get(urn)

    # --- both ------------------------------------------------------------------------------------
    def quiet(self, urn: str) -> bool:
        """Whether a task's events stay off the catalog: a clone not yet running, or an original
        that moved away (the process lives on elsewhere)."""
        rec = self.d.tasks.get(urn, {})
        return bool(rec.get("incoming") or rec.get("moved_to"))

    def clone_exited(self, urn: str) -> None:
        """A clone ended before it took over: the migration waiting on it fails, saying why."""
        tail = self.d._stderr_tail(urn).strip()[-400:]
        inc = self.incoming.pop(urn, None)
        if inc is not None:
            self.d._reply(inc.client, inc.env.error_reply(MigrationFailed(
                f"the clone exited before it took over: {tail or 'no output'}")))

    def forget_clone(self, urn: str) -> None:
        """Drop every trace here of a clone that ended before it took over (the migration failed):
        the task never ran on this host, so `ps` must not list it (as lost) nor a wait find it.
        Its working folder stays, with the clone's stderr for whoever looks into why."""
        d = self.d
        self.incoming.pop(urn, None)
        d.tasks.pop(urn, None)
        d.task_keys.pop(urn, None)
        d.unpublished.discard(urn)
        d.state.drop_task(urn)
        with contextlib.suppress(SnipeError):
            d.runner.forget(urn)

    def put_as_task(self, urn: str, values: dict[str, Any]) -> None:
        """Publish a migrated task's values, signed with its own key (see the module docstring)."""
        key = self.d._task_key(urn)
        if key is None:
            raise NotFound(f"the key of {urn} is not on {self.d.cfg.host_urn}")
        self.d._put_as(key, urn, values)

    def tick(self, now: float) -> None:
        while True:
            try:
                mig, verdict = self.finished.get_nowait()
            except queue.Empty:
                break
            self._finish(mig, verdict)
        for urn, inc in list(self.incoming.items()):
            if now >= inc.deadline:
                self._drop(urn, f"the clone did not get ready within {CLONE_TIMEOUT_S:g} s")

    def _task_key(self, urn: str) -> str | None:
        key = self.d.tasks[urn].get("key")
        if key is None:
            with contextlib.suppress(SnipeError):
                key = self.d.catalog.get(urn).value("key", now_ms())
        return key if isinstance(key, str) else None


__all__ = ["MIGRATION_FAILED", "NOTIFY_TAG", "Migrations", "NotFound"]
