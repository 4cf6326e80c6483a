"""rcds-server's shell: ZeroMQ sockets and timers around the replica and replication cores.

One thread owns every socket. Each loop turn drains what has arrived (up to a batch), stores
all puts and peer pushes in it as one storage transaction (group commit), then answers the
turn's reads (so a read behind a put sees it), pushes new writes to peers, and sends all of it
together at the end of the turn; relayed puts wait for their peers' acks (rcds/put_waits.py).
Between turns it fans changes out to watchers (reading the change log only while anyone
watches), fires due timers, and keeps the LMDB map's mapped pages within budget. Nothing a
client or peer sends can stop the loop: malformed input gets an error reply naming the
problem, and the loop goes on.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import zmq

from rcds import put_waits
from rcds.mapbudget import MapBudget
from rcds.put_waits import PutWaits, WaitingPut
from rcds.replica import Accepted, Refused, Replica
from rcds.replication import PROTOCOL as PEER_PROTOCOL
from rcds.replication import VERSION as PEER_VERSION
from rcds.replication import Confirmed, PeerEffect, Replicator
from rcds.store import LmdbStorage
from snipe import authority
from snipe.assertion import Assertion
from snipe.catalog import protocol as P
from snipe.effects import Send, StartTimer
from snipe.errors import (
    CodecError,
    ListenError,
    NotAuthorized,
    ResyncNeeded,
    SnipeError,
    StorageFull,
    TooLarge,
    UnknownRequest,
)
from snipe.identity import Identity, public_key_from_id
from snipe.query import matches, parse_predicates
from snipe.startup import listen_on
from snipe.transport import KeyGate, Link, recv_parts, send_parts, sender_key, server_socket
from snipe.urn import validate_urn
from snipe.wire import Envelope, check_version, decode, encode, field_of

log = logging.getLogger("rcds.server")

TICK_S = 0.1
BATCH = 512
# plain ints: pyzmq's enum flags cost microseconds on every call
_NOBLOCK, _POLLIN = int(zmq.NOBLOCK), int(zmq.POLLIN)


@dataclass
class PeerInfo:
    id: str
    endpoint: str
    key: bytes


@dataclass
class ServerConfig:
    replica_id: str
    listen: str
    data_dir: str
    identity: Identity
    admin_key: bytes
    peers: list[PeerInfo] = field(default_factory=list)
    anti_entropy_s: float = 1.0
    log_retention: int = 200_000
    sync: bool = False
    gc_grace_ms: int = 24 * 3600 * 1000
    map_budget_mib: int = 64       # pages of the LMDB map kept mapped before they are dropped (rcds/mapbudget.py)
    min_free_mib: int = 64         # writes are refused while the store's file system has less free (rcds/store.py)


@dataclass
class Watcher:
    client: bytes
    watch: str
    prefix: str
    last_sent: int                 # the log position this watcher has been scanned up to
    last_event: int = 0            # the revision of the last event it was sent: the next one's "prev"
    last_beat: float = 0.0
    lagged_after: int | None = None


_Put = tuple[bytes, Envelope, list[bytes], tuple[int, float] | None]   # (client, request, records, relay)
SEND_QUEUE_MESSAGES = 5000


class Server:
    def __init__(self, cfg: ServerConfig) -> None:
        self.cfg = cfg
        self.storage = LmdbStorage(cfg.data_dir, sync=cfg.sync, log_retention=cfg.log_retention,
                                   min_free_bytes=cfg.min_free_mib << 20)
        self.refused_full = 0           # writes (client puts, peer pushes, timers) refused for want of disk
        self._full_said_at = -math.inf
        self.replica = Replica(self.storage, cfg.admin_key, gc_grace_ms=cfg.gc_grace_ms,
                               watched_urns=(P.REPLICA_SET_URN,))
        self.replicator = Replicator(cfg.replica_id, self.replica, self.storage, interval=cfg.anti_entropy_s,
                                     first_flush=secrets.randbits(48))
        self.map_budget = MapBudget(self.storage.data_file, cfg.map_budget_mib << 20)
        self.ctx = zmq.Context()
        self.gate = KeyGate(self.ctx, self._admit, self.storage.ed_key_of_curve)
        self.gate.install()
        self.gate.learn(cfg.admin_key)
        self.router = server_socket(self.ctx, zmq.ROUTER, cfg.identity)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # Messages queued for one client: its replies and watch events (about P.EVENT_BYTES of
        # records each), so a client that stops reading holds at most some 80 MiB here, not the
        # whole log a watch replays; past it its watches lag (an explicit event, never a silent gap).
        self.router.sndhwm = SEND_QUEUE_MESSAGES
        self.router.rcvhwm = 100_000
        self.router.maxmsgsize = 64 * 1024 * 1024
        try:
            listen_on(self.router, cfg.listen)
        except ListenError:
            self.router.close(0)
            self.gate.stop()
            self.ctx.term()
            self.storage.close()
            raise
        self.peers: dict[str, PeerInfo] = {}
        self.peer_key_ids: set[str] = set()
        self.peer_links: dict[str, Link] = {}
        self.seed_peers = {p.id: p for p in cfg.peers if p.id != cfg.replica_id}
        self.timers: dict[str, float] = {}
        self.put_waits = PutWaits()
        self._held: list[tuple[zmq.Socket, list[bytes]]] | None = None   # sends held until the end of the turn
        self.watchers: dict[tuple[bytes, str], Watcher] = {}
        self.delivered_rev = self.storage.last_rev()
        self.started = time.time()
        self.requests = 0
        self.errors = 0
        self._stop = False
        self._refresh_peers()
        self._run_effects(self.replicator.start(time.monotonic()))

    # --- who may connect ------------------------------------------------------------------
    def _admit(self, ed_key: bytes) -> bool:
        if ed_key == self.cfg.admin_key or any(p.key == ed_key for p in self.peers.values()):
            return True
        return self.storage.is_admitted(ed_key) or any(p.key == ed_key for p in self.seed_peers.values())

    def _refresh_peers(self) -> None:
        """Peers = configured seeds, plus replicas the admin listed in the catalog, minus removed."""
        peers = dict(self.seed_peers)
        now = _now_ms()
        for a in self.storage.held(P.REPLICA_SET_URN):
            if not a.name.startswith(P.REPLICA_NAME_PREFIX) or a.signer != self.cfg.admin_key:
                continue
            rid = a.name[len(P.REPLICA_NAME_PREFIX):]
            if rid == self.cfg.replica_id:
                continue
            if a.is_live(now) and isinstance(a.value, dict):
                try:
                    peers[rid] = PeerInfo(rid, str(a.value["endpoint"]), bytes.fromhex(str(a.value["key"])))
                except (KeyError, ValueError):
                    log.warning("ignoring malformed replica entry %s", a.describe())
            else:
                peers.pop(rid, None)
        for rid in set(self.peer_links) - set(peers):
            self.peer_links.pop(rid).close()
        for rid, p in peers.items():
            old = self.peers.get(rid)
            if rid in self.peer_links and old is not None and old.endpoint == p.endpoint and old.key == p.key:
                continue
            if rid in self.peer_links:
                self.peer_links.pop(rid).close()
            self.gate.learn(p.key)
            self.peer_links[rid] = Link(self.ctx, self.cfg.identity, p.endpoint, p.key, hwm=10_000, immediate=False)
        self.peers = peers
        self.peer_key_ids = {p.key.hex() for p in peers.values()}      # as sender_key gives them
        self.replicator.set_peers(list(peers))

    # --- main loop --------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop = True

    def serve_forever(self) -> None:
        poller = zmq.Poller()
        poller.register(self.router, _POLLIN)
        next_tick = 0.0
        try:
            while not self._stop:
                now = time.monotonic()
                due = min([next_tick, *self.timers.values()])
                timeout = max(0.0, min(due - now, TICK_S))
                if poller.poll(timeout * 1000):
                    self._drain()
                now = time.monotonic()
                if now >= next_tick:
                    next_tick = now + TICK_S
                    try:
                        while self.replica.tick(_now_ms()) >= 1000:
                            pass
                    except StorageFull as exc:           # the timers fire once there is room again
                        self._storage_full(exc)
                    for link in self.peer_links.values():
                        link.check(now)
                    self._beat(now)
                    self.map_budget.check(now)
                for key, at in list(self.timers.items()):
                    if at <= now:
                        del self.timers[key]
                        self._on_timer(key, now)
                if self.replica.changed:          # the replica set changed: a write, a push, an expiry
                    self.replica.changed.clear()
                    self._refresh_peers()
                self._dispatch_changes()
        finally:
            self.close()

    def close(self) -> None:
        with contextlib.suppress(zmq.ZMQError, SnipeError):   # writes held for a batch: pushed now
            self._run_effects([e for e in self.replicator.flush() if not isinstance(e, StartTimer)])
        for link in self.peer_links.values():
            link.close()
        self.router.close(0)
        self.gate.stop()
        self.ctx.term()
        self.storage.close()

    def _drain(self) -> None:
        self._held = []
        try:
            self._take_turn()
        finally:
            self._send_held()
            self._held = None

    def _send_held(self) -> None:
        held, self._held = self._held, []
        for sock, parts in held or ():
            self._send_now(sock, parts)

    def _take_turn(self) -> None:
        batch: list[list[zmq.Frame]] = []
        for _ in range(BATCH):
            try:     # until there is none: asking ZeroMQ first costs a system call per message
                batch.append(recv_parts(self.router, _NOBLOCK))
            except zmq.Again:
                break
        puts: list[_Put] = []
        pushes: list[tuple[str, Envelope, list[bytes]]] = []     # (peer key, message, frames)
        requests: list[tuple[bytes, Envelope, list[bytes]]] = []  # (client, request, frames)
        for parts in batch:
            self.requests += 1
            client = parts[0].bytes
            try:
                env, frames = decode(parts[1:])
            except SnipeError as exc:
                self._reply(client, Envelope(P.PROTOCOL, P.VERSION, "error", 0,
                                             {"code": exc.code, "message": str(exc)}))
                self.errors += 1
                continue
            try:
                if env.protocol == PEER_PROTOCOL:
                    key = sender_key(parts[0])                # which replica's key sent it
                    if key not in self.peer_key_ids:
                        # a client's key: told (a replica never reads what comes back on its link)
                        raise NotAuthorized(f"{PEER_PROTOCOL} messages are taken only from the replicas of this "
                                            f"set; key {key[:16]}… is not one of them")
                    if env.kind == "push":
                        pushes.append((key, env, frames))       # stored with the puts, below
                    else:
                        self._on_peer(key, env, frames)
                    continue
                check_version(env, P.PROTOCOL, P.VERSIONS)
                if env.kind == "put":
                    puts.append((client, env, P.unpack_records(frames, P.MAX_BATCH_RECORDS, "put"),
                                 self._relay_of(env)))
                else:
                    # answered after this turn's puts are stored: a read that arrived behind a
                    # client's put must see it (the client may have moved on after W others acked)
                    requests.append((client, env, frames))
            except Exception as exc:
                self._answer_failure(client, env, exc)
        if puts or pushes:
            self._group_commit(puts, pushes)
        for client, env, frames in requests:
            try:
                self._handle(client, env, frames)
            except Exception as exc:
                self._answer_failure(client, env, exc)

    def _answer_failure(self, client: bytes, env: Envelope, exc: Exception) -> None:
        """Tell the client why its request failed; a bug here must not take the replica down."""
        self.errors += 1
        if not isinstance(exc, SnipeError):
            log.exception("failed on %s %s", env.protocol, env.kind, exc_info=exc)
            exc = _server_error(exc)
        self._reply(client, env.error_reply(exc))

    def _on_peer(self, key: str, env: Envelope, frames: list[bytes], *, run: bool = True) -> list[PeerEffect]:
        """Handle a peer's message; its effects are carried out, or with `run=False` returned
        (a push's ack must wait for the commit of what it acknowledges)."""
        if env.version != PEER_VERSION:
            log.warning("peer speaks %s/%s; this replica speaks version %s", env.protocol, env.version, PEER_VERSION)
            return []
        sender = env.body.get("from")
        peer = self.peers.get(sender) if isinstance(sender, str) else None
        if peer is None or peer.key.hex() != key:
            log.warning("replication message from replica key %s… naming itself %.64r, which is not its id",
                        key[:16], sender)
            return []
        try:
            effects = self.replicator.on_message(env, frames, _now_ms())
        except StorageFull as exc:
            self._storage_full(exc)
            return []
        except SnipeError as exc:
            log.warning("bad replication message from %s: %s", sender, exc)
            return []
        if not run:
            return effects
        self._run_effects(effects)
        return []

    # --- requests ---------------------------------------------------------------------------
    def _group_commit(self, puts: list[_Put],
                      pushes: list[tuple[str, Envelope, list[bytes]]]) -> None:
        """Store what peers pushed and clients put in this turn in one transaction, then answer.
        The pushes go first, so a client's write is checked knowing what the peers just sent
        (an admission or a claim it depends on); a record both sent costs one check either way."""
        records: list[bytes] = [r for _, _, recs, _ in puts for r in recs]
        committed: list[PeerEffect] = []      # the pushes' acks: sent once what they acknowledge is committed
        try:
            with self.replica.batch():
                for key, env, frames in pushes:
                    committed.extend(self._on_peer(key, env, frames, run=False))
                results = self.replica.ingest(records, _now_ms()) if records else []
        except Exception as exc:  # a bug here must not take the replica down; the transaction was aborted
            if isinstance(exc, StorageFull):     # (the pushes stay unacknowledged: their senders push again)
                self._storage_full(exc)
            else:
                log.exception("failed to store %d puts and %d pushes", len(puts), len(pushes))
                exc = _server_error(exc)
            self.errors += len(puts)
            for client, env, _, _ in puts:
                self._reply(client, env.error_reply(exc))
            return
        self._run_effects(committed)
        now = time.monotonic()
        i = 0
        for client, env, recs, relay in puts:
            mine = results[i:i + len(recs)]
            i += len(recs)
            took = [(r, raw) for r, raw in zip(mine, recs, strict=True) if isinstance(r, Accepted)]
            out = [_result_row(r) for r in mine]
            if not took or len(took) < len(recs):
                relay = None               # refused here: the client learns why at once
            if took:
                flush = self.replicator.on_local_writes([r for r, _ in took], raw=[raw for _, raw in took],
                                                        sent_to=self._sent_to(env), confirm=relay[0] if relay else 0)
            if relay is None:
                self._reply(client, env.reply(results=out, turn=len(puts)))
            else:
                needed, wait_s = relay
                self._run_effects(self.put_waits.wait(flush, WaitingPut(client, env, out, needed, now + wait_s,
                                                                        turn=len(puts))))
        self._run_effects(self.replicator.flush(time.monotonic()))

    def _storage_full(self, exc: StorageFull) -> None:
        """Count a write refused for want of disk, and say so at most once a minute."""
        self.refused_full += 1
        now = time.monotonic()
        if now - self._full_said_at >= 60:
            self._full_said_at = now
            log.warning("%s (%d writes refused so far)", exc, self.refused_full)

    def _relay_of(self, put: Envelope) -> tuple[int, float] | None:
        """For a put its client sent here alone ("relay": how many peers must hold it too, "wait":
        for at most how many ms): (peers to wait for, seconds to wait); None for a plain put or
        when this replica has no peers to wait for (then it answers at once, for itself)."""
        relay, wait_ms = put.body.get("relay"), put.body.get("wait")
        if type(relay) is not int or relay < 1 or not self.peers:
            return None
        if type(wait_ms) is not int or not 0 <= wait_ms <= P.MAX_RELAY_WAIT_MS:
            raise CodecError(f"a relayed put needs 'wait', an int of 0 to {P.MAX_RELAY_WAIT_MS} ms")
        return min(relay, len(self.peers)), wait_ms / 1000

    def _answer_waiting(self, put: WaitingPut) -> None:
        """Answer a relayed put: this replica's results, and every replica holding its records
        (this one and the peers that confirmed), by their key tags as the client's "to" names them."""
        tags = [self.cfg.identity.public_key[:P.KEY_TAG_BYTES]]
        tags.extend(self.peers[p].key[:P.KEY_TAG_BYTES] for p in put.confirmed_by if p in self.peers)
        self._reply(put.reply_to, put.request.reply(results=put.results, held_by=tags, turn=put.turn))

    def _on_timer(self, key: str, now: float) -> None:
        if key == put_waits.TIMER:
            expired, effects = self.put_waits.on_timer(now)
            for put in expired:
                self._answer_waiting(put)
            self._run_effects(effects)
        else:
            self._run_effects(self.replicator.on_timer(key, now))

    def _sent_to(self, env: Envelope) -> list[str]:
        """The peers this replica need not push a put to: those its client says it sent the put
        to as well ("to": the first P.KEY_TAG_BYTES of each replica's key, in order), and all of
        them unless this replica is named first: the first named pushes to the rest. A copy that
        a lost message or a crash kept from a replica is repaired by anti-entropy; an unusable
        list means every peer gets a push."""
        tags = env.body.get("to")
        if not isinstance(tags, list) or not tags or type(tags[0]) is not bytes:
            return []
        if tags[0] != self.cfg.identity.public_key[:P.KEY_TAG_BYTES]:
            return list(self.peers)
        tagset = {t for t in tags if type(t) is bytes}
        return [pid for pid, p in self.peers.items() if p.key[:P.KEY_TAG_BYTES] in tagset]

    def _handle(self, client: bytes, env: Envelope, frames: list[bytes]) -> None:
        match env.kind:
            case "hello":
                self._reply(client, env.reply(protocols={P.PROTOCOL: list(P.VERSIONS), PEER_PROTOCOL: [PEER_VERSION]},
                                              replica=self.cfg.replica_id, key=self.cfg.identity.key_id))
            case "get":
                urn = validate_urn(field_of(env, "urn", str))
                name = field_of(env, "name", (str, type(None)), None)
                # as stored: the reader verifies them (with a name, the URN's ownership and delegation come too)
                records = self.storage.held_raw(urn, name)
                self._reply(client, env.reply(rev=self.storage.last_rev()), [P.pack_records(records)])
            case "query":
                self._query(client, env)
            case "watch":
                self._watch(client, env)
            case "unwatch":
                self.watchers.pop((client, field_of(env, "watch", str)), None)
                self._reply(client, env.reply())
            case "status":
                self._reply(client, env.reply(**self.status()))
            case "admitted":
                if "curve" in env.body:
                    try:
                        curve = bytes.fromhex(field_of(env, "curve", str))
                    except ValueError:
                        curve = b""
                    if len(curve) != 32:
                        raise CodecError("'curve' must be the hex of a 32-byte X25519 key")
                    ed = self.storage.ed_key_of_curve(curve)
                else:
                    ed = public_key_from_id(field_of(env, "key", str))
                reasons = self.storage.admission_reasons(ed) if ed else []
                self._reply(client, env.reply(key=ed.hex() if ed else None, reasons=reasons))
            case _:
                raise UnknownRequest(f"rcds/1 has no request {env.kind!r}; it has hello, put, get, query, watch, "
                                     "unwatch, status, admitted")

    def _query(self, client: bytes, env: Envelope) -> None:
        prefix = field_of(env, "prefix", str)
        where = parse_predicates(env.body.get("where"))
        limit = field_of(env, "limit", int, P.MAX_QUERY_URNS)
        if not 1 <= limit <= P.MAX_QUERY_URNS:
            raise CodecError(f"query 'limit' must be 1 to {P.MAX_QUERY_URNS} URNs, not {limit}")
        now = _now_ms()
        out: list[bytes] = []
        urns = 0
        group: list[Assertion] = []

        def flush() -> None:
            nonlocal urns
            if not group:
                return
            live = [a for a in group if a.is_live(now)]
            good, _ = authority.visible(live, self.cfg.admin_key, now)
            if good and matches(good, where):
                out.extend(a.encode() for a in group)
                urns += 1

        for a in self.storage.scan_prefix(prefix, having={name for name, _, _ in where}):
            if group and a.urn != group[0].urn:
                flush()
                group = []
                if urns >= limit:
                    break
            group.append(a)
        if urns < limit:
            flush()
        self._reply(client, env.reply(urns=urns, rev=self.storage.last_rev()), [P.pack_records(out)])

    def _watch(self, client: bytes, env: Envelope) -> None:
        watch = field_of(env, "watch", str)
        prefix = field_of(env, "prefix", str)
        from_rev = field_of(env, "from_rev", (int, type(None)), None)
        self._dispatch_changes()          # everything up to now goes out under the old watchers first
        current = self.storage.last_rev()
        first, _ = self.storage.changes_since(current, 1)
        if from_rev is None:
            from_rev = current
        elif from_rev < first - 1:
            raise ResyncNeeded(f"revision {from_rev} is no longer in this replica's log (it starts at "
                               f"{first}); read the current state, then watch from revision {current}")
        elif from_rev > current:
            raise ResyncNeeded(f"revision {from_rev} is ahead of this replica ({current}); it is not the "
                               "replica you watched before: read the current state and watch again")
        if (client, watch) not in self.watchers and \
                sum(1 for c, _ in self.watchers if c == client) >= P.MAX_WATCHES_PER_CONNECTION:
            raise TooLarge(f"this connection already holds {P.MAX_WATCHES_PER_CONNECTION} watches, the most a "
                           "replica keeps for one; unwatch some, or watch a prefix they share")
        w = Watcher(client, watch, prefix, from_rev, from_rev, time.monotonic())
        self.watchers[(client, watch)] = w
        self.delivered_rev = current      # this watcher is brought up to `current` below
        self._reply(client, env.reply(rev=current, first_rev=first, replica=self.cfg.replica_id))
        rev = from_rev
        while rev < current and self.watchers.get((client, watch)) is w and w.lagged_after is None:
            _, changes = self.storage.changes_since(rev, 5000)
            if not changes:
                break
            self._send_changes(w, [c for c in changes if c.rev <= current])
            rev = changes[-1].rev

    def _dispatch_changes(self) -> None:
        if not self.watchers:             # nobody to tell: a new watcher starts from the log itself
            return
        last = self.storage.last_rev()
        while self.delivered_rev < last:
            _, changes = self.storage.changes_since(self.delivered_rev, 5000)
            if not changes:
                break
            self.delivered_rev = changes[-1].rev
            for w in list(self.watchers.values()):
                self._send_changes(w, [c for c in changes if c.rev > w.last_sent])

    def _send_changes(self, w: Watcher, changes: list[Any]) -> None:
        mine = [c for c in changes if c.record.urn.startswith(w.prefix)]
        if w.lagged_after is not None:
            # Tell the watcher what it missed before anything newer; it re-watches from there.
            if self._tell_watcher(w.client, Envelope(P.PROTOCOL, P.VERSION, "lagged", 0,
                                                     {"watch": w.watch, "after": w.lagged_after})):
                self.watchers.pop((w.client, w.watch), None)
            return
        if not mine:
            if changes:
                w.last_sent = max(w.last_sent, changes[-1].rev)
            return
        for part in _by_bytes(mine, P.EVENT_BYTES):
            env = Envelope(P.PROTOCOL, P.VERSION, "event", 0, {
                "watch": w.watch, "prev": w.last_event, "revs": [c.rev for c, _ in part],
                "kinds": [c.event for c, _ in part]})
            if not self._tell_watcher(w.client, env, [P.pack_records([raw for _, raw in part])]):
                if (w.client, w.watch) in self.watchers:
                    w.lagged_after = w.last_event
                return
            w.last_event = part[-1][0].rev
            w.last_beat = time.monotonic()
        w.last_sent = changes[-1].rev

    def _beat(self, now: float) -> None:
        rev = self.storage.last_rev()
        for w in list(self.watchers.values()):
            if now - w.last_beat >= P.HEARTBEAT_S:
                w.last_beat = now
                if w.lagged_after is not None:
                    self._send_changes(w, [])
                else:
                    self._reply(w.client, Envelope(P.PROTOCOL, P.VERSION, "heartbeat", 0,
                                                   {"watch": w.watch, "rev": rev, "prev": w.last_event}))

    def _reply(self, client: bytes, env: Envelope, frames: list[bytes] | tuple[bytes, ...] = ()) -> None:
        """Send to a client (one that is gone or whose queue is full misses it)."""
        self._send(self.router, [client, *encode(env, frames)])

    def _send(self, sock: zmq.Socket, parts: list[bytes]) -> None:
        """Send on the router (to a client) or a peer link. Within a turn, sends are held and
        made together at its end: sends in a row wake ZeroMQ's I/O thread once, not once each,
        and on a small machine that wake-up is the dearest part of a send. What must know
        whether its send was taken uses `_tell_watcher`."""
        if self._held is not None:
            self._held.append((sock, parts))
        else:
            self._send_now(sock, parts)

    def _tell_watcher(self, client: bytes, env: Envelope, frames: list[bytes] | tuple[bytes, ...] = ()) -> bool:
        """Send to a watcher at once, after what the turn holds (so in order), and say whether
        it was taken: a watcher's bookkeeping (what it was sent, whether it lags) depends on it."""
        if self._held:
            self._send_held()
        return self._send_now(self.router, [client, *encode(env, frames)])

    def _send_now(self, sock: zmq.Socket, parts: list[bytes]) -> bool:
        """Send now; False if a client could not take it (gone, or its queue is full)."""
        if sock is not self.router:
            # peer down or slow: anti-entropy will repair what this push would have carried
            with contextlib.suppress(zmq.Again):
                send_parts(sock, parts, _NOBLOCK)
            return True
        client = parts[0]
        try:
            send_parts(self.router, parts, _NOBLOCK)
            return True
        except zmq.Again:
            return False
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                for k in [k for k in self.watchers if k[0] == client]:
                    del self.watchers[k]
            return False

    def _run_effects(self, effects: Sequence[PeerEffect]) -> None:
        for e in effects:
            if isinstance(e, StartTimer):
                self.timers[e.key] = e.at
            elif isinstance(e, Confirmed):
                for put in self.put_waits.on_confirmed(e.peer, e.seq):
                    self._answer_waiting(put)
            elif isinstance(e, Send):
                link = self.peer_links.get(e.to)
                if link is None:
                    continue
                self._send(link.sock, encode(e.envelope, e.frames))

    def status(self) -> dict[str, Any]:
        st = self.replicator.stats()
        first, _ = self.storage.changes_since(self.storage.last_rev(), 1)
        return {
            "replica": self.cfg.replica_id, "key": self.cfg.identity.key_id, "listen": self.cfg.listen,
            "rev": self.storage.last_rev(), "first_rev": first, "count": self.storage.count(),
            "peers": sorted(self.peers), "pushed": st.pushed, "received": st.received,
            "repaired": st.repaired, "ae_rounds": st.rounds, "ae_deferred": st.deferred, "watchers": len(self.watchers),
            "requests": self.requests, "errors": self.errors, "pid": os.getpid(), "sync": self.cfg.sync,
            "uptime_s": round(time.time() - self.started, 3), "corrupt_records": self.storage.corrupt_total,
            "refused_keys": len(self.gate.refused), "refused_for_disk": self.refused_full,
            "map_resident_mib": round(self.map_budget.resident / 2**20, 1), "map_trims": self.map_budget.trims,
            "digest": hashlib.sha256(b"".join(self.storage.top_digests())).hexdigest()[:32],
        }


def _result_row(r: Accepted | Refused) -> list[Any]:
    """One record's line in a put's answer: [status, error code, message, revision]."""
    if isinstance(r, Accepted):
        return [P.STORED if r.new else P.HELD, "", "", r.rev]
    return [P.REFUSED, r.error.code, str(r.error), 0]


def _server_error(exc: Exception) -> SnipeError:
    from snipe.errors import ServerError
    return ServerError(f"the replica failed on this request ({exc.__class__.__name__}); it keeps serving")


def _by_bytes(changes: list[Any], limit: int) -> list[list[tuple[Any, bytes]]]:
    """Changes with their encoded records, in runs of about `limit` record bytes (one at least)."""
    runs: list[list[tuple[Any, bytes]]] = []
    size = limit
    for c in changes:
        raw = c.record.encode()
        if size + len(raw) > limit:
            runs.append([])
            size = 0
        runs[-1].append((c, raw))
        size += len(raw)
    return runs


def _now_ms() -> int:
    return int(time.time() * 1000)

