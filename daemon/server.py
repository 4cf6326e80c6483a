"""snipe-daemon's shell: one per host. It publishes the host, and spawns and controls tasks.

One thread owns the sockets and the task runner. Each turn it answers what arrived, polls its
tasks (exits, quota breaches), publishes what changed to the catalog, and refreshes the host's
lease. Code it does not hold is fetched off that thread (daemon/fetches.py): the spawn (or
takeover, or clone) that needs it waits, parked, and is carried on with when the fetch ends.
Task state is written to the daemon's LMDB before it is acted on, so a daemon killed with SIGKILL
and restarted re-adopts its running tasks and reports the vanished ones as lost.

Catalog records the daemon keeps for a task `urn:snipe:proc:<id>` (owned by the host key, which
vouches for the task's own key with `_delegate.<task key>`): host, owner (the key that spawned
it), code, args, supervisor (this daemon's address), pid, started, notify, state, and
`events`: the list of {seq, kind, at, exit_code?, reason?} so far, which watchers follow.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import queue
import shutil
import signal as signals
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
from snipe_daemon.fetches import AwaitingCode, CodeFetches, FetchEnded, ask_holders
from snipe_daemon.fields import environment_of, seconds_of, shown, texts_of
from snipe_daemon.hostinfo import LoadSampler, collect_host_info
from snipe_daemon.locations import LiveDaemons, Republisher
from snipe_daemon.mcast import GroupRouter
from snipe_daemon.migration import CLONE_TIMEOUT_S, MIGRATION_FAILED, Migrations
from snipe_daemon.pool import WarmPool, reap_orphans
from snipe_daemon.relay import Relay
from snipe_daemon.state import DaemonState
from snipe_daemon.takeover import TakeoverWatcher
from snipe_daemon.tasks import LIVE_STATES, Quota, TaskEvent, TaskRunner
from snipe_daemon.waits import Waits

from snipe import authority
from snipe.admission import CatalogAdmission
from snipe.assertion import make_assertion
from snipe.bidding import DEFAULT_PRICE, HostState, Refusal, bid
from snipe.catalog.client import CatalogClient
from snipe.code import CodeCache, entry_argv
from snipe.code import verify as verify_blob
from snipe.daemonclient import PROTOCOL, SPAWN_TIMEOUT_S, VERSION, VERSIONS, WAIT_HOLD_S, DaemonClient
from snipe.errors import (
    CodecError,
    ConfigError,
    MigrationFailed,
    NotAuthorized,
    NotDelivered,
    NotFound,
    QuotaExceeded,
    ServerError,
    SnipeError,
    TooLarge,
    UnknownRequest,
    Unreachable,
    UrnError,
)
from snipe.identity import Identity
from snipe.messaging.endpoint import Endpoint
from snipe.privatedir import IPC_DIR_ENV, private_dir
from snipe.query import parse_predicates
from snipe.replication.sealed import seal, unseal
from snipe.replication.takeover import Claim
from snipe.startup import listen_on
from snipe.transport import KeyGate, sender_key, server_socket
from snipe.urn import new_urn, parse_urn, validate_urn
from snipe.wire import Envelope, check_version, decode, encode, field_of

log = logging.getLogger("snipe.daemon")

TICK_S = 0.1
MANIFEST_TTL_S = 10.0          # how long a verified code manifest is trusted without asking the catalog again
REAP_S = 1.0                   # how often orphans adopted as subreaper are collected
MAX_EVENTS_KEPT = 64
# Events that note something about a task without changing its state: they leave the `reason` on
# its URN (why it is in that state) as it was.
NOTE_EVENTS = (MIGRATION_FAILED,)
MAX_FILE_BYTES = 1 << 30       # a stored blob (a checkpoint) at most this big
RESTART_POLICIES = ("on-host-failure",)
REPLICA_MODES = ("standby", "all")
GIVE_CODE_TIMEOUT_S = 5.0       # a spawn's push of code to a standby host, at most (capped at a quarter lease)
LEASE_RETRY_S = 0.5             # a host lease renewal that failed is tried again after at least this
FETCH_CONNECT_S = 5.0           # fetching a checkpoint: the most it waits for one holder to connect
TAKEOVER_TRIES = 5             # a won takeover that fails (code or checkpoint unreachable) is tried again
STANDBY_CHECKPOINT_S = 1.0     # a standby-replicated task checkpoints this often unless told otherwise


@dataclass(frozen=True)
class ParkedRequest:
    """A request that waits for code to be fetched: served again once it is here, unless its
    client stopped waiting first (`expires`, monotonic: its timeout from when it came). Only
    spawn and clone fetch code, and neither carries frames: none are kept (they may be 1 GiB)."""
    client: bytes
    key: str
    env: Envelope
    code: str
    expires: float


@dataclass(frozen=True)
class ParkedTakeover:
    """A takeover, copy or standby fetch (a `takeovers` item) that waits for code."""
    claim: Claim | None
    values: dict[str, Any]


@dataclass
class DaemonConfig:
    host_id: str
    listen: str
    state_dir: Path
    identity: Identity
    admin_key: bytes
    catalog: list[str]
    advertise: str | None = None          # the endpoint others should use, if not `listen`
    lease_s: float = 10.0
    net_names: dict[str, str] = field(default_factory=dict)
    link_speeds: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    python: str = sys.executable
    warm_pool: int = 2                      # interpreters kept ready to become tasks
    relay: str | None = None                # listen endpoint of the gateway relay (None: this host relays nothing)
    price: float = DEFAULT_PRICE            # per CPU-second, what this host asks in its bids (snipe/bidding.py)
    takeover_backoff_s: float = 1.0         # a failed takeover is tried again after this, then twice as long
    wait_hold_s: float = WAIT_HOLD_S        # a `wait` is answered after this at most (renew: ask again)

    @property
    def host_urn(self) -> str:
        return f"urn:snipe:host:{self.host_id}"

    @property
    def address(self) -> str:
        return f"{self.advertise or self.listen}#{self.identity.key_id}"


class Daemon:
    def __init__(self, cfg: DaemonConfig) -> None:
        # absolute: the paths under it that tasks are given (SNIPE_IPC_DIR, SNIPE_KEY_FILE) must
        # not resolve against a task's own working folder
        cfg.state_dir = cfg.state_dir.absolute()
        self.cfg = cfg
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        # Its endpoint's ipc socket goes in this host's own folder, and so do its tasks' (_task_env).
        self.ipc_dir = private_dir(cfg.state_dir / "msg", fix=f"set the daemon's state_dir (--state-dir; now "
                                                              f"{cfg.state_dir}) to a folder of its own user's")
        self.state = DaemonState(cfg.state_dir / "state")
        self.codes = CodeCache(cfg.state_dir / "code")
        self.files = CodeCache(cfg.state_dir / "files", kind="file")     # checkpoints others stored here
        self.takeovers: queue.Queue[tuple[Claim | None, dict[str, Any]]] = queue.Queue()   # None: fetch code
        self.task_keys: dict[str, Identity] = {}    # tasks taken over: their key signs their catalog entry
        self._takeover_retries: list[tuple[float, Claim, dict[str, Any]]] = []     # (not before, claim, values)
        self._manifests: dict[str, tuple[float, dict[str, Any]]] = {}   # code URN -> (good until, manifest)
        self._next_reap = 0.0
        self.tasks_dir = cfg.state_dir / "tasks"
        self.catalog = CatalogClient(cfg.catalog, cfg.identity, cfg.admin_key, timeout=5.0)
        try:
            self._check_host_admitted()
        except SnipeError:
            self.catalog.close()
            self.state.close()
            raise
        self.relocation: Republisher | None = self._relocation()
        self.ctx = zmq.Context()
        self.admission = CatalogAdmission(cfg.catalog, cfg.identity, cfg.admin_key)
        self.gate = KeyGate(self.ctx, self.admission.admit, self.admission.resolve)
        self.gate.install()
        self.gate.learn(cfg.admin_key)
        self.router = server_socket(self.ctx, zmq.ROUTER, cfg.identity)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.router.maxmsgsize = MAX_FILE_BYTES     # no frame is bigger (a checkpoint; code: snipe/code.py)
        try:
            listen_on(self.router, cfg.listen)
            # A gateway host relays sealed messages between hosts that share no network (daemon/relay.py).
            self.relay = Relay(self.ctx, cfg.identity, cfg.host_urn, cfg.catalog, cfg.admin_key, cfg.relay) \
                if cfg.relay else None
        except SnipeError:          # before the warm pool starts interpreters: nothing is left running
            self._close_base()
            raise
        self.runner = TaskRunner()
        self.pool = WarmPool(cfg.warm_pool, cfg.state_dir / "tasks", cfg.python)
        self.waiters = Waits(hold_s=cfg.wait_hold_s)
        self.fetches = CodeFetches(self.codes, cfg.identity)
        self.tasks: dict[str, dict[str, Any]] = self.state.all_tasks()
        self.migrations = Migrations(self)       # before re-adoption: task events ask it
        self.draining = bool(self.state.get_meta("draining", False))
        self.sampler = LoadSampler()
        self.next_lease = 0.0
        self._stop = False
        self.lease_until = time.monotonic() + cfg.lease_s   # our host lease runs out then (monotonic)
        self.unpublished: set[str] = set()        # tasks whose latest state the catalog has not taken yet
        self.supervisor_due: set[str] = set()     # re-adopted tasks whose `supervisor` must name us (again)
        self._readopt()
        self.comm: dict[str, Any] = {}
        self._publish_host()              # before anyone is told the daemon is ready
        # The daemon's own messaging endpoint (its URN is the host's): multicast routing.
        self.endpoint = Endpoint(cfg.host_urn, cfg.identity, cfg.catalog, cfg.admin_key, host_urn=cfg.host_urn,
                                 runtime_dir=self.ipc_dir, application=False)
        self.endpoint.start(self._publish_comm)
        if self.relay is not None:
            self.relay.start()
        # It restores the groups it served before a restart from the state (daemon/mcast.py).
        self.groups = GroupRouter(cfg.host_urn, cfg.address, self.catalog, self.endpoint, cfg.lease_s,
                                  keep_lease=self._lease_while_blocked, store=self.state)
        self.next_lease = time.monotonic() + cfg.lease_s / 3
        self.watcher = TakeoverWatcher(cfg.host_urn, cfg.identity, cfg.catalog, cfg.admin_key,
                                       lambda claim, values: self.takeovers.put((claim, values)),
                                       lambda code: self.takeovers.put((None, {"code": code})),
                                       lambda values: self.takeovers.put((None, values)))
        self.watcher.start()

    # --- admission ----------------------------------------------------------------------------
    def _check_host_admitted(self) -> None:
        entry = self.catalog.get(self.cfg.host_urn)
        owner = authority.effective_owner(entry.records, self.cfg.admin_key, _now_ms())
        if owner is None or owner.signer != self.cfg.admin_key or owner.value != self.cfg.identity.key_id:
            raise NotAuthorized(
                f"{self.cfg.host_urn} is not assigned to this daemon's key {self.cfg.identity.key_id[:16]}…; "
                f"the admin must run: snipe-console admit host {self.cfg.host_id} {self.cfg.identity.key_id}")

    # --- main loop ----------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop = True

    def serve_forever(self) -> None:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.fetches.fileno(), zmq.POLLIN)
        next_tick = 0.0
        try:
            while not self._stop:
                ready = dict(poller.poll(TICK_S * 1000))
                if self.router in ready:
                    self._drain()
                if self.fetches.fileno() in ready:
                    self._after_fetches()
                now = time.monotonic()
                if now >= next_tick:
                    next_tick = now + TICK_S
                    self._tick(now)
        finally:
            self.close()

    def _publish_comm(self, values: dict[str, Any]) -> None:
        self.comm = {k: v for k, v in values.items() if k in ("comm", "instance")}
        self._publish_host()

    def close(self) -> None:
        answered = self._answer_parked_on_shutdown()
        self.watcher.stop()
        self.endpoint.close()
        if self.relay is not None:
            self.relay.close()
        self.pool.close()
        # a moment for those answers to leave; none otherwise (a stopping daemon waits for no peer)
        self._close_base(linger_ms=1000 if answered else 0)

    def _answer_parked_on_shutdown(self) -> int:
        """Stop the code fetches, and answer every request still waiting for one: this daemon
        will not serve it. How many were answered (parked takeovers need no answer: the claim
        is ours, and a takeover watcher finds the task again when the daemon is back)."""
        answered = 0
        for waiter in self.fetches.close():
            if isinstance(waiter, ParkedRequest):
                why = (f"{waiter.env.kind}: not served: {self.cfg.host_urn}'s daemon is shutting down while code "
                       f"{waiter.code} was being fetched for it; nothing was started, ask again (another host, or "
                       "this one once it is back)")
                self._reply(waiter.client, waiter.env.error_reply(    # NotDelivered: another host may be asked
                    MigrationFailed(why) if waiter.env.kind == "clone" else NotDelivered(why)))
                answered += 1
        return answered

    def _close_base(self, linger_ms: int = 0) -> None:
        """Close what __init__ opens before the warm pool starts (also when binding fails)."""
        self.router.close(linger_ms)
        self.gate.stop()
        self.admission.close()
        self.catalog.close()
        self.ctx.term()
        self.state.close()

    def _poll_tasks(self) -> None:
        for ev in self.runner.poll(time.time()):
            self._task_event(ev)

    def _tick(self, now: float) -> None:
        self._poll_tasks()
        if self.relocation is not None and self.relocation.step(now):
            self.relocation = None
        self._run_takeovers(now)
        self._expire_parked(now)
        for item in [r for r in self._takeover_retries if r[0] <= now]:
            self._takeover_retries.remove(item)
            self.takeovers.put((item[1], item[2]))
        self.pool.refill()
        if self.pool.fork and now >= self._next_reap:
            self._next_reap = now + REAP_S
            reap_orphans(self.runner.pids() | self.pool.pids())
        self.groups.tick(now)
        self.migrations.tick(now)
        self._answer_waits(now)
        self._keep_lease(now)

    def _run_takeovers(self, now: float) -> None:
        """Carry out the takeovers, copies and standby code fetches queued (`takeovers`)."""
        while not self.takeovers.empty():
            claim, values = self.takeovers.get_nowait()
            try:
                if claim is None and "copy" in values:      # run our copy of a task in mode "all"
                    self._start_copy(values)
                elif claim is None:          # we stand by for a replicated task: hold its code
                    self._fetch_code(validate_urn(str(values["code"])))
                else:
                    self._take_over(claim, values)
            except AwaitingCode as wanted:       # tried again once the code is here
                self._park_takeover(now, claim, values, wanted)
            except SnipeError as exc:
                self._takeover_failed(now, claim, values, exc)

    def _park_takeover(self, now: float, claim: Claim | None, values: dict[str, Any], wanted: AwaitingCode) -> None:
        if wanted.urn == values.get("_fetched"):        # never fetch in circles
            self._takeover_failed(now, claim, values, ServerError(
                f"code {wanted.urn} was fetched but is not installed in this daemon's code folder"))
            return
        try:
            self.fetches.start(wanted, ParkedTakeover(claim, values))
        except QuotaExceeded as exc:        # counted as a failed attempt: tried again after a while
            self._takeover_failed(now, claim, values, exc)

    def _takeover_failed(self, now: float, claim: Claim | None, values: dict[str, Any], exc: SnipeError) -> None:
        values = {k: v for k, v in values.items() if k != "_fetched"}    # a later try may fetch again
        tries = int(values.get("_tries", 0)) + 1
        log.warning("could not %s (attempt %d of %d): %s", f"take over {claim.urn}" if claim else
                    "start a copy or fetch standby code", tries, TAKEOVER_TRIES, exc)
        if claim is not None and tries < TAKEOVER_TRIES:     # we won the claim: nobody else will
            # backing off (1, 2, 4, 8 s by default): a catalog or checkpoint holder may be back shortly
            wait_s = self.cfg.takeover_backoff_s * 2.0 ** (tries - 1)
            self._takeover_retries.append((now + wait_s, claim, {**values, "_tries": tries}))
        elif claim is not None:
            self._abandon_takeover(claim, values, exc)

    def _after_fetches(self) -> None:
        """Carry on with the work that waited for the code fetches that ended."""
        for done in self.fetches.ended():
            if done.error is None:
                log.info("fetched code %s from %s", done.urn, done.holder)
                with contextlib.suppress(SnipeError):     # we hold it now: a holder others may ask
                    self.catalog.set(done.urn, "location", self.cfg.address)
            for waiter in done.waiters:
                self._carry_on(waiter, done)

    def _carry_on(self, waiter: ParkedRequest | ParkedTakeover, done: FetchEnded) -> None:
        match waiter, done.error:
            case ParkedRequest(), _ if waiter.expires <= time.monotonic():
                self._reply(waiter.client, waiter.env.error_reply(self._expired(waiter)))
            case ParkedRequest(client, key, env, _, expires), None:
                self._serve(client, key, env, [], fetched=done.urn, expires=expires)
            case ParkedRequest(client, _, env, _, _), error:
                self._reply(client, env.error_reply(error))
            case ParkedTakeover(claim, values), None:
                self.takeovers.put((claim, {**values, "_fetched": done.urn}))
            case ParkedTakeover(claim, values), error:
                self._takeover_failed(time.monotonic(), claim, values, error)

    def _expire_parked(self, now: float) -> None:
        """Answer the parked requests whose clients stopped waiting: never served after that."""
        for waiter in self.fetches.take_out(lambda w: isinstance(w, ParkedRequest) and w.expires <= now):
            self._reply(waiter.client, waiter.env.error_reply(self._expired(waiter)))

    def _expired(self, waiter: ParkedRequest) -> SnipeError:
        why = (f"{waiter.env.kind}: not served: code {waiter.code} was not fetched to {self.cfg.host_urn} within "
               f"the {_client_waits(waiter.env):g} s its client waits for the answer; nothing was started, ask again")
        return MigrationFailed(why) if waiter.env.kind == "clone" else Unreachable(why)

    def drop_parked_clone(self, key: str, urn: str, mid: str) -> bool:
        """`clone-drop` of a clone still waiting for its code: answered, never launched. Whether
        there was one (asked for by `key`, or the admin's)."""
        def this_clone(w: Any) -> bool:
            return isinstance(w, ParkedRequest) and w.env.kind == "clone" and w.env.body.get("urn") == urn \
                and w.env.body.get("id") == mid

        def allowed(w: ParkedRequest) -> bool:
            return key in (w.key, self.cfg.admin_key.hex())

        clones = self.fetches.take_out(lambda w: this_clone(w) and allowed(w))
        if not clones and self.fetches.waiting(lambda w: this_clone(w) and not allowed(w)):
            raise NotAuthorized(f"clone-drop {urn}: only the key that asked for the clone (or the admin's) may "
                                "drop it")
        for w in clones:
            self._reply(w.client, w.env.error_reply(MigrationFailed(
                f"the migration of {urn} was abandoned while its clone waited for code {w.code}; nothing was started")))
        return bool(clones)

    def _answer_waits(self, now: float) -> None:
        for w in self.waiters.due(now, lambda urn: urn not in self.tasks or self._ended(urn)):
            if w.urn not in self.tasks:      # a migration's clone that never took over: forgotten
                reply = w.env.error_reply(NotFound(f"{w.urn} is not a task of {self.cfg.host_urn} (a migration's "
                                                   "clone that never took over); ask the daemon named in its "
                                                   "'supervisor'"))
            elif self._ended(w.urn) or not w.renew(now):
                reply = w.env.reply(**self._status(w.urn), stderr_tail=self._stderr_tail(w.urn))
            else:                            # its hold ended: a client still waiting asks again
                reply = w.env.reply(**self._status(w.urn), renew=True)
            if not self._reply(w.client, reply):
                self.waiters.drop_client(w.client)       # gone: its other waits have no one to answer

    def _keep_lease(self, now: float) -> None:
        """Renew the host lease when due (every third of it), and fence our tasks if it lapsed."""
        if now >= self.next_lease:
            self.next_lease = now + self.cfg.lease_s / 3
            lapsed = False
            try:
                self._publish_host(timeout=self.cfg.lease_s / 3)
                # Renewed, but if the old lease had already run out the cluster has been told our
                # tasks are lost: they must be, even though we are back.
                lapsed = now > self.lease_until
                self.lease_until = now + self.cfg.lease_s
                if lapsed:
                    self._fence(now, "the host's lease had lapsed (cut off from the catalog)")
                for urn in list(self.unpublished):
                    self._publish_task(urn)
            except SnipeError as exc:
                log.warning("could not refresh the host lease: %s", exc)
                # not again at once: this try may have taken all its time (a fetch waiting on a
                # holder calls this every turn of its wait)
                self.next_lease = max(self.next_lease, time.monotonic() + LEASE_RETRY_S)
        if time.monotonic() > self.lease_until:
            self._fence(now, "the host's lease lapsed (cut off from the catalog)")

    def _lease_while_blocked(self) -> None:
        """A checkpoint fetch holds this loop while a holder sends (up to 30 s: a holder's own loop may
        be busy sending a large checkpoint): the host lease must not lapse meanwhile, or the cluster would
        report every task of ours lost and restart it elsewhere, and we would stop ours (the fence)."""
        self._keep_lease(time.monotonic())

    def _fence(self, now: float, why: str) -> None:
        """Once our lease has lapsed, the cluster has been told our tasks are lost (host-lost):
        so they must be. Kill them (the events say why) rather than let them come back after a
        partition heals, running behind their owners' backs."""
        live = [u for u, t in self.tasks.items() if t["state"] in ("running", "suspended")]
        if not live:
            return
        log.warning("%s: %s; stopping %d task(s)", self.cfg.host_urn, why, len(live))
        for urn in live:
            with contextlib.suppress(SnipeError):
                self.runner.kill(urn, reason=f"{why}: the task was reported lost, so it was stopped")
        self._poll_tasks()      # their "killed" events are published once the catalog answers again
    def _drain(self) -> None:
        for _ in range(256):
            try:
                parts = self.router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            client, key = parts[0].bytes, sender_key(parts[0])
            try:
                env, frames = decode([p.bytes for p in parts[1:]])
            except SnipeError as exc:
                self._reply(client, Envelope(PROTOCOL, VERSION, "error", 0, {"code": exc.code, "message": str(exc)}))
                continue
            self._serve(client, key, env, frames)
            # a request may block on the catalog (mcast-join, spawn): a run of them must not let
            # the host lease lapse (our tasks would be reported lost and stopped)
            self._lease_while_blocked()

    def _serve(self, client: bytes, key: str, env: Envelope, frames: list[bytes], *, fetched: str = "",
               expires: float | None = None) -> None:
        """Answer one request; one that needs code not held here yet is parked until it is
        fetched, then served again (`fetched`: the code that was, which must now be here;
        `expires`: when its client stops waiting, kept from when it was first parked)."""
        try:
            check_version(env, PROTOCOL, VERSIONS)
            self._handle(client, key, env, frames)
        except AwaitingCode as wanted:
            if wanted.urn == fetched:       # never fetch in circles
                self._reply(client, env.error_reply(ServerError(
                    f"code {wanted.urn} was fetched but is not installed in this daemon's code folder")))
            else:
                self._park(client, key, env, wanted, expires)
        except SnipeError as exc:
            self._reply(client, env.error_reply(exc))
        except Exception as exc:  # a bug here must not take the host's daemon down
            log.exception("failed on %s", env.kind)
            self._reply(client, env.error_reply(ServerError(
                f"the daemon failed on {env.kind!r} ({exc.__class__.__name__}: {exc}); it keeps serving")))

    def _park(self, client: bytes, key: str, env: Envelope, wanted: AwaitingCode, expires: float | None) -> None:
        """Park a request until its code is fetched, within the fetches' bounds."""
        try:
            if expires is None:
                expires = time.monotonic() + _served_within(env)
            self.fetches.start(wanted, ParkedRequest(client, key, env, wanted.urn, expires), client)
        except QuotaExceeded as exc:
            self._reply(client, env.error_reply(QuotaExceeded(f"{env.kind}: {exc}")))
        except SnipeError as exc:
            self._reply(client, env.error_reply(exc))

    def _reply(self, client: bytes, env: Envelope, frames: tuple[bytes, ...] | list[bytes] = ()) -> bool:
        """Send a reply (dropped if the client's queue is full); False if the client is gone."""
        try:
            self.router.send_multipart([client, *encode(env, frames)], zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            return exc.errno != zmq.EHOSTUNREACH       # ROUTER_MANDATORY: no such peer connected
        return True

    def _ended(self, urn: str) -> bool:
        rec = self.tasks.get(urn)
        return rec is not None and rec["state"] in ("exited", "killed", "lost", "migrated")

    # --- requests -----------------------------------------------------------------------------
    def _handle(self, client: bytes, key: str, env: Envelope, frames: list[bytes]) -> None:
        match env.kind:
            case "hello":
                self._reply(client, env.reply(protocols={PROTOCOL: list(VERSIONS)}, host=self.cfg.host_urn,
                                              key=self.cfg.identity.key_id, endpoint=self.cfg.address))
            case "spawn":
                self._reply(client, env.reply(**self._spawn(key, env)))
            case "status":
                self._reply(client, env.reply(**self._status(self._known(env))))
            case "wait":
                urn = self._known(env)
                if self._ended(urn):        # answered now, not at the next tick (collecting 1000 ended tasks
                    # once took 50 ms each), and not counted among the client's waits
                    self._reply(client, env.reply(**self._status(urn), stderr_tail=self._stderr_tail(urn)))
                else:
                    self.waiters.add(client, env, urn, seconds_of(env, "timeout", 3600.0), time.monotonic(),
                                     renew=field_of(env, "renew", bool, False))
            case "kill" | "suspend" | "resume" | "signal":
                urn = self._known(env)
                self._check_controller(key, urn)
                self._control(urn, env)
                self._poll_tasks()               # so the reply already shows the new state
                self._reply(client, env.reply(**self._status(urn)))
            case "ps":
                self._reply(client, env.reply(tasks=[self._status(u) for u in sorted(self.tasks)]))
            case "bid":
                self._reply(client, env.reply(**self._bid(env)))
            case "put-code":
                self._check_published(env)
                self._reply(client, env.reply(**self._put_code(env, frames)))
            case "get-code":
                urn = field_of(env, "urn", str)
                blob = self.codes.get_blob(urn)
                if blob is None:
                    raise NotFound(f"this daemon does not hold code {urn}")
                self._reply(client, env.reply(urn=urn), [blob])
            case "put-file":
                urn = validate_urn(field_of(env, "urn", str))
                if len(frames) != 1:
                    raise CodecError(f"put-file carries the blob as exactly one frame, not {len(frames)}")
                if len(frames[0]) > MAX_FILE_BYTES:
                    raise TooLarge(f"put-file: a blob of {len(frames[0])} bytes is over the limit, "
                                   f"{MAX_FILE_BYTES} bytes")
                self.files.put_blob(frames[0], urn)       # verifies the hash against the URN
                keys = self.state.get_meta(f"file:{urn}", [])
                if key not in keys:
                    self.state.set_meta(f"file:{urn}", [*keys, key])
                self._reply(client, env.reply(urn=urn, host=self.cfg.host_urn))
            case "get-file":
                urn = validate_urn(field_of(env, "urn", str))
                blob = self.files.get_blob(urn)
                if blob is None:
                    raise NotFound(f"{self.cfg.host_urn} does not hold {urn}")
                self._reply(client, env.reply(urn=urn), [blob])
            case "drop-file":
                urn = validate_urn(field_of(env, "urn", str))
                stored_by = self.state.get_meta(f"file:{urn}", [])
                if key in (self.cfg.admin_key.hex(), self.cfg.identity.key_id) or (
                        not stored_by and self.files.blob_path(urn) is None):
                    keys = []                         # the admin's or this host's word drops it for all; or gone
                elif key in stored_by:
                    keys = [k for k in stored_by if k != key]
                else:
                    raise NotAuthorized(f"{urn} was not stored here by this key; only the keys that stored it "
                                        "(or the admin) may drop it")
                self.state.set_meta(f"file:{urn}", keys)
                if not keys:
                    self.files.drop_blob(urn)
                self._reply(client, env.reply())
            case "mcast-join":
                group, member = _group_of(env), self._member_of(key, env)
                self._reply(client, env.reply(routers=self.groups.join(group, member, key)))
            case "mcast-leave":
                self.groups.leave(_group_of(env), self._member_of(key, env))
                self._reply(client, env.reply())
            case "mcast-status":
                self._reply(client, env.reply(**self.groups.status()))
            case "relay-status":
                self._reply(client, env.reply(relay=self.relay.status() if self.relay else None))
            case "migrate":
                self.migrations.begin(client, key, env)          # answered when it is done
            case "migrate-done":
                self.migrations.task_report(client, key, env)
            case "clone":
                self.migrations.clone(client, key, env)          # answered when the clone is ready
            case "clone-ready":
                self.migrations.clone_ready(client, key, env)
            case "clone-running":
                self.migrations.clone_running(client, key, env)
            case "clone-drop":
                self.migrations.clone_drop(client, key, env)
            case "drain":
                if key not in (self.cfg.admin_key.hex(), self.cfg.identity.key_id):
                    raise NotAuthorized("only the admin key or the host's own key may drain a host")
                self.draining = bool(field_of(env, "on", bool, True))
                self.state.set_meta("draining", self.draining)
                self._publish_host()
                self._reply(client, env.reply(draining=self.draining, host=self.cfg.host_urn,
                                              tasks=len([t for t in self.tasks.values() if t["state"] == "running"])))
            case _:
                raise UnknownRequest(f"daemon/1 has no request {env.kind!r}; it has hello, spawn, status, wait, "
                                     "kill, signal, suspend, resume, ps, bid, put-code, get-code, put-file, get-file, "
                                     "drop-file, drain, mcast-join, mcast-leave, mcast-status, relay-status, migrate, "
                                     "migrate-done, clone, clone-ready, clone-running, clone-drop")

    def _known(self, env: Envelope) -> str:
        urn = validate_urn(field_of(env, "urn", str))
        if urn not in self.tasks:
            raise NotFound(f"{urn} is not a task of {self.cfg.host_urn}; ask the daemon named in its 'supervisor'")
        return urn

    def _member_of(self, key: str, env: Envelope) -> str:
        """The `member` of an mcast request: a process the requesting key speaks for (its own
        key, or the key that spawned it or owns its URN), so no key can hold groups open, or make
        this host route them, in another's name."""
        member = validate_urn(field_of(env, "member", str))
        if key in (self.cfg.admin_key.hex(), self.cfg.identity.key_id):
            return member
        rec = self.tasks.get(member)
        task_key = self._task_key(member) if rec is not None else None
        if rec is not None and key in (rec["owner"], rec.get("key"), task_key and task_key.key_id):
            return member
        if parse_urn(member).kind == "proc":
            entry, now = self.catalog.get(member), _now_ms()
            if entry.value("key", now) == key or entry.owner(self.cfg.admin_key, now) == key:
                return member
        raise NotAuthorized(f"{env.kind}: member {member} is not a process key {key[:16]}… speaks for; a process "
                            "joins and leaves groups as itself (snipe.join), with its own key or its owner's")

    def _check_published(self, env: Envelope) -> None:
        """put-code: code is taken only under a URN its publisher claimed (snipe.publish does
        that first), checked before the blob is unpacked: nothing of unpublished code is kept."""
        urn = validate_urn(field_of(env, "urn", str))
        if parse_urn(urn).kind == "code" and self.catalog.get(urn).owner(self.cfg.admin_key, _now_ms()) is None:
            raise NotAuthorized(f"put-code: {urn} has no publisher in the catalog; publish it first "
                                "(snipe.publish claims the URN with its manifest, then puts the code)")

    def _check_controller(self, key: str, urn: str) -> None:
        owner = self.tasks[urn]["owner"]
        if key not in (owner, self.cfg.admin_key.hex()):
            raise NotAuthorized(f"{urn} is owned by key {owner[:16]}…, not {key[:16]}…; ask its owner or an admin key")

    def _control(self, urn: str, env: Envelope) -> None:
        rec = self.tasks[urn]
        if rec["state"] not in ("running", "suspended"):
            raise NotFound(f"{urn} is {rec['state']}; there is nothing to {env.kind}")
        match env.kind:
            case "kill":
                self.runner.kill(urn)
            case "suspend":
                self.runner.suspend(urn)        # the runner reports the event on its next poll
            case "resume":
                self.runner.resume(urn)
            case "signal":
                signum = field_of(env, "signum", int)
                valid = {s.value for s in signals.Signals}
                if signum not in valid:
                    raise CodecError(f"signal: signum {signum} is not a signal number on this host")
                self.runner.signal(urn, signum)

    # --- code ---------------------------------------------------------------------------------
    def _relocation(self) -> Republisher:
        """The work of republishing `location` for the code held here, as this daemon starts: it
        may listen on another address than before (the catalog would still name the old one).
        Done a batch a turn, from the first turn of the loop, each put waiting 2 s at most."""
        urns = self.codes.held()
        timeout = max(0.5, min(2.0, self.cfg.lease_s / 4))

        def put(batch: list[str]) -> None:
            self.catalog.put([self.catalog.sign(u, "location", self.cfg.address) for u in batch], timeout=timeout)
        return Republisher(urns, put)

    def _live_daemons(self, now: int) -> LiveDaemons:
        """Where each live host's daemon listens now: the holders a fetch asks (a listed address
        may be from before its daemon restarted on another port, and a dead one would hold this
        loop for the wait)."""
        return LiveDaemons.from_hosts(self.catalog.query("urn:snipe:host:"), now)

    def _put_code(self, env: Envelope, frames: list[bytes]) -> dict[str, Any]:
        urn = validate_urn(field_of(env, "urn", str))
        if len(frames) != 1:
            raise CodecError(f"put-code carries the code blob as exactly one frame, not {len(frames)}")
        path = self.codes.install(frames[0], urn)      # verifies the hash against the URN
        self._manifests.pop(urn, None)                 # published again: maybe with another manifest
        self.catalog.set(urn, "location", self.cfg.address)
        return {"urn": urn, "path": str(path)}

    def _fetch_code(self, urn: str) -> tuple[Path, dict[str, Any]]:
        """The unpacked code and its manifest, signed by the code URN's owner (its publisher);
        AwaitingCode if this host does not hold the code yet (after checking the manifest).

        A verified manifest is kept for MANIFEST_TTL_S, so spawns of the same code within that
        time skip the catalog read (the bytes are checked against the URN when installed)."""
        if not urn.startswith("urn:snipe:code:"):
            raise UrnError(f"{urn} is not a code URN (urn:snipe:code:...); spawn the URN `publish` printed")
        hit = self._manifests.get(urn)
        if hit is not None and hit[0] > time.monotonic():
            cached = self.codes.path_for(urn)
            if cached is not None:
                return cached, hit[1]
        entry = self.catalog.get(urn)
        now = _now_ms()
        owner = entry.owner(self.cfg.admin_key, now)
        manifests = [a for a in entry.live(now) if a.name == "manifest" and a.signer.hex() == owner]
        if not entry.records:
            raise NotFound(f"no code published at {urn}; check the URN, or publish the code first")
        if owner is None or not manifests or not isinstance(manifests[0].value, dict):
            raise NotAuthorized(f"{urn} has no manifest signed by its publisher; refusing to run it")
        manifest = manifests[0].value
        if len(self._manifests) >= 256:
            self._manifests = {u: m for u, m in self._manifests.items() if m[0] > time.monotonic()}
        self._manifests[urn] = (time.monotonic() + MANIFEST_TTL_S, manifest)
        path = self.codes.path_for(urn)
        if path is not None:
            return path, manifest
        # Fetched off this loop (daemon/fetches.py): the caller's dispatcher parks the work.
        locations, errors = self._live_daemons(now).holders(
            (str(v) for v in entry.values("location", now).values()), besides=self.cfg.address)
        raise AwaitingCode(urn, locations, errors)

    def _give_code(self, urn: str, hosts: list[str], *, required: bool) -> None:
        """Put code on the hosts that may run a task after this one dies, before it starts: a
        promotion or restart must not depend on the dead host to supply the code (it was
        published here; a standby that fetched it on its own could lose that race).

        The call blocks this loop, so it is bounded well inside a lease renewal period (two
        daemons pushing to each other at once each wait that long, not a lease). `required`
        (standbys, copies): a host that cannot take it fails the spawn; otherwise (a restart
        policy's first host) it is a warning and the restart fetches the code when it runs."""
        blob = self.codes.get_blob(urn)
        if blob is None:
            raise NotFound(f"this daemon no longer holds code {urn}; publish it again")
        now = _now_ms()
        listed = self.catalog.get(urn).values("location", now).values()
        held, _ = self._live_daemons(now).holders(str(v) for v in listed)
        timeout = max(0.5, min(GIVE_CODE_TIMEOUT_S, self.cfg.lease_s / 4))
        for host in hosts:
            try:
                address = self.catalog.get(host).value("daemon", now)
                if not isinstance(address, str):
                    raise Unreachable(f"{host} lists no daemon address")
                if address in held:
                    continue
                with DaemonClient(address, self.cfg.identity, timeout=timeout) as peer:
                    peer.call("put-code", {"urn": urn}, (blob,))
            except SnipeError as exc:
                if required:
                    raise Unreachable(f"could not give code {urn} to replica host {host} ({exc}); "
                                      "the replicated task was not started") from exc
                log.warning("could not give code %s to %s, the first host to restart the task if this one "
                            "dies (%s); a restart there fetches it then", urn, host, exc)

    # --- spawning -----------------------------------------------------------------------------
    def _spawn(self, key: str, env: Envelope) -> dict[str, Any]:
        if self.draining:
            raise NotAuthorized(f"{self.cfg.host_urn} is draining and takes no new tasks; choose another host")
        code = validate_urn(field_of(env, "code", str))
        _client_waits(env)               # checked now, not only if it has to wait for its code
        args = texts_of(env, "args")
        extra_env = _users_environment(env)
        quota = Quota.from_value(field_of(env, "quota", dict, {}))
        notify = [validate_urn(u) for u in field_of(env, "notify", list, [])]
        restart = field_of(env, "restart", str, "") or None
        if restart is not None and restart not in RESTART_POLICIES:
            raise CodecError(f"spawn: restart policy {shown(restart)} is unknown; the policies are "
                             f"{', '.join(RESTART_POLICIES)}")
        every = seconds_of(env, "checkpoint_every", 0.0)
        replicas = field_of(env, "replicas", int, 1)
        if replicas < 1:
            raise CodecError(f"spawn: replicas must be 1 or more, not {replicas}")
        mode = field_of(env, "mode", str, "standby")
        if mode not in REPLICA_MODES:
            raise CodecError(f"spawn: replica mode {shown(mode)} is unknown; the modes are {', '.join(REPLICA_MODES)}")
        if replicas > 1 and mode == "standby":
            restart, every = "on-host-failure", every or STANDBY_CHECKPOINT_S
        code_dir, manifest = self._fetch_code(code)

        urn = new_urn("proc")
        task_key = Identity.generate()
        names = self._takeover_names(urn, task_key, restart, every, extra_env, field_of(env, "quota", dict, {}),
                                     replicas, mode)
        # Before the task is announced, its code goes where a restart or promotion may run it:
        # the host that dies must not be the only one that holds it (the code was published here).
        replicas_at = names.get("standbys") or names.get("copies", [])[1:]
        if replicas_at:
            self._give_code(code, replicas_at, required=True)
        elif names.get("on_call"):
            self._give_code(code, names["on_call"][:1], required=False)
        workdir = self.tasks_dir / urn.rsplit(":", 1)[1]
        workdir.mkdir(parents=True, exist_ok=True)
        task_key.save(workdir / "task.key")
        now = _now_ms()
        started = {"seq": 1, "kind": "started", "at": time.time()}
        # One catalog round trip per spawn: the task is registered as running with its first
        # event before it starts (a failure to start is published right after, below).
        self.catalog.put([
            self.catalog.sign(urn, authority.OWNER, self.cfg.identity.key_id),
            self.catalog.sign(urn, authority.DELEGATE_PREFIX + task_key.key_id, [""]),
            self.catalog.sign(urn, "host", self.cfg.host_urn),
            self.catalog.sign(urn, "owner", key),
            self.catalog.sign(urn, "code", code),
            self.catalog.sign(urn, "args", args),
            self.catalog.sign(urn, "supervisor", self.cfg.address),
            self.catalog.sign(urn, "notify", notify),
            self.catalog.sign(urn, "key", task_key.key_id),
            self.catalog.sign(urn, "started", now),
            self.catalog.sign(urn, "state", "running"),
            self.catalog.sign(urn, "events", [started]),
            *[self.catalog.sign(urn, k, v) for k, v in names.items()],
        ])
        try:
            record = self.launch(urn, code_dir, manifest, args, extra_env, quota, workdir, every=every,
                                 more_env={"SNIPE_REPLICA_INDEX": "0"} if replicas > 1 and mode == "all" else None)
        except Exception as exc:        # not only SnipeError: the catalog must not show it running forever
            failed = {"seq": 2, "kind": "lost", "at": time.time(), "reason": f"could not start: {exc}"}
            with contextlib.suppress(SnipeError):
                self.catalog.set_many(urn, {"state": "lost", "events": [started, failed], "reason": failed["reason"]})
            raise
        self.tasks[urn] = {"record": record.to_value(), "owner": key, "code": code, "state": "running",
                           "events": [started], "seq": 1, "notify": notify, "restart": restart, "args": args,
                           "env": {k: str(v) for k, v in extra_env.items()}, "key": task_key.key_id,
                           "every": every}
        self.state.put_task(urn, self.tasks[urn])
        return {"urn": urn, "pid": record.pid, "host": self.cfg.host_urn}

    def launch(self, urn: str, code_dir: Path, manifest: dict[str, Any], args: list[str], extra_env: dict[str, Any],
               quota: Quota, workdir: Path, more_env: dict[str, str] | None = None, every: float = 0.0) -> Any:
        """Start the process of task `urn` (its key already in `workdir`/task.key)."""
        task_env = self._task_env(urn, workdir, extra_env, every)
        task_env.update(more_env or {})
        argv = entry_argv(manifest, code_dir, self.cfg.python, args)
        return self.runner.start(urn, argv, cwd=str(workdir), env=task_env, quota=quota, warm=self.pool.take(argv[0]))

    def _task_env(self, urn: str, workdir: Path, extra_env: dict[str, Any], every: float) -> dict[str, str]:
        task_env = {k: str(v) for k, v in extra_env.items()}
        task_env.update({
            "SNIPE_PROC_URN": urn, "SNIPE_KEY_FILE": str(workdir / "task.key"),
            "SNIPE_CATALOG": ",".join(self.cfg.catalog), "SNIPE_ADMIN_KEY": self.cfg.admin_key.hex(),
            "SNIPE_DAEMON": self.cfg.address, "SNIPE_HOST_URN": self.cfg.host_urn,
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONUNBUFFERED": "1",
            # this host's folder, not the user's default one every cluster's processes share
            IPC_DIR_ENV: str(self.ipc_dir),
        })
        if every:
            task_env["SNIPE_CHECKPOINT_EVERY"] = str(float(every))
        return task_env

    def _takeover_names(self, urn: str, task_key: Identity, restart: str | None, every: float,
                        extra_env: dict[str, Any], quota: dict[str, Any], replicas: int = 1,
                        mode: str = "standby") -> dict[str, Any]:
        """The catalog names that let another host take the task over: the policy, and the task's
        key (with its environment and quota) sealed to each other live host's key; for a
        replicated task, its standby hosts (the first N-1 other live hosts by rendezvous hash)."""
        names: dict[str, Any] = {}
        if every:
            names["checkpoint_every"] = float(every)
        if restart is None and replicas == 1:
            return names
        now = _now_ms()
        sealed = {}
        secret = {"seed": task_key.seed, "env": {k: str(v) for k, v in extra_env.items()}, "quota": quota}
        for host, entry in self.catalog.query("urn:snipe:host:").items():
            host_key = entry.value("key", now)
            if host != self.cfg.host_urn and entry.value("alive", now) is True and isinstance(host_key, str):
                sealed[host] = seal(secret, host_key)
        if not sealed:
            log.warning("no other live host to restart tasks on: the restart policy cannot act yet")
        if replicas > 1 and len(sealed) < replicas - 1:
            raise Unreachable(f"replicas={replicas} needs {replicas} live hosts; {len(sealed) + 1} are live")
        ranked = sorted(sealed, key=lambda h: hashlib.sha256(f"{urn}|{h}".encode()).digest())[:replicas - 1]
        if replicas > 1 and mode == "all":      # N copies run at once; no takeover
            return {**names, "replicas": replicas, "mode": "all", "copies": [self.cfg.host_urn, *ranked],
                    "on_call": ranked, "copy_keys": {h: sealed[h] for h in ranked}}
        # on_call: the hosts that may act for this task (their takeover watchers find it by this
        # name), in rendezvous order: the first is given the code at spawn
        names.update({"restart": restart, "takeover_keys": sealed, "incarnation": 0,
                      "on_call": sorted(sealed, key=lambda h: hashlib.sha256(f"{urn}|{h}".encode()).digest())})
        if replicas > 1:
            names.update({"replicas": replicas, "mode": "standby", "standbys": ranked})
        return names

    # --- taking over a task whose host died (daemon/takeover.py decides who) -----------------
    def _take_over(self, claim: Claim, values: dict[str, Any]) -> None:
        urn = claim.urn
        secret = unseal(values["takeover_keys"][self.cfg.host_urn], self.cfg.identity)
        task_key = Identity.from_seed(secret["seed"])
        if values.get("key") != task_key.key_id:
            raise NotAuthorized(f"the sealed key for {urn} is not the task's key {str(values.get('key'))[:16]}…")
        code = validate_urn(str(values.get("code")))
        args = [str(a) for a in values.get("args", []) if isinstance(a, str | int | float)]
        code_dir, manifest = self._fetch_code(code)
        workdir = self.tasks_dir / f"{urn.rsplit(':', 1)[1]}.{claim.incarnation}"
        workdir.mkdir(parents=True, exist_ok=True)
        task_key.save(workdir / "task.key")
        every = values.get("checkpoint_every") if isinstance(values.get("checkpoint_every"), int | float) else 0
        restore: dict[str, str] = {}
        ckpt = values.get("checkpoint")
        how = "from the beginning (it had no checkpoint)"
        if isinstance(ckpt, dict) and isinstance(ckpt.get("file"), str):
            path = workdir / "restore.ckpt"
            path.write_bytes(self._fetch_file(ckpt))
            restore = {"SNIPE_RESTORE_FILE": str(path), "SNIPE_RESTORE_URN": ckpt["file"]}
            how = f"from checkpoint {ckpt.get('seq')}"
        events = [e for e in values.get("events", []) if isinstance(e, dict) and isinstance(e.get("seq"), int)]
        seq = max((e["seq"] for e in events), default=0) + 1
        event = {"seq": seq, "kind": "restarted", "at": time.time(),
                 "reason": f"{values.get('host')} was lost; restarted on {self.cfg.host_urn} {how}"}
        events = [*events, event][-MAX_EVENTS_KEPT:]
        names = {"host": self.cfg.host_urn, "supervisor": self.cfg.address, "state": "running",
                 "events": events, "incarnation": claim.incarnation, "started": _now_ms()}
        if isinstance(values.get("standbys"), list):
            names["standbys"] = self._new_standbys(values)
        self._put_as(task_key, urn, names)
        record = self.launch(urn, code_dir, manifest, args, dict(secret.get("env") or {}),
                             Quota.from_value(secret.get("quota") or {}), workdir, restore, every)
        self.task_keys[urn] = task_key
        self.tasks[urn] = {"record": record.to_value(), "owner": str(values.get("owner")), "code": code,
                           "state": "running", "events": events, "seq": seq, "notify": values.get("notify", []),
                           "restart": values.get("restart"), "incarnation": claim.incarnation,
                           "key_file": str(workdir / "task.key")}
        self.state.put_task(urn, self.tasks[urn])

    def _abandon_takeover(self, claim: Claim, values: dict[str, Any], exc: SnipeError) -> None:
        """Our last attempt to restart a task whose host died failed: mark it lost, saying why.
        The claim is ours, so nobody else will try; left "running", it would wait forever."""
        reason = (f"{values.get('host')} was lost and {self.cfg.host_urn} could not restart the task "
                  f"({TAKEOVER_TRIES} attempts): {exc}")
        log.warning("giving up on %s: %s", claim.urn, reason)
        try:
            secret = unseal(values["takeover_keys"][self.cfg.host_urn], self.cfg.identity)
            events = [e for e in values.get("events", []) if isinstance(e, dict) and isinstance(e.get("seq"), int)]
            seq = max((e["seq"] for e in events), default=0) + 1
            events = [*events, {"seq": seq, "kind": "lost", "at": time.time(), "reason": reason}][-MAX_EVENTS_KEPT:]
            self._put_as(Identity.from_seed(secret["seed"]), claim.urn,
                         {"state": "lost", "reason": reason, "events": events})
        except SnipeError as again:
            log.warning("could not publish that %s is lost: %s", claim.urn, again)

    def _start_copy(self, values: dict[str, Any]) -> None:
        """Start copy `values["copy"]` of a replicated task in mode "all" under the task's URN and key."""
        urn, index = validate_urn(str(values["urn"])), int(values["copy"])
        if urn in self.tasks:        # started already (a copy that ended is not started again)
            return
        secret = unseal(values["copy_keys"][self.cfg.host_urn], self.cfg.identity)
        task_key = Identity.from_seed(secret["seed"])
        if values.get("key") != task_key.key_id:
            raise NotAuthorized(f"the sealed key for {urn} is not the task's key {str(values.get('key'))[:16]}…")
        code = validate_urn(str(values.get("code")))
        code_dir, manifest = self._fetch_code(code)
        workdir = self.tasks_dir / f"{urn.rsplit(':', 1)[1]}.copy{index}"
        workdir.mkdir(parents=True, exist_ok=True)
        task_key.save(workdir / "task.key")
        args = [str(a) for a in values.get("args", []) if isinstance(a, str | int | float)]
        record = self.launch(urn, code_dir, manifest, args, dict(secret.get("env") or {}),
                             Quota.from_value(secret.get("quota") or {}), workdir, {"SNIPE_REPLICA_INDEX": str(index)})
        self.task_keys[urn] = task_key
        started = {"seq": 1, "kind": "started", "at": time.time()}
        self.tasks[urn] = {"record": record.to_value(), "owner": str(values.get("owner")), "code": code,
                           "state": "running", "events": [started], "seq": 1, "notify": [], "copy": index,
                           "key_file": str(workdir / "task.key")}
        self.state.put_task(urn, self.tasks[urn])

    def _new_standbys(self, values: dict[str, Any]) -> list[str]:
        """A promoted standby's successors: the other standbys, and live hosts the task's key was
        sealed to in place of this one (so the task keeps `replicas` hosts while there are some)."""
        now = _now_ms()
        left = [str(h) for h in values.get("standbys", []) if h != self.cfg.host_urn]
        want = int(values.get("replicas", len(left) + 2)) - 1
        live = {u for u, e in self.catalog.query("urn:snipe:host:").items() if e.value("alive", now) is True}
        spare = sorted(h for h in values.get("takeover_keys", {}) if h in live and h != self.cfg.host_urn
                       and h not in left and h != values.get("host"))
        return [h for h in left if h in live] + spare[:max(0, want - len([h for h in left if h in live]))]

    def _holder_wait(self, waits_end: float, last: bool) -> float:
        """How long a fetch waits for a holder's daemon to take a connection. The fetch holds this
        loop, and a holder whose daemon just died is still listed until its lease lapses: all
        waits of one fetch end by `waits_end` (half a lease after it began), each at most
        FETCH_CONNECT_S and, but for the `last` holder (the only chance left), a quarter lease, so
        dead holders cannot hold the loop until our own lease lapses (our tasks would be reported
        lost and stopped: the fence). A connection that comes later fails the fetch, saying so."""
        cap = FETCH_CONNECT_S if last else min(FETCH_CONNECT_S, self.cfg.lease_s / 4)
        return max(0.2, min(cap, waits_end - time.monotonic()))

    def _fetch_file(self, ckpt: dict[str, Any]) -> bytes:
        """A stored checkpoint, from this host or one of its holders (checked against its URN)."""
        urn = validate_urn(ckpt["file"])
        blob = self.files.get_blob(urn)
        if blob is not None:
            return blob
        # a holder's daemon may have restarted on another port since the checkpoint named it
        holders, errors = self._live_daemons(_now_ms()).holders(
            (str(a) for a in ckpt.get("holders", [])), besides=self.cfg.address)
        waits_end = time.monotonic() + self.cfg.lease_s / 2

        def limits(last: bool) -> tuple[float, float]:
            return 30.0, self._holder_wait(waits_end, last)

        def checked(blob: bytes) -> bytes:
            # Checked, not kept: this host is no holder of the checkpoint (nobody would drop a
            # copy here), and the restore reads the bytes once.
            verify_blob(blob, urn)           # raises unless the bytes hash to the URN
            return blob
        # On this loop (a takeover is rare), which keeps the host lease meanwhile.
        got = ask_holders(holders, self.cfg.identity, "get-file", urn, checked, limits, errors,
                          self._lease_while_blocked)
        if got is None:
            raise NotFound(f"no holder could supply checkpoint {urn}: " + ("; ".join(errors) or "none is listed"))
        return got[0]

    def _put_as(self, identity: Identity, urn: str, values: dict[str, Any]) -> None:
        """Write a taken-over task's names signed by its own key (the host key is not its owner)."""
        ts = self.catalog.clock
        self.catalog.put([make_assertion(identity, urn, k, v, ts.now(_now_ms())) for k, v in values.items()])

    def _task_key(self, urn: str) -> Identity | None:
        key = self.task_keys.get(urn)
        path = self.tasks.get(urn, {}).get("key_file")
        if key is None and isinstance(path, str):
            with contextlib.suppress(OSError, SnipeError):
                key = self.task_keys[urn] = Identity.load(path)
        return key

    def _task_event(self, ev: TaskEvent) -> None:
        rec = self.tasks.get(ev.urn)
        if rec is None:
            return
        if self.migrations.quiet(ev.urn):     # a clone not yet running, or an original that moved
            with contextlib.suppress(KeyError):
                rec["record"] = self.runner.record(ev.urn).to_value()
            if rec.get("incoming") and ev.kind in ("exited", "killed", "lost"):
                # the migration failed: the task runs on where it was, so its clone was never a task here
                self.migrations.clone_exited(ev.urn)
                self.migrations.forget_clone(ev.urn)
                return
            if ev.kind in ("exited", "killed"):
                self.groups.forget_moved(ev.urn)       # (a clone not yet running has joined nothing here)
            if ev.kind in ("exited", "killed") and not rec.get("accounted"):
                # the original that moved: what it used here until then is accounted by this host
                with contextlib.suppress(SnipeError):
                    used = self.runner.usage(ev.urn)
                    if used is not None:
                        rec["usage"] = used
                        try:
                            self._account(ev.urn, rec, state="migrated")
                        except SnipeError as exc:
                            log.warning("could not account for %s before it moved: %s", ev.urn, exc)
            self.state.put_task(ev.urn, rec)
            return
        rec["seq"] += 1
        state = {"started": "running", "resumed": "running", "suspended": "suspended", "exited": "exited",
                 "killed": "killed", "lost": "lost"}.get(ev.kind, rec["state"])
        rec["state"] = state
        event = {"seq": rec["seq"], "kind": ev.kind, "at": ev.at}
        if ev.exit_code is not None:
            event["exit_code"] = ev.exit_code
        if ev.reason:
            event["reason"] = ev.reason
        rec["events"] = (rec["events"] + [event])[-MAX_EVENTS_KEPT:]
        with contextlib.suppress(KeyError):
            rec["record"] = self.runner.record(ev.urn).to_value()
        if state not in LIVE_STATES:
            with contextlib.suppress(SnipeError):         # a task this runner no longer knows: no figures
                used = self.runner.usage(ev.urn)
                if used is not None:
                    rec["usage"] = used
        self.state.put_task(ev.urn, rec)
        self._publish_task(ev.urn)

    def _note_event(self, urn: str, kind: str, reason: str) -> None:
        """Add an event that does not change the task's state (NOTE_EVENTS) and publish it."""
        rec = self.tasks[urn]
        rec["seq"] += 1
        event = {"seq": rec["seq"], "kind": kind, "at": time.time(), "reason": reason}
        rec["events"] = (rec["events"] + [event])[-MAX_EVENTS_KEPT:]
        self.state.put_task(urn, rec)
        self._publish_task(urn)

    def _publish_task(self, urn: str) -> None:
        rec = self.tasks[urn]
        if time.monotonic() > self.lease_until:
            self.unpublished.add(urn)       # cut off from the catalog: publish once it answers again
            return
        values: dict[str, Any] = {"state": rec["state"], "events": rec["events"]}
        if urn in self.supervisor_due and rec["state"] in ("running", "suspended"):
            values["supervisor"] = self.cfg.address
        last = rec["events"][-1] if rec["events"] else {}
        if "exit_code" in last:
            values["exit_code"] = last["exit_code"]
        if last.get("reason") and last.get("kind") not in NOTE_EVENTS:
            values["reason"] = last["reason"]
        if rec.get("usage"):       # accounting: what the ended task used, as this host measured it
            values["usage"] = rec["usage"]
        try:
            if rec.get("usage") and not rec.get("accounted") and not self._speaks_for(urn, rec):
                self._account(urn, rec)
        except SnipeError as exc:
            self.unpublished.add(urn)
            log.warning("could not account for %s: %s", urn, exc)
            return
        if rec.get("copy"):         # a copy of a task in mode "all": copy 0's host speaks for the URN
            self.unpublished.discard(urn)
            self.supervisor_due.discard(urn)
            return
        try:
            if rec.get("restart") and self._superseded(urn, rec):
                self.unpublished.discard(urn)       # taken over elsewhere: that host speaks for it now
                self.supervisor_due.discard(urn)
                return
            self._put_task_values(urn, values)
            self.unpublished.discard(urn)
            self.supervisor_due.discard(urn)
        except SnipeError as exc:      # the state is safe in LMDB; it is published when the catalog answers
            self.unpublished.add(urn)
            log.warning("could not publish %s %s: %s", urn, rec["state"], exc)

    def _put_task_values(self, urn: str, values: dict[str, Any]) -> None:
        """Write `values` on a task's URN with the key that speaks for it from here: the task's own
        where this host runs it under that key (restarted or migrated here), else this host's (it
        claimed the URN when it spawned the task)."""
        key = self._task_key(urn)
        if key is not None:
            self._put_as(key, urn, values)
        else:
            self.catalog.set_many(urn, values)

    def _speaks_for(self, urn: str, rec: dict[str, Any]) -> bool:
        """Whether what this host publishes on the task's URN is its own word (its key claimed the
        URN when it spawned the task, and no later incarnation runs elsewhere): then readers
        believe the usage published there (console `usage`)."""
        return not rec.get("copy") and self._task_key(urn) is None and not (
            rec.get("restart") and self._superseded(urn, rec))

    def _account(self, urn: str, rec: dict[str, Any], *, state: str | None = None) -> None:
        """Publish what an incarnation this host ran used, where this host does not speak for the
        task's URN (a restarted or migrated task, which writes there with its own key, a copy of
        a task in mode "all", a superseded one): as a URN of its own, claimed by this host's key,
        `<task URN>.usage.<host>.<ms>`, naming the task. Accounting believes only a host's word."""
        used = rec["usage"]
        ended = _now_ms()
        sub = f"{urn}.usage.{self.cfg.host_urn.rsplit(':', 1)[1]}.{ended}"
        started = ended - int(float(used.get("wall_seconds", 0)) * 1000)
        values = {"task": urn, "host": self.cfg.host_urn, "owner": rec["owner"], "code": rec["code"],
                  "state": state or rec["state"], "started": started, "usage": used}
        c = self.catalog
        c.put([c.sign(sub, authority.OWNER, self.cfg.identity.key_id), *[c.sign(sub, k, v) for k, v in values.items()]])
        rec["accounted"] = True
        self.state.put_task(urn, rec)

    def _superseded(self, urn: str, rec: dict[str, Any]) -> bool:
        """Another host took this task over since we started it (a later incarnation runs)."""
        incarnation = self.catalog.get(urn).value("incarnation", _now_ms(), 0)
        return isinstance(incarnation, int) and incarnation > rec.get("incarnation", 0)

    def _readopt(self) -> None:
        running = [u for u, t in self.tasks.items() if t["state"] in ("running", "suspended", "starting")]
        if not running:
            return
        from snipe_daemon.tasks import TaskRecord
        records = [TaskRecord.from_value(self.tasks[u]["record"]) for u in running]
        for ev in self.runner.adopt(records):
            self._task_event(ev)
        # It may have restarted on another port: task handles find the daemon to ask by each
        # task's `supervisor`, published with the task's state once the host lease is renewed
        # (and again until the catalog takes it), by `_publish_task`'s rules for who speaks.
        for urn in running:
            if self.tasks[urn]["state"] in ("running", "suspended") and not self.migrations.quiet(urn):
                self.supervisor_due.add(urn)
                self.unpublished.add(urn)

    def _status(self, urn: str) -> dict[str, Any]:
        rec = self.tasks[urn]
        out: dict[str, Any] = {"urn": urn, "state": rec["state"], "owner": rec["owner"], "code": rec["code"],
                               "host": self.cfg.host_urn, "events": rec["events"]}
        if rec.get("moved_to"):
            out["moved_to"] = rec["moved_to"]
        # A migration under way: the original names where it goes, the clone where it comes from
        # (`snipe-console ps` shows the two as one task, migrating).
        if urn in self.migrations.outgoing:
            out["migrating_to"] = self.migrations.outgoing[urn].target
        if rec.get("incoming"):
            out["clone_from"] = rec.get("from") or None
        try:
            live = self.runner.status(urn)
            out.update({k: v for k, v in live.items() if k != "state"})
        except SnipeError:
            pass
        record = rec["record"]
        out["exit_code"] = record.get("exit_code")
        out["reason"] = record.get("reason")
        out["pid"] = record.get("pid")
        return out

    def _stderr_tail(self, urn: str) -> str:
        try:
            return self.runner.stderr_tail(urn)
        except SnipeError:
            return ""

    # --- the host ------------------------------------------------------------------------------
    def _bid(self, env: Envelope) -> dict[str, Any]:
        """This host's bid for a task (snipe/bidding.py), from what it knows this moment."""
        try:
            requires = parse_predicates(field_of(env, "requires", list, []))
        except CodecError as exc:
            raise CodecError(f"bid: requires: {exc}") from None
        cap = env.body.get("max_price")
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int | float) or not cap >= 0
                                or cap == float("inf")):
            raise CodecError(f"bid: max_price must be a number >= 0, not {cap!r}")
        info = self._host_metadata()
        state = HostState(self.cfg.host_urn, self.cfg.price, int(info.get("cpus") or 1), int(info["tasks"]),
                          float(info.get("load_per_cpu") or 0.0), self.draining, info)
        answer = bid(state, requires, None if cap is None else float(cap))
        if isinstance(answer, Refusal):
            return {"refused": answer.reason}
        return {"bid": answer.price, "busy": answer.busy, "detail": dict(answer.detail)}

    def _host_metadata(self) -> dict[str, Any]:
        """What this host publishes about itself, now: the same map its bids are judged on."""
        info = collect_host_info(net_names=self.cfg.net_names, link_speeds=self.cfg.link_speeds)
        info.update(self.sampler.sample())
        info.update(self.comm)
        info.update({"daemon": self.cfg.address, "key": self.cfg.identity.key_id, "alive": True,
                     "draining": self.draining, "price": self.cfg.price,
                     **({"relay_port": self.relay.port} if self.relay is not None else {}),
                     "tasks": len([t for t in self.tasks.values() if t["state"] in ("running", "suspended")])})
        return info

    def _publish_host(self, timeout: float | None = None) -> None:
        info = self._host_metadata()
        ttl = self.cfg.lease_s
        self.catalog.put([self.catalog.sign(self.cfg.host_urn, k, v, ttl=ttl) for k, v in info.items()],
                         timeout=timeout)


