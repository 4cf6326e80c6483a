"""The catalog client every SNIPE process uses: quorum writes, verified reads, watches, a cache.

Readers trust keys, not servers. Every record a replica returns is verified (Ed25519) and
checked against the URN's ownership and delegations before it is believed; what fails is
dropped, counted in `rejected`, and the read goes on to another replica, so a tampered replica
can hide data but never forge it.

Quorums: a write goes to every reachable replica and succeeds once W of them acknowledge it; a
read asks R replicas and merges their answers by the catalog rule (newest per key wins). The
defaults, W = N//2 + 1 and R = N - W + 1, give read-your-writes.

One client per thread: it owns its sockets (ZeroMQ sockets are not thread-safe).
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import zmq

from snipe import authority
from snipe.assertion import Assertion, decode_assertion, make_assertion, merge
from snipe.catalog import protocol as P
from snipe.catalog.entry import Entry
from snipe.discovery import FailoverOrder, ReplicaAddress, from_list
from snipe.errors import (
    CodecError,
    ConfigError,
    NotAuthorized,
    QuorumError,
    ResyncNeeded,
    SignatureError,
    SnipeError,
    TooLarge,
    Unreachable,
    error_from_code,
)
from snipe.hlc import HybridClock
from snipe.identity import Identity, public_key_from_id
from snipe.query import Predicate, matches
from snipe.transport import Link, recv_parts, send_parts
from snipe.urn import validate_urn
from snipe.wire import Envelope, decode, encode

log = logging.getLogger("snipe.catalog")


HEDGE_AFTER_S = 0.25         # a read asks one more replica once 2.5 times its usual time has passed, within
READ_HEDGE_FACTOR = 2.5      # these bounds: when every replica is slow (a loaded machine) a hedge adds load,
READ_HEDGE_MAX_S = 1.0       # not speed, so it is kept for the slow tail
READ_FIRST_GUESS_S = 0.01    # a new client's guess at a read's time, until it has measured some
PUT_HEDGE_MIN_S = 0.01       # a put asks one more replica after 2.5 times its usual time, within these bounds
PUT_HEDGE_FACTOR = 2.5
PUT_HEDGE_MAX_S = HEDGE_AFTER_S
PUT_EWMA = 0.2
PUT_FIRST_GUESS_S = 0.05     # a new client's guess at a put's time, until it has measured some
RELAY_SLACK_S = 0.005        # how much longer than twice its wait a relayed put's replica may take to answer
RELAY_FROM_TURN = 1.5        # relay puts once replicas store this many client puts a turn, on average
LINK_CHECK_S = 0.1           # how often links read their handshake events
REFUSED_RETRY_S = 0.25       # a refused handshake is tried again this soon: the key may be admitted by now
BELIEVED_RECORDS = 20_000    # verified records remembered by their bytes, so a repeat read skips the work,
BELIEVED_MAX_BYTES = 4096    # if they are at most this big
WATCH_AUTHORITY_URNS = 10_000   # URNs whose ownership records a watch keeps for judging its events
WATCH_EXPIRING = 10_000      # expiries a watch holds until their lease runs out by this clock
WATCH_MIN_READ_S = 0.25      # how long a watch's next() may read a URN's ownership, whatever its timeout
WATCH_SETTLE_S = 5.0         # an event no read could check for this long is dropped (logged)
ADMITTED_FOR_S = 30.0        # a claimant proved admitted is believed so for this long (then checked again)
NOT_ADMITTED_FOR_S = 1.0     # a replica that could not prove a key admitted is not asked again for this long
ADMISSION_KEYS = 10_000      # claimant keys remembered

# plain ints: pyzmq's enum flags cost microseconds on every call
_POLLIN, _NOBLOCK = int(zmq.POLLIN), int(zmq.NOBLOCK)


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Rejected:
    """A record a replica returned that the reader refused to believe."""

    replica: str
    reason: str
    record: Assertion | None


@dataclass
class PutResult:
    acks: int
    replicas: dict[str, str]          # endpoint -> stored | held | refused code | no answer
    records: list[Assertion]


@dataclass
class _Conn:
    address: ReplicaAddress
    link: Link
    key: bytes

    @property
    def sock(self) -> zmq.Socket:
        return self.link.sock


@dataclass
class WatchEvent:
    """One change seen by a watch. `kind`: put, delete, expire, or resync (then `state` holds
    every live record under the prefix and the caller should replace what it knew)."""

    kind: str
    record: Assertion | None
    rev: int
    replica: str
    state: list[Assertion] = field(default_factory=list)


class CatalogClient:
    def __init__(
        self,
        replicas: Sequence[ReplicaAddress | str],
        identity: Identity,
        admin_key: bytes | str,
        *,
        timeout: float = 3.0,
        w: int | None = None,
        r: int | None = None,
        relay: bool | None = None,
    ) -> None:
        """`relay`: send each W>1 put to one replica, which relays it (True), never (False), or
        when the replicas are busy (None, the default; see `put`)."""
        addrs = [a if isinstance(a, ReplicaAddress) else from_list([a])[0] for a in replicas]
        if not addrs:
            raise ConfigError("no catalog replicas given; pass a list, a config file or an SRV domain")
        self.identity = identity
        self.admin_key = public_key_from_id(admin_key) if isinstance(admin_key, str) else admin_key
        self.timeout = timeout
        self.n = len(addrs)
        self.w = w or self.n // 2 + 1
        self.r = r or self.n - self.w + 1
        self.order = FailoverOrder(addrs, base_backoff=0.5, max_backoff=10.0)
        self.ctx = zmq.Context.instance()
        self.conns: dict[str, _Conn] = {}
        for a in addrs:
            if a.public_key is None:
                raise ConfigError(f"replica {a.endpoint} has no key; write it as {a.endpoint}#<key id>")
            key = bytes.fromhex(a.public_key)
            # immediate: a send to a replica that is not connected fails at once, so we fail over
            link = Link(self.ctx, identity, a.endpoint, key, immediate=True, retry_s=REFUSED_RETRY_S)
            self.conns[a.endpoint] = _Conn(a, link, key)
        self._index_sockets()
        self._by_tag = {c.key[:P.KEY_TAG_BYTES]: endpoint for endpoint, c in self.conns.items()}
        self.clock = HybridClock()
        self._ids = itertools.count(1)
        self._replies: dict[int, tuple[str, Envelope, list[bytes]]] = {}
        self._late: set[int] = set()      # requests given up on; their replies are dropped
        self._watches: dict[str, Watch] = {}
        self.rejected: deque[Rejected] = deque(maxlen=1000)
        self.rejected_total = 0
        self.suspect_total = 0            # rejections that make a replica's answer untrustworthy
        self._suspected: Counter[str] = Counter()     # ... by replica: an answer is judged by its own
        self._cache: dict[str, tuple[float, Entry, int | None]] = {}   # urn -> (when, entry, its next expiry)
        self._believed: OrderedDict[bytes, Assertion] = OrderedDict()
        self._admission: dict[bytes, float] = {}     # key proved admitted -> until when that is believed
        self._host_keys: dict[bytes, float] = {}     # key proved a host's -> until when
        self._not_admitted: dict[tuple[str, bytes], float] = {}   # (replica, key) it could not prove -> until
        self._links_checked = 0.0
        self._put_s = PUT_FIRST_GUESS_S     # moving average of a W-acknowledged put's time
        self._read_s = READ_FIRST_GUESS_S   # moving average of an R-answered read's time
        self._turn = 1.0           # moving average of the client puts a replica stored in the turn of ours
        self.relay = relay
        self.relayed = 0           # puts sent to one replica to relay
        self.spares_asked = 0      # put requests sent beyond the first W (slow, unreachable or refusing replicas)

    def _index_sockets(self) -> None:
        self.by_sock = {c.sock: c for c in self.conns.values()}
        self._pollers: dict[frozenset[str] | str, zmq.Poller] = {}   # by the endpoints polled

    def _poller(self, conns: Collection[_Conn] | None) -> zmq.Poller:
        """A poller over `conns` and every connection a watch listens on (all when None).
        Asking only the sockets a reply can come from matters: ZeroMQ checks each polled
        socket's command queue with a system call or two, before and after the wait."""
        if conns is not None and not self._watches and len(conns) == 1:    # a lone request: most of them
            wanted: frozenset[str] | str = next(iter(conns)).address.endpoint
        else:
            wanted = frozenset(c.address.endpoint for c in conns) if conns is not None else frozenset(self.conns)
            wanted |= {w.conn.address.endpoint for w in self._watches.values() if w.conn is not None}
        poller = self._pollers.get(wanted)
        if poller is None:
            poller = self._pollers[wanted] = zmq.Poller()
            for endpoint in [wanted] if isinstance(wanted, str) else wanted:
                poller.register(self.conns[endpoint].sock, _POLLIN)
        return poller

    def _check_links(self, *, force: bool = False) -> list[_Conn]:
        """Let the links read their handshake events (at most every LINK_CHECK_S unless forced);
        returns the connections whose socket was remade after a refusal."""
        now = time.monotonic()
        if not force and now - self._links_checked < LINK_CHECK_S:
            return []
        self._links_checked = now
        remade = [c for c in self.conns.values() if c.link.check(now)]
        if remade:
            self._index_sockets()
        return remade

    def close(self) -> None:
        for c in self.conns.values():
            c.link.close()
        self.conns.clear()

    def __enter__(self) -> CatalogClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing -----------------------------------------------------------------------------
    def _send(self, conn: _Conn, kind: str, body: dict[str, Any] | None = None,
              frames: Sequence[bytes] = ()) -> int | None:
        """Queue a request; None if the replica has no live connection right now."""
        rid = next(self._ids)
        try:
            send_parts(conn.sock, encode(Envelope(P.PROTOCOL, P.VERSION, kind, rid, body or {}), frames), _NOBLOCK)
        except zmq.Again:
            return None
        return rid

    def _pump(self, timeout_s: float, conns: Collection[_Conn] | None = None) -> None:
        """Wait up to `timeout_s` for messages from `conns` (all when None) and the watched ones,
        then take one from each socket that has any (the poll is level-triggered: the rest are
        taken on the next call, which returns at once)."""
        poller = self._poller(conns)
        if not poller.sockets:
            # Nothing to hear from (no request could be sent: every replica asked is down). A
            # poll of no sockets returns at once, and the caller's loop would spin a core.
            time.sleep(max(0.0, timeout_s))
            return
        for sock, _ in poller.poll(max(0, timeout_s) * 1000):
            conn = self.by_sock[sock]
            try:
                env, frames = decode(recv_parts(sock, _NOBLOCK))
            except SnipeError as exc:
                log.warning("undecodable message from replica %s: %s", conn.address.endpoint, exc)
                continue
            if env.request_id:
                self.order.mark_up(conn.address)
                if env.request_id in self._late:
                    self._late.discard(env.request_id)
                else:
                    self._replies[env.request_id] = (conn.address.endpoint, env, frames)
            else:
                w = self._watches.get(str(env.body.get("watch")))
                if w is not None and w.conn is conn:
                    w._on_event(env, frames)

    def _fanout(self, conns: Sequence[_Conn], kind: str, body: dict[str, Any] | None, frames: Sequence[bytes],
                enough: Any, deadline: float, *, spares: Sequence[_Conn] = (), needed: Any = None,
                hedge_s: float = 0.0, never_sent: list[str] | None = None, overtaken_down: bool = False
                ) -> dict[str, tuple[Envelope, list[bytes]]]:
        """Send one request to each of `conns` (retrying those not yet connected) and gather
        replies until `enough(replies)` says so or the deadline passes. Replicas that could not
        be sent to, or did not answer by the deadline, are marked down so that later requests
        prefer the others; one merely slower than the replies that were enough is not.

        `spares` are asked too, one at a time, when the requests in flight can no longer give
        the `needed(replies)` good answers (a replica could not be sent to, or refused), or
        when `hedge_s` passes with no reply being enough (a replica is slow or just died).
        `never_sent`, if given, gets the endpoints that never took the request (no connection came up).
        `overtaken_down`: a replica still silent when the answers were enough, after a hedge went
        out in its place, is marked down too (a read then asks it last, and does not wait out
        the hedge delay on a frozen replica every time; an answer that comes marks it up)."""
        unsent = list(conns)
        spares = list(spares)
        pending: dict[int, _Conn] = {}
        got: dict[str, tuple[Envelope, list[bytes]]] = {}
        timed_out = False
        refusals = {c.address.endpoint: c.link.refusals for c in [*conns, *spares]}
        hedge_at = time.monotonic() + hedge_s
        overtaken: set[int] = set()       # requests a hedge's spare was asked in place of
        while True:
            for conn in list(unsent):
                rid = self._send(conn, kind, body, frames)
                if rid is not None:
                    pending[rid] = conn
                    unsent.remove(conn)
            for rid in [r for r in pending if r in self._replies]:
                endpoint, env, fr = self._replies.pop(rid)
                del pending[rid]
                got[endpoint] = (env, fr)
            if enough(got) or (not pending and not unsent and not spares):
                break
            now = time.monotonic()
            left = deadline - now
            if left <= 0:
                timed_out = True
                break
            if spares and (now >= hedge_at or (needed is not None and len(pending) + len(unsent) < needed(got))):
                if now >= hedge_at:
                    overtaken.update(pending)
                self.spares_asked += 1
                unsent.append(spares.pop(0))
                hedge_at = now + hedge_s
                continue
            for conn in self._check_links():         # a refused handshake, remade: ask again
                for rid in [r for r, c in pending.items() if c is conn]:
                    del pending[rid]
                    self._late.add(rid)
                    unsent.append(conn)
            wait = min(left, 0.01 if unsent else 0.05)
            if spares:
                wait = min(wait, max(0.0, hedge_at - now))
            self._pump(wait, pending.values())
        now = time.monotonic()
        silent = [*unsent, *pending.values()]
        for conn in silent if timed_out else unsent:
            self.order.mark_down(conn.address, now)
        if overtaken_down and not timed_out:
            for rid in overtaken & pending.keys():
                self.order.mark_down(pending[rid].address, now)
        if never_sent is not None:
            never_sent.extend(c.address.endpoint for c in unsent)
        for rid in pending:
            if self._replies.pop(rid, None) is None:     # (one a nested read's pump took in is dropped)
                self._late.add(rid)
        if silent and not got:
            self._check_links(force=True)
            refused = [c.address.endpoint for c in silent
                       if c.link.refused or c.link.refusals > refusals[c.address.endpoint]]
            if refused:
                raise NotAuthorized(
                    f"catalog replica {', '.join(refused)} refused this client's key {self.identity.key_id[:16]}…: "
                    "it is not admitted to the cluster; ask an admin to admit it (a user or host URN)")
        return got

    def _candidates(self) -> list[_Conn]:
        self._check_links()
        if self.order.next_retry_at() is None:     # none is down: the configured order
            return list(self.conns.values())
        return [self.conns[a.endpoint] for a in self.order.next_candidates(time.monotonic(), include_backing_off=True)]

    def request(self, kind: str, body: dict[str, Any] | None = None, frames: Sequence[bytes] = (),
                timeout: float | None = None) -> tuple[str, Envelope, list[bytes]]:
        """Ask one replica and return (endpoint, reply, frames): the first answer, hedged as a
        read is (the next replica is asked too once one cannot be sent to or is slow, and the
        first asked may still answer: a busy replica is not given up on halfway)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        candidates = self._candidates()
        answer: list[tuple[str, Envelope, list[bytes]]] = []

        def take(endpoint: str, env: Envelope, fr: list[bytes]) -> bool:
            answer.append((endpoint, env, fr))
            return True

        spares_before = self.spares_asked
        self._gather(candidates, kind, body or {}, 1, deadline, take, frames=frames)
        if answer:
            endpoint, env, fr = answer[0]
            return endpoint, env.raise_if_error(), fr
        tried = [c.address.endpoint for c in candidates[:1 + self.spares_asked - spares_before]]
        raise QuorumError(f"no catalog replica answered {kind!r} in time (tried {', '.join(tried)})")

    # --- writing ------------------------------------------------------------------------------
    def sign(self, urn: str, name: str, value: Any = None, *, ttl: float | None = None,
             deleted: bool = False) -> Assertion:
        ttl_ms = int(ttl * 1000) if ttl else 0
        return make_assertion(self.identity, urn, name, value, self.clock.now(now_ms()), ttl_ms, deleted)

    def _put_hedge_s(self) -> float:
        return min(PUT_HEDGE_MAX_S, max(PUT_HEDGE_MIN_S, PUT_HEDGE_FACTOR * self._put_s))

    def put(self, records: Sequence[Assertion], *, w: int | None = None, timeout: float | None = None) -> PutResult:
        """Write signed assertions to the replicas; return once W acknowledged every one.

        Raises the replicas' own error (NotAuthorized, SignatureError, StaleWrite, ...) if they
        refuse a record, or QuorumError if fewer than W answered in time.
        """
        w = w or self.w
        if not records:
            return PutResult(0, {}, [])
        if len(records) > P.MAX_BATCH_RECORDS:
            raise TooLarge(f"a put carries at most {P.MAX_BATCH_RECORDS} assertions; split the batch")
        if w > self.n:
            raise ConfigError(f"W={w} is more than the {self.n} replicas configured")
        frames = [P.pack_records([a.encode() for a in records])]
        deadline = time.monotonic() + (timeout or self.timeout)
        outcome: dict[str, str] = {c: "no answer" for c in self.conns}
        refusals: list[SnipeError] = []
        acks = 0

        def judge(got: dict[str, tuple[Envelope, list[bytes]]]) -> int:
            """Count the acknowledgements so far, judging each replica's answer once."""
            nonlocal acks
            for endpoint, (env, _) in got.items():
                if outcome[endpoint] != "no answer":
                    continue
                if env.kind == "error":
                    outcome[endpoint] = str(env.body.get("code"))
                    refusals.append(error_from_code(str(env.body.get("code")), str(env.body.get("message"))))
                    continue
                results = env.body.get("results")
                if not isinstance(results, list) or len(results) != len(records):
                    outcome[endpoint] = "malformed reply"
                    continue
                bad = [r for r in results if not isinstance(r, list) or len(r) != 4 or r[0] == P.REFUSED]
                if bad:
                    outcome[endpoint] = "refused"
                    first = bad[0]
                    refusals.append(error_from_code(str(first[1]), str(first[2])) if isinstance(first, list)
                                    and len(first) == 4 else CodecError("malformed put result"))
                else:
                    outcome[endpoint] = "stored"
                    acks += 1
                    turn = env.body.get("turn")
                    if type(turn) is int and turn > 0:
                        self._turn += PUT_EWMA * (min(turn, 64) - self._turn)
            return acks

        def hopeless() -> bool:
            """Too many replicas refused for W: stop waiting for the others. Unless every refusal
            is on authority, which may only mean a record this write needs (our claim, pushed on
            by the replicas that took it) has not reached that replica yet: then the others'
            answers are awaited, and if any stored the write the refusers are asked again."""
            return len(refusals) > self.n - w and not all(isinstance(e, NotAuthorized) for e in refusals)

        # When the replicas are busy (they store several clients' puts a turn), one request: the
        # first replica stores the write, pushes it to the others with the rest of its writes,
        # and answers once W-1 of them hold it too (rcds/put_waits.py). That halves the messages
        # of a put, the most of its cost on a busy machine, but takes two hops in a row, so an
        # idle cluster is written to directly: W replicas at once, the first of which pushes the
        # write to the rest (rcds/server.py `_sent_to`), and another when one of them cannot be
        # reached, refuses, or is slower than puts usually are. What a relaying replica could not
        # get confirmed in about the usual time of a put is written that way too. Ownership,
        # delegations and admissions (reserved names) go to every replica at once, and every
        # replica that stores them pushes them on: this client's later writes, which depend on
        # them, then find them wherever they go.
        candidates = self._candidates()
        reserved = any(authority.is_reserved(a.name) for a in records)
        started = time.monotonic()
        hedge_s = self._put_hedge_s()
        relay = self.relay if self.relay is not None else self._turn >= RELAY_FROM_TURN
        if relay and not reserved and 1 < w <= len(candidates):
            self.relayed += 1
            first = candidates[0]
            got = self._fanout([first], "put", {"relay": w - 1, "wait": int(hedge_s * 1000)}, frames, bool,
                               min(deadline, started + 2 * hedge_s + RELAY_SLACK_S))
            if judge(got):                # it stored them: the others it names hold them too
                for tag in got[first.address.endpoint][0].body.get("held_by") or ():
                    endpoint = self._by_tag.get(tag) if isinstance(tag, bytes) else None
                    if endpoint is not None and outcome[endpoint] == "no answer":
                        outcome[endpoint] = "stored"
                        acks += 1
            candidates = [c for c in candidates if outcome[c.address.endpoint] == "no answer"]
        if acks < w and not hopeless():
            first_n = len(candidates) if reserved else w - acks
            body = None if reserved else {"to": [c.key[:P.KEY_TAG_BYTES] for c in candidates[:first_n]]}
            got = self._fanout(candidates[:first_n], "put", body, frames,
                               lambda g: judge(g) >= w or hopeless(), deadline,
                               spares=candidates[first_n:], needed=lambda g: w - judge(g), hedge_s=hedge_s)
            judge(got)
        if acks >= w:
            self._put_s += PUT_EWMA * (time.monotonic() - started - self._put_s)
        backoff = 0.01
        while 0 < acks < w and refusals and time.monotonic() + backoff < deadline \
                and all(isinstance(e, NotAuthorized) for e in refusals):
            # Another replica stored what these refused on authority: they lack a record the others
            # hold (this client's own claim, an admission or delegation still being pushed), so ask
            # them again shortly rather than fail a write the cluster will accept.
            time.sleep(backoff)
            backoff = min(backoff * 2, 0.2)
            again = [c for c in self._candidates() if outcome[c.address.endpoint] not in ("stored", "no answer")]
            if not again:
                break
            for c in again:
                outcome[c.address.endpoint] = "no answer"
            refusals.clear()
            got = self._fanout(again, "put", None, frames, lambda g: judge(g) >= w or hopeless(), deadline)
            acks = judge(got)
        for a in records:
            self._cache.pop(a.urn, None)
        if acks >= w:
            return PutResult(acks, outcome, list(records))
        if refusals:
            raise refusals[0]
        raise QuorumError(f"only {acks} of the W={w} replicas acknowledged the write in time: "
                          + ", ".join(f"{k} {v}" for k, v in outcome.items()))

    def set(self, urn: str, name: str, value: Any, *, ttl: float | None = None, w: int | None = None) -> Assertion:
        a = self.sign(urn, name, value, ttl=ttl)
        self.put([a], w=w)
        return a

    def set_many(self, urn: str, values: dict[str, Any], *, ttl: float | None = None,
                 w: int | None = None) -> list[Assertion]:
        recs = [self.sign(urn, k, v, ttl=ttl) for k, v in values.items()]
        self.put(recs, w=w)
        return recs

    def delete(self, urn: str, name: str, *, w: int | None = None) -> Assertion:
        """Tombstone this writer's assertion of `name` about `urn`."""
        a = self.sign(urn, name, deleted=True)
        self.put([a], w=w)
        return a

    def claim(self, urn: str, *, w: int | None = None) -> Assertion:
        """Become the owner of a proc, group, code or file URN (first claim wins)."""
        return self.set(urn, authority.OWNER, self.identity.key_id, w=w)

    def delegate(self, urn: str, key_id: str, prefixes: Iterable[str] = ("",), *, w: int | None = None) -> Assertion:
        """Let `key_id` ("*" for every admitted key) write names starting with any of `prefixes`."""
        return self.set(urn, authority.DELEGATE_PREFIX + key_id, list(prefixes), w=w)

    # --- reading ------------------------------------------------------------------------------
    def _records_of(self, endpoint: str, frames: list[bytes]) -> list[bytes] | None:
        """The records a replica's reply carries; None (reported) if its records frame is malformed."""
        try:
            return P.unpack_records(frames, P.MAX_REPLY_RECORDS, "reply")
        except (CodecError, TooLarge) as exc:
            self._reject(endpoint, f"{exc}", None)
            return None

    def _believe(self, endpoint: str, records: list[bytes]) -> list[Assertion]:
        """Decode and verify records from one replica; drop and report what fails."""
        return [a for raw in records if (a := self._believe_one(endpoint, raw)) is not None]

    def _believe_one(self, endpoint: str, raw: bytes) -> Assertion | None:
        a = self._believed.get(raw)
        if a is not None:                 # these very bytes decoded and verified before
            self._believed.move_to_end(raw)
            return a
        try:
            a = decode_assertion(raw)
            a.verify()
        except (CodecError, TooLarge, SignatureError) as exc:
            self._reject(endpoint, f"{exc}", None)
            return None
        if len(raw) <= BELIEVED_MAX_BYTES:
            self._believed[raw] = a
            if len(self._believed) > BELIEVED_RECORDS:
                self._believed.popitem(last=False)
        return a

    def _reject(self, endpoint: str, reason: str, a: Assertion | None, *, suspect: bool = True) -> None:
        """Record a record we do not believe; `suspect`: it is evidence against the replica (a
        forgery, or a name its signer could not write), so its answer does not count."""
        self.rejected.append(Rejected(endpoint, reason, a))
        self.rejected_total += 1
        if suspect:
            self.suspect_total += 1
            self._suspected[endpoint] += 1
            log.warning("catalog replica %s returned a record that fails verification: %s", endpoint, reason)
        else:
            log.info("not believed from %s (its signer's authority lapsed or was superseded): %s", endpoint, reason)

    def _authorized(self, endpoint: str, records: list[Assertion], now: int, deadline: float) -> list[Assertion]:
        by_urn: dict[str, list[Assertion]] = {}
        for a in records:
            by_urn.setdefault(a.urn, []).append(a)
        out = []
        for all_records in by_urn.values():
            urn_records = self._admitted_claims(endpoint, all_records, deadline)
            good, bad = authority.visible(urn_records, self.admin_key, now)
            owned = not bad or authority.effective_owner(urn_records, self.admin_key, now) is not None
            for a, why in bad:
                self._not_believed(endpoint, a, why, all_records, owned)
            out.extend(good)
        return out

    def _not_believed(self, endpoint: str, a: Assertion, why: str, history: list[Assertion], owned: bool) -> None:
        """Report a record a reader does not believe. An owner claim that ran out (a lease) or
        was deleted (`history` holds a claim, yet the URN is not `owned`) leaves the URN's other
        records without authority, and so does a claim race lost, a delegation revoked or a
        claimant no longer admitted (authority.superseded, judged on all the answer held):
        genuine records, not held against the replica. Anything else is: a replica that hides
        the claim altogether looks suspect, and the client asks another."""
        lapsed = not owned and any(h.name == authority.OWNER for h in history)
        self._reject(endpoint, f"{a.describe()}: {why}", a, suspect=not (lapsed or authority.superseded(a, history)))

    def _admitted_claims(self, endpoint: str, urn_records: list[Assertion], deadline: float) -> list[Assertion]:
        """`urn_records` without an ownership claim that would win but whose key `endpoint`
        cannot show the cluster admitted, and whether the answer still counts. Replicas refuse
        claims by keys not admitted, so a tampered replica could otherwise add a claim older
        than the owner's, signed by a key it made up, and have that key's records believed.
        A key admitted once and no longer (a host re-keyed) is genuine history: its claim is
        dropped without holding it against the replica. One that cannot be checked in time
        (the replica does not show its proof) makes the answer not count: another is asked."""
        proved, admin, at = self._admission, self.admin_key, time.monotonic()
        for a in urn_records:          # the read path: every claimant the admin or proved lately
            if a.name == authority.OWNER and a.signer != admin and proved.get(a.signer, 0.0) <= at:
                break
        else:
            return urn_records
        now = now_ms()
        kept = urn_records
        for _ in range(4):                         # a forged winner dropped, the next claim may win
            owner = authority.effective_owner(kept, self.admin_key, now)
            if owner is None or owner.signer == self.admin_key:
                return kept
            proven = self._claimant_admitted(owner.signer, endpoint, deadline)
            if proven:
                return kept
            if proven is None:
                self._reject(endpoint, f"{owner.describe()}: the replica did not show in time that its "
                                       "claimant is admitted", owner)
                return [a for a in kept if a is not owner]
            self._reject(endpoint, f"{owner.describe()}: claimed by a key the cluster has not admitted", owner,
                         suspect=False)
            kept = [a for a in kept if a is not owner]
        self._reject(endpoint, f"{urn_records[0].urn}: too many claims by keys the cluster has not admitted",
                     None)
        return [a for a in kept if a.name != authority.OWNER or a.signer == self.admin_key]

    def _claimant_admitted(self, key: bytes, endpoint: str, deadline: float) -> bool | None:
        """Whether `key` is admitted: proved (True) by `endpoint`, the replica whose answer holds
        the claim, or failing that by another (a proof is signed by the admin, and a host key, so
        one from any replica holds for all: remembered ADMITTED_FOR_S); False if the replicas
        that answered could not prove it; None if none answered in time. Each replica gets half
        of what time is left, so a dead one cannot use it all. A replica's "no" is remembered
        for NOT_ADMITTED_FOR_S, so an answer full of one key's claims asks once."""
        now = time.monotonic()
        if self._admission.get(key, 0.0) > now:
            return True
        first = self.conns.get(endpoint)
        answered = False
        for conn in [*([first] if first is not None else []), *(c for c in self._candidates() if c is not first)]:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            no_until = self._not_admitted.get((conn.address.endpoint, key), 0.0)
            if no_until > time.monotonic():
                answered = True
                continue
            proven, by_majority = self._prove_admitted(conn, key, time.monotonic() + max(0.1, left / 2))
            if proven:
                self._remember_admitted(key, ADMITTED_FOR_S if by_majority else NOT_ADMITTED_FOR_S)
                return True
            if proven is False:
                answered = True
                self._not_admitted[(conn.address.endpoint, key)] = time.monotonic() + NOT_ADMITTED_FOR_S
                if len(self._not_admitted) > ADMISSION_KEYS:
                    self._not_admitted.pop(next(iter(self._not_admitted)))
        return False if answered else None

    def _remember_admitted(self, key: bytes, for_s: float) -> None:
        self._admission[key] = time.monotonic() + for_s
        if len(self._admission) > ADMISSION_KEYS:
            self._admission.pop(next(iter(self._admission)))

    def _fetch(self, conn: _Conn, kind: str, body: dict[str, Any], deadline: float
               ) -> tuple[Envelope, list[bytes]] | None:
        """One request to one replica, its answer or None (no answer in time, or an error)."""
        if deadline <= time.monotonic():
            return None                        # not sent: a request past its deadline marks the replica down
        got = self._fanout([conn], kind, body, (), bool, deadline).get(conn.address.endpoint)
        if got is None or got[0].kind == "error":
            return None
        return got

    def _proof_records(self, first: _Conn, urn: str, deadline: float
                       ) -> tuple[list[Assertion], bool] | None:
        """The records about `urn` from `first` and enough other replicas for a majority, newest
        per name and writer, signatures checked and nothing else (the caller judges admin- and
        host-signed proofs itself, so this never recurses), and whether a majority gave them;
        None if no replica did in time.

        A proof is read as a quorum read is: one replica alone could show an older, genuine
        proof (a key's admission, a delegation) while withholding the reassignment or revocation
        that superseded it, and a majority holds every admin write a majority acknowledged. An
        answer that is malformed or holds a forgery does not count, and the next replica is
        asked. When no majority answers in time (replicas down), what did answer is used, and
        the caller believes it only briefly: availability first, as everywhere in the catalog."""
        need = min(self.n, max(self.r, self.n // 2 + 1))
        conns = [first, *(c for c in self._candidates() if c is not first)]
        merged: dict[tuple[str, str, bytes], Assertion] = {}

        def counts(endpoint: str, env: Envelope, frames: list[bytes]) -> bool:
            nonlocal merged
            records = None if env.kind == "error" else self._records_of(endpoint, frames)
            if records is None:
                return False
            before = self._suspected[endpoint]
            believed = self._believe(endpoint, records)
            if self._suspected[endpoint] != before:         # forgeries: this answer does not count
                return False
            merged = merge(merged.values(), believed)
            return True

        answered = sum(self._gather(conns, "get", {"urn": urn}, need, deadline, counts).values())
        return (list(merged.values()), answered >= need) if answered else None

    def _prove_admitted(self, conn: _Conn, key: bytes, deadline: float, *, hosts_only: bool = False
                        ) -> tuple[bool | None, bool]:
        """Ask `conn` which URNs admit `key` and check them here, on a majority's newest
        records (`_proof_records`): an admin-signed `_owner` of a host or user URN naming it, or
        (unless `hosts_only`) a non-empty `_delegate.<key>` on a proc URN by the admin or by that
        URN's claimant, itself a host key. (proved: True, False or None when nothing answered
        in time; whether every record it rests on came from a majority)."""
        if key == self.admin_key:
            return True, True
        got = self._fetch(conn, "admitted", {"key": key.hex()}, deadline)
        if got is None:
            return None, False
        reasons = got[0].body.get("reasons")
        now = now_ms()
        unknown = False
        for urn in (reasons if isinstance(reasons, list) else [])[:8]:
            if not isinstance(urn, str) or urn.count(":") < 3:
                continue
            kind = urn.split(":")[2]
            if kind not in (("host",) if hosts_only else (*authority.ADMIN_ASSIGNED_KINDS, "proc")):
                continue                    # only a host key vouches for others, as replicas judge it
            read = self._proof_records(conn, urn, deadline)
            if read is None:
                unknown = True
                continue
            records, by_majority = read
            live = [a for a in records if a.urn == urn and a.is_live(now)]
            if kind in authority.ADMIN_ASSIGNED_KINDS:
                assigned = max((a for a in live if a.name == authority.OWNER and a.signer == self.admin_key),
                               key=lambda a: a.rank, default=None)
                if assigned is not None and assigned.value == key.hex():
                    return True, by_majority
                continue
            name = authority.DELEGATE_PREFIX + key.hex()
            for grant in (a for a in live if a.name == name and isinstance(a.value, list) and a.value):
                if grant.signer == self.admin_key:
                    return True, by_majority
                claimed = any(a.name == authority.OWNER and a.signer == grant.signer and a.value == grant.signer.hex()
                              for a in live)
                if not claimed:
                    continue
                if self._host_keys.get(grant.signer, 0.0) > time.monotonic():
                    return True, by_majority
                host_proved, host_by_majority = self._prove_admitted(conn, grant.signer, deadline, hosts_only=True)
                if host_proved:
                    if host_by_majority:
                        self._host_keys[grant.signer] = time.monotonic() + ADMITTED_FOR_S
                    return True, by_majority and host_by_majority
        return (None if unknown else False), False

    def _read_hedge_s(self) -> float:
        return min(READ_HEDGE_MAX_S, max(HEDGE_AFTER_S, READ_HEDGE_FACTOR * self._read_s))

    def _gather(self, conns: Sequence[_Conn], kind: str, body: dict[str, Any], need: int, deadline: float,
                counts: Callable[[str, Envelope, list[bytes]], bool], *, frames: Sequence[bytes] = (),
                never_sent: list[str] | None = None) -> dict[str, bool]:
        """Ask the first `need` of `conns` and gather answers until `need` of them count
        (`counts` judges each answer once) or the deadline passes; return whether each replica
        that answered counted. A SnipeError that `counts` raises ends the gathering and is raised.

        Hedged as a put is: the next of `conns` is asked too when one cannot be sent to or gave
        an answer that does not count, or when the read hedge delay passes with too few counted.
        Every request sent stays in flight until the end, and the first `need` good answers from
        any of them are taken: on a loaded machine every replica is slower than the hedge delay,
        and a read that dropped the answers it had asked for first once failed in half a second
        with most of its time left (only the hedge's replica still counted)."""
        judged: dict[str, bool] = {}
        failed: list[SnipeError] = []
        counted = 0
        if deadline <= time.monotonic():
            return judged                      # not sent: a request past its deadline marks the replica down

        def good(got: dict[str, tuple[Envelope, list[bytes]]]) -> int:
            nonlocal counted
            if len(got) > len(judged) and not failed:     # (asked several times a turn: mostly nothing new)
                for endpoint, (env, frames) in got.items():
                    if endpoint in judged:
                        continue
                    try:
                        judged[endpoint] = ok = counts(endpoint, env, frames)
                    except SnipeError as exc:
                        judged[endpoint] = ok = False
                        failed.append(exc)
                    counted += ok
                    if failed:
                        break
            return counted

        got = self._fanout(conns[:need], kind, body, frames, lambda g: good(g) >= need or bool(failed), deadline,
                           spares=conns[need:], needed=lambda g: need - good(g), hedge_s=self._read_hedge_s(),
                           never_sent=never_sent, overtaken_down=True)
        good(got)
        if failed:
            raise failed[0]
        return judged

    def _quorum_read(self, kind: str, body: dict[str, Any], r: int | None, timeout: float | None
                     ) -> dict[tuple[str, str, bytes], Assertion]:
        r = r or self.r
        started = time.monotonic()
        deadline = started + (timeout or self.timeout)
        candidates = self._candidates()
        merged: dict[tuple[str, str, bytes], Assertion] = {}
        never_sent: list[str] = []

        def counts(endpoint: str, env: Envelope, frames: list[bytes]) -> bool:
            nonlocal merged
            if env.kind == "error":
                err = error_from_code(str(env.body.get("code")), str(env.body.get("message")))
                if not isinstance(err, ResyncNeeded):
                    raise err
                return False
            before = self._suspected[endpoint]      # (proof reads may suspect other replicas meanwhile)
            records = self._records_of(endpoint, frames)
            believed = self._authorized(endpoint, self._believe(endpoint, records or []), now_ms(), deadline)
            merged = merge(merged.values(), believed)
            return self._suspected[endpoint] == before      # a replica that returned forgeries does not count

        spares_before = self.spares_asked
        answered = self._gather(candidates, kind, body, r, deadline, counts, never_sent=never_sent)
        good_answers = sum(answered.values())
        if not answered:
            asked = candidates[:r + self.spares_asked - spares_before]
            raise QuorumError(self._none_reached(kind, asked, never_sent, timeout or self.timeout))
        if good_answers < r:
            raise QuorumError(f"only {good_answers} of R={r} replicas gave a verifiable answer to {kind} in time")
        self._read_s += PUT_EWMA * (time.monotonic() - started - self._read_s)
        return merged

    def _none_reached(self, kind: str, asked: Sequence[_Conn], never_sent: Sequence[str], timeout: float) -> str:
        """Why no replica answered a read at all, naming each one asked and what it did."""
        if not asked:
            return f"no catalog replica could be reached for {kind}: none is configured or due to be retried"
        unreached = [c.address.endpoint for c in asked if c.address.endpoint in never_sent]
        silent = [c.address.endpoint for c in asked if c.address.endpoint not in never_sent]
        why = []
        if unreached:
            why.append(f"{', '.join(unreached)}: no connection came up "
                       "(not running, not reachable, or not a SNIPE replica)")
        if silent:
            why.append(f"{', '.join(silent)}: took the request but did not answer within {timeout:g} s")
        return (f"no catalog replica could be reached for {kind}: " + "; ".join(why)
                + ". Check that the replicas run and that SNIPE_CATALOG (or the config's catalog list) names them")

    def get(self, urn: str, name: str | None = None, *, r: int | None = None, timeout: float | None = None) -> Entry:
        """Every verified assertion about `urn` (merged from R replicas); with `name`, those of
        that name and the URN's reserved ones (ownership and delegation) that vouch for them."""
        urn = validate_urn(urn)
        body: dict[str, Any] = {"urn": urn}
        if name is not None:
            body["name"] = name
        merged = self._quorum_read("get", body, r, timeout)
        entry = Entry(urn, sorted(merged.values(), key=lambda a: (a.name, a.signer)))
        if name is None:
            self._cache[urn] = (time.monotonic(), entry, entry.next_expiry(now_ms()))
        return entry

    def cached(self, urn: str, max_age: float = 5.0) -> Entry:
        """`get`, answered from the cache while the entry is fresh: younger than `max_age`, no
        lease in it that was live when it was read has run out since (it may have been renewed),
        not invalidated by a write, a watch event or `invalidate`."""
        hit = self._cache.get(urn)
        if hit is not None:
            at, entry, expiry = hit
            if time.monotonic() - at < max_age and (expiry is None or expiry > now_ms()):
                return entry
        return self.get(urn)

    def invalidate(self, urn: str) -> None:
        """Forget a cached entry (call it when what it said turned out wrong, e.g. a dead route)."""
        self._cache.pop(urn, None)

    def query(self, prefix: str, where: Sequence[Predicate] = (), *, limit: int = P.MAX_QUERY_URNS,
              r: int | None = None, timeout: float | None = None) -> dict[str, Entry]:
        """Every URN under `prefix` whose live assertions satisfy all predicates, merged from R
        replicas (by default enough that it sees this client's acknowledged writes)."""
        body = {"prefix": prefix, "where": [list(p) for p in where], "limit": limit}
        merged = self._quorum_read("query", body, r, timeout)
        by_urn: dict[str, list[Assertion]] = {}
        for a in merged.values():
            by_urn.setdefault(a.urn, []).append(a)
        now = now_ms()
        out = {}
        for urn in sorted(by_urn):
            e = Entry(urn, sorted(by_urn[urn], key=lambda a: (a.name, a.signer)))
            if matches(e.live(now), where):
                out[urn] = e
        return out

    def status(self, endpoint: str | None = None, timeout: float | None = None) -> dict[str, Any]:
        if endpoint is None:
            _, env, _ = self.request("status", timeout=timeout)
            return env.body
        got = self._fanout([self.conns[endpoint]], "status", None, (), bool,
                           time.monotonic() + (timeout or self.timeout))
        if endpoint not in got:
            raise QuorumError(f"replica {endpoint} did not answer status in time")
        return got[endpoint][0].raise_if_error().body

    def is_admitted(self, key: bytes, timeout: float | None = None) -> bool:
        """Whether `key` is admitted, checked the way readers check everything: a replica names
        the URNs that admit it, and this client verifies the assertions there itself. Replicas
        are asked in turn until one proves it; Unreachable if none answered."""
        if key == self.admin_key:
            return True
        candidates = self._candidates()
        if not candidates:
            raise Unreachable("no catalog replica is configured")
        proven = self._claimant_admitted(key, candidates[0].address.endpoint,
                                         time.monotonic() + (timeout or self.timeout))
        if proven is None:
            raise Unreachable(f"no catalog replica answered whether key {key.hex()[:16]}… is admitted in time")
        return proven

    def key_of_curve(self, curve: bytes) -> bytes | None:
        """The admitted Ed25519 key whose CurveZMQ key is `curve` (raw 32 bytes), if any.
        Servers use it to name a client from its handshake; the answer is checked (the curve
        key must derive from the key returned), so a replica cannot substitute another key."""
        import nacl.bindings
        _, env, _ = self.request("admitted", {"curve": curve.hex()})
        key = env.body.get("key")
        if not isinstance(key, str):
            return None
        ed = public_key_from_id(key)
        return ed if nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(ed) == curve else None

    def watch(self, prefix: str, *, from_rev: int | None = None) -> Watch:
        w = Watch(self, prefix)
        w.start(from_rev)
        return w


class Watch:
    """A subscription to every change under a prefix, across replica failures.

    Order and completeness: events from one replica arrive in revision order; each carries the
    revision it follows, so a gap is noticed and the watch re-subscribes from the last revision
    it saw. If the replica no longer has that revision, or dies (no heartbeat for 3 s), the
    watch moves to another replica and compares that replica's current state with everything it
    has delivered, delivering each difference as an event: no change is skipped silently. When
    even that is impossible the caller gets a `resync` event holding the whole current state.
    """

    def __init__(self, client: CatalogClient, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self.id = uuid.uuid4().hex
        self.conn: _Conn | None = None
        self.last_rev = 0
        self.last_heard = time.monotonic()
        self.delivered: dict[tuple[str, str, bytes], tuple[int, bytes]] = {}
        self.queue: deque[WatchEvent] = deque()
        # Events as they came (signatures checked), judged against ownership in `next`: judging
        # may need a read, which must not run inside the pump that received them.
        self.unjudged: deque[tuple[str, Assertion, int, str]] = deque()
        self.expiring: list[tuple[Assertion, int, str]] = []     # expiries this clock has not reached
        self._expired: OrderedDict[tuple[tuple[str, str, bytes], tuple[int, bytes]], None] = OrderedDict()
        self._unsettled_since: dict[int, float] = {}     # rev -> when judging it first found no answer
        self._catch_up_wanted = False                   # an event was given up on: compare with the state
        self.reserved: OrderedDict[str, dict[tuple[str, str, bytes], Assertion]] = OrderedDict()
        self.switches = 0
        self._needs_restart = False

    def start(self, from_rev: int | None = None, exclude: _Conn | None = None) -> None:
        errors = []
        for conn in self.client._candidates():
            if conn is exclude and len(self.client.conns) > 1:
                continue
            self.conn = conn         # events may arrive before the reply; route them here
            self.client._watches[self.id] = self
            got = self.client._fanout([conn], "watch", {"watch": self.id, "prefix": self.prefix, "from_rev": from_rev},
                                      (), bool, time.monotonic() + self.client.timeout)
            if not got:
                errors.append(f"{conn.address.endpoint}: no answer")
                continue
            env, _ = got[conn.address.endpoint]
            if env.kind == "error":
                errors.append(f"{conn.address.endpoint}: {env.body.get('message')}")
                if env.body.get("code") == ResyncNeeded.code and from_rev is not None:
                    self.start(None)
                    self._catch_up_here()
                    return None
                continue
            if from_rev is None:
                self.last_rev = int(env.body.get("rev", 0))
            self.last_heard = time.monotonic()
            self._needs_restart = False
            return None
        self.conn = None
        raise QuorumError("no replica accepted the watch: " + "; ".join(errors))

    def _fresh(self, a: Assertion) -> bool:
        seen = self.delivered.get(a.key)
        return seen is None or seen < a.rank

    def _deliver(self, kind: str, a: Assertion, rev: int) -> None:
        self.delivered[a.key] = a.rank
        self.client._cache.pop(a.urn, None)
        replica = self.conn.address.endpoint if self.conn else ""
        self.queue.append(WatchEvent(kind, a, rev, replica))

    def _on_event(self, env: Envelope, frames: list[bytes]) -> None:
        self.last_heard = time.monotonic()
        endpoint = self.conn.address.endpoint if self.conn else "?"
        if env.kind == "heartbeat":
            if env.body.get("prev") not in (None, self.last_rev) and env.body.get("prev", 0) > self.last_rev:
                self._needs_restart = True
            return
        if env.kind == "lagged":
            self._needs_restart = True
            return
        if env.kind != "event":
            return
        revs, kinds = env.body.get("revs"), env.body.get("kinds")
        if env.body.get("prev") != self.last_rev and env.body.get("prev", 0) > self.last_rev:
            self._needs_restart = True     # a gap: re-subscribe from what we have
            return
        records = self.client._records_of(endpoint, frames)
        if (records is None or not isinstance(revs, list) or not isinstance(kinds, list)
                or len(revs) != len(records)):
            self._needs_restart = True
            return
        for rev, kind, raw in zip(revs, kinds, records, strict=True):
            if rev <= self.last_rev:
                continue
            self.last_rev = rev
            a = self.client._believe_one(endpoint, raw)
            if a is not None:
                self.unjudged.append((kind, a, rev, endpoint))

    def _judge(self, deadline: float) -> None:
        """Deliver what came, in order, by the rules a read applies (readers trust keys, not
        servers): a record its signer could not write is dropped and reported, not delivered;
        an expiry only once the record's own signed lease has run out by this clock and a read
        finds no newer version of it. Without this a tampered replica could feed a watcher any
        admitted key's record about any URN, or tell it a lease ran out that had not. Ownership
        and delegation changes are not taken from the event stream: the URN's are read again (a
        read checks that each claimant is admitted). Reads stop at `deadline`; an event no read
        could settle for WATCH_SETTLE_S is dropped (logged), so one URN cannot stall the rest."""
        now = now_ms()
        if self._catch_up_wanted:
            try:
                self._catch_up_here()
                self._catch_up_wanted = False
            except SnipeError as exc:
                log.info("watch %s: cannot compare with the state yet: %s", self.prefix, exc)
        self._release_expiries(now, deadline)
        while self.unjudged:
            kind, a, rev, endpoint = self.unjudged[0]
            verdict = self._verdict(kind, a, endpoint, now, deadline)
            if verdict is None:
                first = self._unsettled_since.setdefault(rev, time.monotonic())
                if time.monotonic() - first < WATCH_SETTLE_S:
                    return                          # asked again on the next call
                log.warning("watch %s: could not check %s for %.0f s; comparing with the state instead",
                            self.prefix, a.describe(), WATCH_SETTLE_S)
                self._catch_up_wanted = True             # what it said is delivered from the state, once read
                verdict = False
            self.unjudged.popleft()
            self._unsettled_since.pop(rev, None)
            if verdict:
                self._take(kind, a, rev, endpoint, now, deadline)

    def _verdict(self, kind: str, a: Assertion, endpoint: str, now: int, deadline: float) -> bool | None:
        """Whether a read believes `a` (reporting what it does not); None if no read answered."""
        if authority.is_reserved(a.name):
            self.reserved.pop(a.urn, None)           # read them again, judged as a read judges
            if a.name == authority.OWNER and a.signer != self.client.admin_key \
                    and self.client._claimant_admitted(a.signer, endpoint, deadline) is False:
                log.info("watch %s: %s: claimed by a key the cluster has not admitted", self.prefix, a.describe())
                return False                         # no read will ever show it: do not wait for one
        held = self._authority_of(a.urn, deadline)
        if held is None:
            return None
        records = [*(h for h in held.values() if h.key != a.key), a]
        good, bad = authority.visible(records, self.client.admin_key, now)
        if any(g is a for g in good):
            if not authority.is_reserved(a.name):
                return True
            known = held.get(a.key)
            if known is not None and known.rank >= a.rank:
                return True
            self.reserved.pop(a.urn, None)           # believable, but the read lags the event: asked again
            return None if kind != "expire" else False
        why = next((w for b, w in bad if b is a), "not believed")
        owned = authority.effective_owner(records, self.client.admin_key, now) is not None
        self.client._not_believed(endpoint, a, why, records, owned)
        return False

    def _take(self, kind: str, a: Assertion, rev: int, endpoint: str, now: int, deadline: float) -> None:
        """A believed event: a put or delete is delivered if it is news; an expiry in its place
        if its lease has run out and it stands, else it waits in `expiring`."""
        if kind != "expire":
            if self._fresh(a):
                self._deliver("delete" if a.deleted else "put", a, rev)
        elif a.expires_at_ms is None:
            self.client._reject(endpoint, f"{a.describe()}: reported expired but it has no lease", a)
        elif self._current(a) and (a.key, a.rank) not in self._expired:
            stands = self._expiry_stands(a, deadline) if a.expires_at_ms <= now else None
            if stands:
                self._expire(a, rev, endpoint)
            elif stands is None and not any(e[0].key == a.key and e[0].rank == a.rank for e in self.expiring):
                if len(self.expiring) >= WATCH_EXPIRING:
                    self.expiring.pop(0)
                self.expiring.append((a, rev, endpoint))

    def _release_expiries(self, now: int, deadline: float) -> None:
        """Deliver the held expiries that are due and stand; drop those that do not."""
        for e in [e for e in self.expiring if e[0].expires_at_ms is not None and e[0].expires_at_ms <= now]:
            a, rev, endpoint = e
            stands = self._expiry_stands(a, deadline) if self._current(a) else False
            if stands is None:
                continue                                # not settled: asked again on the next call
            self.expiring.remove(e)
            if stands:
                self._expire(a, rev, endpoint)

    def _expiry_stands(self, a: Assertion, deadline: float) -> bool | None:
        """Whether `a` is still the newest version of its record by a read (a renewal makes its
        expiry say nothing, and so does a tampered replica's replay of an old lease, or one
        whose renewals it withholds from the watch); None if no read answered."""
        left = min(deadline - time.monotonic(), self.client.timeout)
        if left <= 0:
            return None
        try:
            newest = self.client.get(a.urn, a.name, timeout=left)
        except SnipeError:
            return None
        return not any(n.key == a.key and n.rank > a.rank for n in newest.records)

    def _expire(self, a: Assertion, rev: int, endpoint: str) -> None:
        if (a.key, a.rank) in self._expired:
            return
        self._expired[(a.key, a.rank)] = None          # once, though a failover may report it again
        if len(self._expired) > WATCH_EXPIRING:
            self._expired.popitem(last=False)
        self.queue.append(WatchEvent("expire", a, rev, endpoint))

    def _current(self, a: Assertion) -> bool:
        """Whether no newer version of `a` (same URN, name and writer) was delivered."""
        seen = self.delivered.get(a.key)
        return seen is None or seen <= a.rank

    def _authority_of(self, urn: str, deadline: float) -> dict[tuple[str, str, bytes], Assertion] | None:
        """The ownership and delegation records of `urn`, as a read believes them (read once,
        and again after each event about them); None if no replica answered by `deadline`."""
        held = self.reserved.get(urn)
        if held is not None:
            self.reserved.move_to_end(urn)
            return held
        left = min(deadline - time.monotonic(), self.client.timeout)
        if left <= 0:
            return None
        try:
            entry = self.client.get(urn, authority.OWNER, timeout=left)   # brings the URN's reserved names
        except SnipeError as exc:
            log.info("watch %s: cannot read the ownership of %s yet: %s", self.prefix, urn, exc)
            return None
        held = {a.key: a for a in entry.records if authority.is_reserved(a.name)}
        self.reserved[urn] = held
        if len(self.reserved) > WATCH_AUTHORITY_URNS:
            self.reserved.popitem(last=False)
        return held

    def _health(self) -> None:
        silent = time.monotonic() - self.last_heard > 3 * P.HEARTBEAT_S
        if silent and self.conn is not None:
            dead = self.conn
            self.client.order.mark_down(dead.address, time.monotonic())
            self.client._watches.pop(self.id, None)
            self._switch(exclude=dead)
        elif self._needs_restart and self.conn is not None:
            self.client._send(self.conn, "unwatch", {"watch": self.id})
            try:
                self.start(self.last_rev)
            except QuorumError:
                self._switch(exclude=self.conn)

    def _switch(self, exclude: _Conn | None) -> None:
        """Move to another replica: its revisions mean nothing to us, so compare states."""
        self.start(None, exclude=exclude)
        self._catch_up_here()

    def _catch_up_here(self) -> None:
        self.reserved.clear()          # what changed while we were away is read again
        state = self.client.query(self.prefix, r=1, timeout=self.client.timeout)
        for entry in state.values():
            for a in entry.records:
                if self._fresh(a):
                    self._deliver("delete" if a.deleted else "put", a, self.last_rev)
        self.switches += 1

    def next(self, timeout: float | None = None) -> WatchEvent | None:
        """The next change, or None if none came within `timeout` seconds."""
        deadline = time.monotonic() + (timeout if timeout is not None else 1e9)
        if self.queue:                     # judged already, and ahead of anything not yet judged
            return self.queue.popleft()
        # judging may read (a URN's ownership): at least a short one even for next(0)
        self._judge(max(deadline, time.monotonic() + WATCH_MIN_READ_S))
        while not self.queue:
            self._health()
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.client._pump(min(left, 0.1))
            self._judge(max(deadline, time.monotonic() + WATCH_MIN_READ_S))
        return self.queue.popleft()

    def __iter__(self) -> Iterator[WatchEvent]:
        while True:
            ev = self.next()
            if ev is not None:
                yield ev

    def close(self) -> None:
        if self.conn is not None:
            self.client._send(self.conn, "unwatch", {"watch": self.id})
        self.client._watches.pop(self.id, None)
