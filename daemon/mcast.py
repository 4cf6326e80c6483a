"""The daemon as multicast router (SNIPE 4.4): elections, router leases, and relaying.

A daemon stands as a router for a group when a process on its host joins and the election
rule says so (snipe/multicast/core.should_route); it then holds a `router.<host URN>` lease on
the group and renews it while a live member is here or registered with it (see Bounds). The lease's
value carries the router's counters for the group (relayed, delivered, duplicates, replayed,
history), which `snipe-console show GROUP` lists. Every upkeep round it re-runs the election for
the groups it serves, so a router that died is replaced. Relaying runs in the daemon's messaging endpoint
thread: each message is relayed once (Relay) to the routers that have not had it yet and to the
members that registered with it. Who those are is read from the group's catalog entry at most every
VIEW_REFRESH_S per group (`_View`), not per message. A member that stops being ours (it registered
with others) is still delivered to for HANDOVER_S, so the hand-over overlaps (the member
drops the copies) rather than leaving a gap.

Messages for members go out once per turn of the endpoint's loop: what was relayed in the turn
is one `Batch`, packed once, sent to each member (one channel message per member per turn).

Each relayed message is also kept in the group's `History` (bounded). A member's `Resume` (sent
when it registers with this router) adds it to the members relayed to at once, for
RESUMED_HOLD_S, by which time the catalog lists it, and replays what it missed from the history,
then answers (MCAST_REPLAYED), even with nothing to replay: the member starts on new origins only
once its routers have answered (core.ReplayWait). The answer waits (core.PendingAnswers, checked
at the end of each turn, after that turn's relays went out) until this router has no hole below
the highest seq it held when the Resume came, or ANSWER_HOLD_S at most; what fills the holes
reaches the member first (relayed, or replayed to a member it does not deliver to).

Bounds (what any admitted key could otherwise make this daemon hold and renew): a key has
members in at most MAX_GROUPS_PER_KEY groups here, and the host in at most MAX_GROUPS; a join past
either is refused (QuotaExceeded) before any catalog work. Both count live members only: a member
is forgotten on an explicit leave, and by `tick` once its `member.` lease (which its own process
renews) is no longer live, JOIN_GRACE_LEASES host leases after its join at the earliest (it writes the lease after
the join is answered). The lease, not the daemon's task events, decides: a task's events do not
say whether the process that joined is gone (forgetting on them dropped live members). The one
exception is a task that migrated away: its original's end here (`forget_moved`) drops it at once,
as its clone joined through its new host's daemon (snipe/migration/groups.join_here) and renews
the lease from there. (The lease's host cannot decide it: the copies of a task replicated in mode
"all" renew one lease from several hosts.)
A group with no local member left is kept only while a live member (from anywhere, a process
without a daemon of its own included) lists this host among its routers; otherwise this router
steps down (its lease withdrawn, no longer renewed), as a surplus router does: at once on an
explicit leave, within an upkeep round otherwise.
The relay state of a group (dedup, history, counters) outlives its routing only until the group
has been idle here FORGET_IDLE_S, and data or Resumes naming groups this host neither routes
nor has members of get state for MAX_UNROUTED_GROUPS groups at most (the least recently active
forgotten to make room): any process may name any group.

Restart: which local members joined each group through this daemon (with their keys) and
whether it routes the group are kept in the daemon's durable state (`GroupStore`, its LMDB), the
join's before it is answered, so a daemon killed and started again (a crash, an upgrade) knows
them at once and its first upkeep round decides each group as it would have: it stands for
election again where a local member is live or a live member is registered with it (its lease
written again, under the same name), and withdraws its old lease otherwise. Its members do
nothing: to them it is a router that lost its relay state, as when a router dies and another
takes over (every message went to another router too; what its history lacks another's
holds). The catalog stays the truth about who is live: a restored member whose lease is not
live is forgotten after the join grace, counted from the restart. Neither of the other places
the state could come from would do: the catalog has no index from a host to its members'
groups (a scan of every group in the cluster), nor the keys that joined; and members cannot
tell that their daemon restarted within its lease (nothing they do fails), nor can every
process that joined through it be reached to re-join.

Upkeep: every min(1 s, lease / 4) the router leases of all groups this daemon routes are renewed
in one batched catalog write (`_renew`), whatever the number of groups. The per-group part of `tick`
(a catalog read: forget dead members, re-run the election) runs in slices of at most
UPKEEP_SLICE_S, calling `keep_lease` (the daemon's host lease) after each group, so a slow catalog
or many groups can delay elections but never let the host's lease or a router lease lapse.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from snipe.catalog.client import CatalogClient, now_ms
from snipe.catalog.entry import Entry
from snipe.catalog.protocol import MAX_BATCH_RECORDS
from snipe.errors import QuotaExceeded, ServerError, SnipeError
from snipe.messaging.channel import Deliver
from snipe.messaging.endpoint import Endpoint
from snipe.messaging.routes import shared_networks
from snipe.multicast.core import (
    DEFAULT_WANTED,
    MCAST_DATA,
    MCAST_DELIVER,
    MCAST_REPLAYED,
    MCAST_RESUME,
    Batch,
    History,
    PendingAnswers,
    Relay,
    batches,
    origin_urn,
    pack,
    pack_replayed,
    should_route,
    unpack,
    unpack_resume,
)
from snipe.multicast.groups import ROUTER, ensure_group, live_members, live_routers
from snipe.urn import is_host, validate_urn

log = logging.getLogger("snipe.daemon.mcast")

# How long a router relays with the same member and router lists before reading the group's
# entry again (from one replica; sooner when a live lease in it runs out). A member that left is
# dropped by its own Membership anyway, and a hop to a router that died just fails (the others
# cover it).
VIEW_REFRESH_S = 0.5
RESUMED_HOLD_S = 10.0          # a resuming member is relayed to before the catalog lists it, this long
HANDOVER_S = 3.0               # a member whose first live router is another is still relayed to, this long
FORGED_SAY_EVERY_S = 60.0      # a log line about forged origins: at most this often
HISTORY_MESSAGES = 100_000     # per group: what a router keeps for members that resume
HISTORY_BYTES = 64 << 20
HISTORY_ITEM_OVERHEAD = 256       # what keeping a message costs beyond its body (tuples, ints, the deque)
HISTORY_TOTAL_BYTES = 512 << 20    # all groups' histories together: each may keep its share of this at most
HISTORY_AGE_S = 120.0
# A hop to a live member or router that is merely slow must not be given up: a given-up delivery is
# a message lost for that member. Relays have no back-pressure on senders yet (submit never blocks),
# so under a flat-out stream a member's queue at its router can be tens of seconds long.
HOP_DEADLINE_S = 600.0
# Relay state (dedup, history, counters, views) of groups this host neither routes nor has a
# local member in: forgotten once such a group has had no data or Resume here this long (a
# router that stepped down may still get a late hop; by then its history has aged out for any
# member that could still ask), and held for at most MAX_UNROUTED_GROUPS groups at once, the
# least recently active forgotten first: any process may name groups of its choosing.
FORGET_IDLE_S = HISTORY_AGE_S
FORGET_SWEEP_S = 5.0           # how often the endpoint thread looks for such groups
MAX_UNROUTED_GROUPS = 256
MAX_GROUPS_PER_KEY = 64        # groups one key's processes may have joined through this daemon at once
MAX_GROUPS = 512               # groups this host may route or have local members in at once
UPKEEP_SLICE_S = 0.05          # `tick`: catalog upkeep of groups at most this long per daemon turn
JOIN_GRACE_LEASES = 2.0        # a local member not (yet) listed live is kept this many host leases after its join


@dataclass(frozen=True, slots=True)
class _View:
    """What relaying needs from the group's entry, computed once per refresh."""

    at: float                      # time.monotonic() when computed
    expires_ms: int | None         # the earliest lease expiry in the entry it came from
    members: tuple[str, ...]       # members this router delivers to
    routers: tuple[str, ...]       # live routers, this one included, sorted