def _group_of(env: Envelope) -> str:
    """The `group` field of an mcast request: a group URN (the daemon claims a group that has no
    owner yet, so any other kind of name is refused, not claimed)."""
    group = validate_urn(field_of(env, "group", str))
    if parse_urn(group).kind != "group":
        raise CodecError(f"{env.kind}: group {group} is not a group URN (urn:snipe:group:<name>)")
    return group


# What the daemon itself sets in a task's environment, whatever a spawn asks: a spawn naming one
# is refused, rather than see its value dropped without a word.
DAEMON_SET_ENV = frozenset({
    "SNIPE_PROC_URN", "SNIPE_KEY_FILE", "SNIPE_CATALOG", "SNIPE_ADMIN_KEY", "SNIPE_DAEMON", "SNIPE_HOST_URN",
    IPC_DIR_ENV, "SNIPE_CHECKPOINT_EVERY", "SNIPE_REPLICA_INDEX", "SNIPE_MIGRATION", "SNIPE_RESTORE_FILE",
    "SNIPE_RESTORE_URN"})


def _users_environment(env: Envelope) -> dict[str, str]:
    """A spawn's `env`, checked, and refused if it names a variable the daemon sets itself."""
    extra = environment_of(env, "env")
    taken = sorted(DAEMON_SET_ENV.intersection(extra))
    if "SNIPE_CHECKPOINT_EVERY" in taken:
        raise CodecError("spawn: env sets SNIPE_CHECKPOINT_EVERY, which the daemon sets itself from the spawn's "
                         "checkpoint period: pass checkpoint_every= to snipe.spawn (the request's checkpoint_every) "
                         "instead, and leave it out of env")
    if taken:
        raise CodecError(f"spawn: env sets {', '.join(taken)}, which the daemon sets itself for every task "
                         "(where it keeps its sockets, its key, its catalog...); leave them out")
    return extra


def _client_waits(env: Envelope) -> float:
    """How long the client of a spawn or clone waits for the answer: its `timeout`, else what
    snipe's clients wait (the migration's clone timeout for a clone)."""
    return seconds_of(env, "timeout", CLONE_TIMEOUT_S if env.kind == "clone" else SPAWN_TIMEOUT_S)


def _served_within(env: Envelope) -> float:
    """How long after it came a parked spawn or clone may still be served: its client's wait,
    less a margin. The client's clock started before it connected and sent, so a request served
    right at the client's own timeout would start what nobody hears of."""
    waits = _client_waits(env)
    return waits - max(5.0, 0.1 * waits) if waits > 10.0 else waits / 2


def _now_ms() -> int:
    return int(time.time() * 1000)


def remove_task_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


__all__ = ["ConfigError", "Daemon", "DaemonConfig"]