def _saved_group(group: str, record: Any) -> tuple[dict[str, str], bool] | None:
    """A group's record as the store kept it: (member -> key, routing), or None when it is not
    one (a damaged or foreign file is no reason not to start)."""
    try:
        validate_urn(group)
    except SnipeError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("routing"), bool):
        return None
    members = record.get("members")
    if not isinstance(members, dict) or not all(isinstance(u, str) and isinstance(k, str)
                                                for u, k in members.items()):
        return None
    try:
        for u in members:
            validate_urn(u)
    except SnipeError:
        return None
    return members, record["routing"]


@dataclass(frozen=True, slots=True)
class _Local:
    """A member that joined through this daemon."""

    key: str                       # the key that joined it (quotas count per key)
    since: float                   # when it (last) joined, on the router's clock


@dataclass
class GroupCounts:
    """One group's delivery counters at this router (the endpoint thread writes, others read);
    what it relayed and dropped as duplicates its `Relay` counts."""

    delivered: int = 0             # deliveries to members (a message to 10 members: 10)
    batches: int = 0               # channel messages those deliveries took
    replayed: int = 0              # deliveries from the history to resuming members
    members: int = 0               # members delivered to, at the last view


class GroupStore(Protocol):
    """Where a router keeps, durably, each group's record: {"members": {member URN: key},
    "routing": bool} (daemon/state.py's DaemonState)."""

    def put_group(self, group: str, record: dict[str, Any]) -> None: ...
    def drop_group(self, group: str) -> None: ...
    def all_groups(self) -> dict[str, Any]: ...


class _NoStore:
    """A router that keeps nothing across restarts (tests, simulations)."""

    def put_group(self, group: str, record: dict[str, Any]) -> None:
        pass

    def drop_group(self, group: str) -> None:
        pass

    def all_groups(self) -> dict[str, Any]:
        return {}


class GroupRouter:
    def __init__(self, host_urn: str, address: str, catalog: CatalogClient, endpoint: Endpoint, lease_s: float,
                 wanted: int = DEFAULT_WANTED, keep_lease: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.monotonic, store: GroupStore | None = None) -> None:
        self.host_urn, self.address, self.catalog, self.endpoint = host_urn, address, catalog, endpoint
        self.lease_s, self.wanted = lease_s, wanted
        self.keep_lease, self.clock = keep_lease, clock
        self.local: dict[str, dict[str, _Local]] = {}   # group -> live member that joined here
        self.routing: set[str] = set()
        self.store: GroupStore = store or _NoStore()
        self.restored: set[str] = set()              # groups routed before a restart, not yet looked at since
        self.upkeep_due: list[str] = []              # groups this round of `tick` has yet to look at
        self.lock = threading.Lock()
        self.relays: dict[str, Relay] = {}
        self.views: dict[str, _View] = {}
        self.histories: dict[str, History] = {}
        self.resumed: dict[str, dict[str, float]] = {}    # group -> member -> when it resumed (monotonic)
        self.ours: dict[str, dict[str, float]] = {}       # group -> member -> when last seen as ours (monotonic)
        self.counts: dict[str, GroupCounts] = {}
        self.pending: dict[str, Batch] = {}               # group -> relayed this turn, for its members
        self.answers = PendingAnswers()                   # answers to Resumes held for this router's holes
        self.relayed = 0
        self.replayed = 0
        self.forged = 0                                   # messages whose origin their sender may not claim
        self._forged_said = 0.0
        self.last_traffic: dict[str, float] = {}          # group -> last data or Resume here (monotonic)
        self.unrouted_evicted = 0                         # unrouted groups forgotten to make room (MAX_UNROUTED_GROUPS)
        self.forgotten = 0                                # idle groups whose relay state was dropped
        self._unrouted_said = 0.0
        self._next_sweep = 0.0
        endpoint.system_handlers[MCAST_DATA] = self._on_data
        endpoint.system_handlers[MCAST_RESUME] = endpoint.one_by_one(self._on_resume)
        endpoint.turn_end.append(self._end_turn)
        self.next_refresh = 0.0
        self.next_renew = 0.0
        self._restore()

    # --- daemon thread: requests and leases ----------------------------------------------------
    def join(self, group: str, member: str, key: str) -> list[str]:
        """`member` (a process that `key` speaks for: the daemon checked) joins `group` here."""
        group = validate_urn(group)
        self._check_bounds(group, key)
        entry = ensure_group(self.catalog, group)      # one read serves the election too (the loop waits on each)
        with self.lock:
            record = self._record(group, joining=(member, key))
        self._keep(group, record, strict=True)      # before it is answered: a restarted daemon knows it
        with self.lock:
            self.local.setdefault(group, {})[member] = _Local(key, self.clock())
        return self._elect(group, entry)

    # --- durable state: what a restarted daemon starts from -------------------------------------
    def _persist(self, group: str) -> None:
        """Keep `group`'s local members and whether this host routes it in the store, after a
        change to them (a failure is logged: what it failed to drop, a restart forgets by the
        catalog's leases; what it failed to add, a restart may not know)."""
        with self.lock:
            record = self._record(group)
        self._keep(group, record)

    def _record(self, group: str, joining: tuple[str, str] | None = None) -> dict[str, Any] | None:
        """(Under the lock.) `group`'s record for the store (None: nothing to keep), with the
        member `joining` (URN, key) in it."""
        members = {u: m.key for u, m in self.local.get(group, {}).items()}
        if joining is not None:
            members[joining[0]] = joining[1]
        routing = group in self.routing or group in self.restored
        return {"members": members, "routing": routing} if members or routing else None

    def _keep(self, group: str, record: dict[str, Any] | None, strict: bool = False) -> None:
        """Write `group`'s record (None: drop it); `strict`: a failure fails the request (a join
        is not answered unless kept)."""
        try:
            if record is not None:
                self.store.put_group(group, record)
            else:
                self.store.drop_group(group)
        except Exception as exc:        # whatever the store's disk or database raises (full, read-only)
            if strict:
                raise ServerError(f"{self.host_urn} could not keep {group} in its state ({exc}), so a restart "
                                  f"would forget it; see to the daemon's state folder (full or read-only?), "
                                  f"then join again") from exc
            log.error("%s: could not keep the state of %s (a restart may not know it): %s", self.host_urn,
                      group, exc)

    def _restore(self) -> None:
        """(At start.) The groups kept before a restart: their members are local again (the join
        grace counted from now), the groups it routed looked at in the first upkeep round."""
        now = self.clock()
        for group, record in self.store.all_groups().items():
            parsed = _saved_group(group, record)
            if parsed is None:
                log.warning("%s: dropped an unreadable record of multicast group %r from its state", self.host_urn,
                            group[:200])
                self._keep(group, None)
                continue
            members, routing = parsed
            if not members and not routing:
                self._keep(group, None)
            if members:
                self.local[group] = {u: _Local(k, now) for u, k in members.items()}
            if routing:
                self.restored.add(group)
        if self.local or self.restored:
            log.info("%s: restored %d multicast group(s) with local members and %d it routed; standing again "
                     "where they still need it", self.host_urn, len(self.local), len(self.restored))

    def _check_bounds(self, group: str, key: str) -> None:
        with self.lock:
            if any(m.key == key for m in self.local.get(group, {}).values()):
                return                  # this key is in the group already: nothing new to hold
            mine = sum(1 for members in self.local.values() if any(m.key == key for m in members.values()))
            held = len(set(self.local) | self.routing | self.restored)
        if mine >= MAX_GROUPS_PER_KEY:
            raise QuotaExceeded(f"mcast-join {group}: key {key[:16]}… already has members in {mine} groups on "
                                f"{self.host_urn}, the most one key may ({MAX_GROUPS_PER_KEY}); leave one first")
        if group not in self.local and group not in self.routing and group not in self.restored and held >= MAX_GROUPS:
            raise QuotaExceeded(f"mcast-join {group}: {self.host_urn} already serves {held} groups, the most it "
                                f"takes ({MAX_GROUPS}); join through another host, or leave groups first")

    def forget_moved(self, member: str) -> None:
        """`member`, a task here, migrated to another host: leave each group it joined here (its
        clone joined through its new host's daemon, and renews its lease from there)."""
        with self.lock:
            groups = [g for g, members in self.local.items() if member in members]
        for group in groups:
            self.leave(group, member)

    def leave(self, group: str, member: str) -> None:
        """`member` leaves `group`; once no member here is left, this host stops routing it,
        unless a live member elsewhere is registered with it."""
        with self.lock:
            members = self.local.get(group)
            if members is None:
                return
            members.pop(member, None)
            left_one = bool(members)
            if not left_one:
                del self.local[group]
        self._persist(group)
        if left_one or group not in self.routing:
            return
        try:
            self.catalog.invalidate(group)
            entry = self.catalog.get(group)
        except SnipeError as exc:       # `tick` looks again within a round
            log.warning("%s: could not read %s after its last local member left (%s); deciding on the next "
                        "upkeep round", self.host_urn, group, exc)
            return
        if self._registered_here(entry, now_ms(), but=member):
            return
        self._step_down(group, "no live member is here or registered with it")

    def _registered_here(self, entry: Entry, now: int, but: str = "") -> bool:
        """Whether a live member (other than `but`) lists this host among its routers."""
        for urn, value in live_members(entry, now).items():
            routers = value.get("routers")
            if urn != but and isinstance(routers, list) and self.host_urn in routers:
                return True
        return False

    def _step_down(self, group: str, why: str) -> None:
        with self.lock:
            if group not in self.routing and group not in self.restored:
                return
            self.routing.discard(group)
            self.restored.discard(group)
        self._persist(group)
        log.info("%s: stepping down as a router for %s (%s)", self.host_urn, group, why)
        try:
            self.catalog.delete(group, ROUTER + self.host_urn)
        except SnipeError as exc:       # not renewed any more: it lapses within a lease
            log.warning("could not withdraw the router lease on %s (it lapses in %.0f s): %s", group,
                        self.lease_s, exc)

    def _elect(self, group: str, entry: Entry | None = None) -> list[str]:
        """Stand for election in `group` (`entry`: its entry, just read; else read here). A router
        already standing is renewed by `_renew`, not here. Returns the group's live routers after
        the election, this one included if it stands."""
        now = now_ms()
        if entry is None:
            self.catalog.invalidate(group)
            entry = self.catalog.get(group)
        routers = live_routers(entry, now)
        ifs = {r: self._interfaces(r) for r in routers}
        mine = self._interfaces(self.host_urn)
        if should_route(self.host_urn, mine, ifs, shared_networks, self.wanted):
            with self.lock:        # before the lease is written: a sender that reads it finds us routing
                standing = group in self.routing and self.host_urn in routers
                new = group not in self.routing
                self.routing.add(group)
                again = group in self.restored
                self.restored.discard(group)
            if new:
                self._persist(group)
            if not standing:
                try:
                    self.catalog.set(group, ROUTER + self.host_urn, self._lease_value(group), ttl=self.lease_s)
                except SnipeError:
                    if new:
                        with self.lock:
                            self.routing.discard(group)
                            if again:
                                self.restored.add(group)      # looked at again next round
                        self._persist(group)
                    raise
            if new:
                log.info("%s: %s a router for %s", self.host_urn, "again" if again else "now", group)
            return sorted(set(routers) | {self.host_urn})
        if self.host_urn in routers:
            # Surplus (hosts elected themselves at once): withdraw the lease. Members move to the
            # keepers within a turn of their own; until then this daemon still relays what it gets.
            log.info("%s: stepping down as a router for %s (%d routers, %d wanted)", self.host_urn, group,
                     len(routers), self.wanted)
            self.catalog.delete(group, ROUTER + self.host_urn)
            with self.lock:
                self.routing.discard(group)
                self.restored.discard(group)
            self._persist(group)
        elif group in self.restored:
            # routed before a restart, not wanted now (another took its place meanwhile): its old
            # lease lapsed, or it is listed as no router stands (not in `routers`)
            with self.lock:
                self.restored.discard(group)
            self._persist(group)
        return sorted(set(routers) - {self.host_urn})

    def _interfaces(self, host: str) -> list[dict[str, Any]]:
        try:
            ifs = self.catalog.cached(host, max_age=10.0).value("interfaces", now_ms(), [])
        except SnipeError:
            return []
        return ifs if isinstance(ifs, list) else []

    def tick(self, now: float) -> None:
        """Renew every router lease in one write, and look at each group (forget dead members,
        re-run the election) about four times per lease, in slices of UPKEEP_SLICE_S per call,
        the host lease kept after each group (see the module docstring)."""
        if now >= self.next_renew:
            self.next_renew = now + min(1.0, self.lease_s / 4)
            self._renew()
        if not self.upkeep_due:
            if now < self.next_refresh:
                return
            self.next_refresh = now + min(1.0, self.lease_s / 4)
            with self.lock:
                self.upkeep_due = sorted(set(self.local) | self.routing | self.restored, reverse=True)
        ends = self.clock() + UPKEEP_SLICE_S
        while self.upkeep_due:
            g = self.upkeep_due.pop()
            try:
                self._upkeep(g)
            except SnipeError as exc:
                log.warning("multicast upkeep of %s failed: %s", g, exc)
            self.keep_lease()
            if self.clock() >= ends:
                break

    def _renew(self) -> None:
        """The router leases of every group this daemon routes, in one catalog write (batches of
        MAX_BATCH_RECORDS), each carrying the group's counters."""
        with self.lock:
            groups = sorted(self.routing)
        records = [self.catalog.sign(g, ROUTER + self.host_urn, self._lease_value(g), ttl=self.lease_s)
                   for g in groups]
        for i in range(0, len(records), MAX_BATCH_RECORDS):
            try:
                self.catalog.put(records[i:i + MAX_BATCH_RECORDS])
            except SnipeError as exc:       # tried again next time: the lease has three more quarters
                log.warning("%s: renewing its router leases on %d group(s) failed: %s", self.host_urn,
                            len(records), exc)
                return
            finally:
                self.keep_lease()

    def _upkeep(self, group: str) -> None:
        """Forget the local members of `group` that are not live (past the join grace), then stand
        for election, or step down when no live member is here or registered with this router."""
        with self.lock:
            if group not in self.local and group not in self.routing and group not in self.restored:
                return                  # left since this round began (`leave` decided)
        self.catalog.invalidate(group)
        entry = self.catalog.get(group)
        wall, now = now_ms(), self.clock()
        live = live_members(entry, wall)
        with self.lock:
            members = self.local.get(group, {})
            grace = JOIN_GRACE_LEASES * self.lease_s
            dead = [u for u, m in members.items() if u not in live and now - m.since >= grace]
            for u in dead:
                del members[u]
            if group in self.local and not members:
                del self.local[group]
            has_local = bool(members)
        if dead:
            self._persist(group)
            log.info("%s: forgot %d member(s) of %s whose membership lease ran out: %s", self.host_urn,
                     len(dead), group, ", ".join(dead[:5]) + (" …" if len(dead) > 5 else ""))
        if has_local or self._registered_here(entry, wall):
            self._elect(group, entry)
        else:
            self._step_down(group, "no live member is here or registered with it")

    def group_counts(self, group: str) -> dict[str, int]:
        """This router's counters for `group` (as published in its lease)."""
        c = self.counts.get(group) or GroupCounts()
        h = self.histories.get(group)
        r = self.relays.get(group)
        return {"relayed": r.relayed if r else 0, "delivered": c.delivered, "duplicates": r.duplicates if r else 0,
                "batches": c.batches,
                "replayed": c.replayed, "members": c.members, "history": len(h.items) if h else 0,
                "history_bytes": h.bytes if h else 0}

    def _lease_value(self, group: str) -> dict[str, Any]:
        return {"daemon": self.address, **self.group_counts(group)}

    def status(self) -> dict[str, Any]:
        with self.lock:
            return {"routing": sorted(self.routing), "restored": sorted(self.restored),
                    "local": {g: sorted(m) for g, m in self.local.items()},
                    "relayed": self.relayed, "replayed": self.replayed, "forged": self.forged,
                    "unrouted_evicted": self.unrouted_evicted, "forgotten": self.forgotten,
                    # the endpoint thread adds to these dicts: iterate over copies (list() is atomic)
                    "history": {g: len(h.items) for g, h in list(self.histories.items())},
                    "groups": {g: self.group_counts(g) for g in sorted(set(list(self.counts)) | self.routing)},
                    "served": {g: list(v.members) for g, v in list(self.views.items())}}

    # --- endpoint thread: relaying -------------------------------------------------------------
    def _view(self, group: str) -> _View | None:
        """The members registered here and the live routers, recomputed every VIEW_REFRESH_S
        (sooner when a lease in the entry it came from has expired)."""
        v = self.views.get(group)
        now = time.monotonic()
        if v is not None and now - v.at < VIEW_REFRESH_S and (v.expires_ms is None or v.expires_ms > now_ms()):
            return v
        catalog = self.endpoint.catalog
        if catalog is None:
            return None
        entry = catalog.get(group, r=1)        # once a refresh: one replica's answer is fresh enough
        wall = now_ms()
        routers = set(live_routers(entry, wall))
        routers.add(self.host_urn)
        me = self.host_urn
        ours = self.ours.setdefault(group, {})
        for u, val in live_members(entry, wall).items():
            mine = val.get("routers")
            if isinstance(mine, list) and me in mine:
                ours[u] = now
        members = set()
        for held in (ours, self.resumed.get(group, {})):
            hold = HANDOVER_S if held is ours else RESUMED_HOLD_S
            for u, at in list(held.items()):
                if now - at < hold:
                    members.add(u)
                else:
                    del held[u]
        v = self.views[group] = _View(now, entry.next_expiry(wall), tuple(sorted(members)), tuple(sorted(routers)))
        self.counts.setdefault(group, GroupCounts()).members = len(members)
        return v

    def _on_data(self, messages: list[Deliver]) -> None:
        """A run of multicast messages (from a sender or another router): relay each once."""
        wall = now_ms()
        # A run comes from one source and mostly names one group and origin: what depends only on
        # them (the origin's check, the group's state and view) is looked up when they change.
        vouched: tuple[str, str] | None = None     # a (source, origin) found to be allowed
        group: str | None = None             # the group whose state follows, None: look it up
        relay = view = history = batch = None
        for m, (h, body) in self.endpoint.decoded(messages, unpack, "multicast message"):
            if vouched is None or h.origin != vouched[1] or m.source != vouched[0]:
                if origin_urn(h.origin) != m.source and not is_host(m.source):    # routers pass on others'
                    self._refuse_forged(m.source, h.origin)
                    continue
                vouched = (m.source, h.origin)
            if h.group != group:
                group = None
                if h.group not in self.last_traffic:
                    self._make_room(h.group, m.source)
                self.last_traffic[h.group] = time.monotonic()
                view = self._view(h.group)
                if view is None:
                    continue
                relay = self.relays.get(h.group)
                if relay is None:
                    relay = self.relays[h.group] = Relay(self.host_urn)
                history = self.histories.get(h.group)
                batch = self.pending.get(h.group)
                group = h.group
            assert relay is not None and view is not None
            out = relay.on_data(h, view.members, view.routers)
            if out is None:
                continue
            self.relayed += 1
            if history is None:
                history = self.histories[group] = History(HISTORY_MESSAGES, HISTORY_BYTES, HISTORY_AGE_S * 1000,
                                                          HISTORY_ITEM_OVERHEAD)
                self._share_history_bytes()
            history.add(h.origin, h.seq, wall, (h.origin, h.seq, h.tag, body), len(body))
            if out.deliver_to:
                if batch is None:
                    batch = self.pending[group] = Batch(group)
                batch.add(h.origin, h.seq, h.tag, body)
                if batch.full():
                    self._send_batch(group, self.pending.pop(group))
                    batch = None
            if out.forward_to:
                payload = pack(out.header, body)
                for router in out.forward_to:
                    self.endpoint.submit(router, MCAST_DATA, payload, HOP_DEADLINE_S)

    def _refuse_forged(self, source: str, origin: str) -> None:
        """A process claimed another's messages (its channel is authenticated: the source is
        who sent it). Only routers, which are host daemons, pass on others' messages."""
        self.forged += 1
        now = time.monotonic()
        if now - self._forged_said >= FORGED_SAY_EVERY_S:
            self._forged_said = now
            log.warning("dropped a multicast message from %s claiming to come from %s (%d so far): a process "
                        "may send only its own", source, origin_urn(origin), self.forged)

    def _make_room(self, group: str, source: str) -> None:
        """`group` gets relay state here: if it is neither routed nor has a local member here and
        MAX_UNROUTED_GROUPS such groups have state already, the least recently active of them
        is forgotten (its counters and history; a late duplicate is dropped by the members)."""
        with self.lock:
            ours = self.routing | set(self.local)
        if group in ours:
            return
        unrouted = [(at, g) for g, at in list(self.last_traffic.items()) if g not in ours]
        if len(unrouted) < MAX_UNROUTED_GROUPS:
            return
        _, oldest = min(unrouted)
        self._forget(oldest)
        self.unrouted_evicted += 1
        now = time.monotonic()
        if now - self._unrouted_said >= FORGED_SAY_EVERY_S:
            self._unrouted_said = now
            log.warning("%s: %s named %s, a group this host neither routes nor has members of, while it held "
                        "state for %d such groups: forgot the least recently active, %s (%d so far)",
                        self.host_urn, source, group, MAX_UNROUTED_GROUPS, oldest, self.unrouted_evicted)

    def _end_turn(self) -> None:
        self._flush()
        self._answer()
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + FORGET_SWEEP_S
            self._forget_idle(now)

    def _forget_idle(self, now: float) -> None:
        """(Endpoint thread, which alone adds relay state.) Drop the relay state of groups
        neither routed nor with a local member here that have been idle FORGET_IDLE_S."""
        with self.lock:
            keep = self.routing | set(self.local)
        held = (self.relays, self.histories, self.views, self.ours, self.resumed, self.counts, self.pending,
                self.last_traffic)
        idle = [g for g in set().union(*held) - keep if now - self.last_traffic.get(g, 0.0) >= FORGET_IDLE_S]
        for g in idle:
            self._forget(g)

    def _forget(self, group: str) -> None:
        """(Endpoint thread.) Drop `group`'s relay state."""
        for d in (self.relays, self.histories, self.views, self.ours, self.resumed, self.counts, self.pending,
                  self.last_traffic):
            d.pop(group, None)
        self.forgotten += 1
        self._share_history_bytes()

    def _share_history_bytes(self) -> None:
        """Each group's history may keep HISTORY_BYTES, or its share of HISTORY_TOTAL_BYTES when
        that is less (a key may have members in MAX_GROUPS_PER_KEY groups, each of which could
        otherwise hold HISTORY_BYTES here); a history over a lowered share sheds its oldest at once."""
        share = min(HISTORY_BYTES, HISTORY_TOTAL_BYTES // max(1, len(self.histories)))
        for h in list(self.histories.values()):
            if h.max_bytes != share:
                h.max_bytes = share
                h.trim()

    def _flush(self) -> None:
        """End of the endpoint's turn: what each group relayed in it, to its members."""
        if self.pending:
            pending, self.pending = self.pending, {}
            for group, batch in pending.items():
                self._send_batch(group, batch)

    def _send_batch(self, group: str, batch: Batch) -> None:
        view = self._view(group)
        if view is None or not view.members:
            return
        payload = batch.pack()
        submit = self.endpoint.submit
        for member in view.members:
            submit(member, MCAST_DELIVER, payload, HOP_DEADLINE_S)
        counts = self.counts.setdefault(group, GroupCounts())
        counts.delivered += batch.count * len(view.members)
        counts.batches += len(view.members)

    def _on_resume(self, m: Deliver) -> None:
        """A member registered with us: relay to it from now on (unless it only asks for a
        replay), and replay what it lacks."""
        r = unpack_resume(m.payload)
        group = validate_urn(r.group)
        if group not in self.last_traffic:
            self._make_room(group, m.source)
        self.last_traffic[group] = time.monotonic()
        self._flush()           # what this turn relayed goes out first (the replay repeats what the member lacks)
        if r.follow:
            self.resumed.setdefault(group, {})[m.source] = time.monotonic()
            self.views.pop(group, None)
        history = self.histories.get(group)
        missed = history.replay(r.next, r.since_ms) if history is not None else []
        self.replayed += len(missed)
        counts = self.counts.setdefault(group, GroupCounts())
        counts.replayed += len(missed)
        for payload in batches(group, missed):
            self.endpoint.submit(m.source, MCAST_DELIVER, payload, HOP_DEADLINE_S)
        # The answer (MCAST_REPLAYED) goes after the replay, on the same channel, once this router
        # has no hole below what it held now (core.PendingAnswers): the member may then start on
        # new origins.
        view = self.views.get(group)          # as it stands (not known: replay what fills the holes)
        registered = r.follow or (view is not None and m.source in view.members)
        self.answers.ask(m.source, r, self.relays.get(group), history.mark if history is not None else 0,
                         registered, time.monotonic())
        self._answer()

    def _answer(self) -> None:
        """(After this turn's relays went out.) The answers whose holes filled or whose hold ran out."""
        if not len(self.answers):
            return
        for a in self.answers.ready(self.relays, self._delivers_to, time.monotonic()):
            if a.replay is not None:            # not relayed to it: replay what filled the holes
                history = self.histories.get(a.group)
                filled = history.added_since(a.mark, a.replay) if history is not None else []
                self.replayed += len(filled)
                self.counts.setdefault(a.group, GroupCounts()).replayed += len(filled)
                for payload in batches(a.group, filled):
                    self.endpoint.submit(a.member, MCAST_DELIVER, payload, HOP_DEADLINE_S)
            self.endpoint.submit(a.member, MCAST_REPLAYED, pack_replayed(a.group), HOP_DEADLINE_S)

    def _delivers_to(self, group: str, member: str) -> bool:
        view = self._view(group)
        return view is not None and member in view.members
