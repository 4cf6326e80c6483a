"""The member's and sender's side of multicast: join, leave, mcast, members.

A member registers with two routers; both deliver (it drops the copies). It tells
them where it stands (a `Resume`, at its join and when it moves because a router
of its own went away), so that router relays to it at once and replays what it missed from its
history (snipe/multicast/core.py), then answers; a sender it has not heard from before starts
only once every router asked has answered (ReplayWait), so a live message sent ahead of a
replay cannot fix where that sender's stream starts. A sender first seen past its first seq
(FIRST_SEQ) makes it ask its routers again (even while a wait is under way) and wait the same way:
a router that got the first message only as another's forward relays the second one first. A message
below where a stream started that still comes is reported, never dropped. A hole in an origin's
sequence that stays open for
HOLE_REPLAY_S (a hand-over between routers that left a gap) makes it ask its routers to replay.

The group's catalog entry (`urn:snipe:group:<name>`), one assertion per writer so nothing
races: `member.<proc URN>` = {host, routers} by each member's own key, `router.<host URN>` =
{daemon} by each router daemon, each a lease. A member's lease (`member_lease_s`, default
MEMBER_LEASE_S) is renewed by its own process, every group's in one catalog write every third of
the lease, so a member that exits or dies without leave() stops being listed (and relayed to)
once it runs out; the renewal goes on while a migration has the endpoint frozen, and a process
that has migrated away leaves it to its clone. Whenever a member says it is one again after its
lease may have lapsed (a clone, a task restored from a checkpoint, a renewal that got through
only after the lease ran out), it also sends its routers a Resume: what they relayed while it
was not listed is replayed, and what it already has is dropped as a duplicate. The first
joiner claims the group and lets every admitted key write `member.` and `router.` names under it.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import math
import os
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from snipe import authority
from snipe.catalog.client import CatalogClient, now_ms
from snipe.catalog.entry import Entry
from snipe.catalog.protocol import MAX_BATCH_RECORDS
from snipe.errors import ConfigError, NotAuthorized, NotFound, SnipeError
from snipe.messaging.channel import Deliver
from snipe.messaging.endpoint import Message
from snipe.messaging.routes import shared_networks
from snipe.multicast.core import (
    FIRST_SEQ,
    MCAST_DATA,
    MCAST_DELIVER,
    MCAST_REPLAYED,
    MCAST_RESUME,
    Header,
    Reorder,
    ReplayWait,
    Resume,
    forget_gone,
    hold_new,
    origin_of,
    origin_urn,
    pack,
    pack_resume,
    pick_routers,
    read_batch,
    resume_next,
    resume_targets,
    run_bodies,
    take_run,
    targets,
    unpack_replayed,
)
from snipe.urn import is_host, validate_urn

if TYPE_CHECKING:
    from snipe.messaging.endpoint import Endpoint

MEMBER = "member."
ROUTER = "router."
ROUTERS_MAX_AGE_S = 1.0     # a sender re-reads the group's routers at least this often
HOLE_REPLAY_S = 2.0         # a hole open this long: ask the routers for a replay ...
HOLE_REPLAY_AGAIN_S = 10.0  # ... and again after this long (a replay of a long backlog takes a while)
# A member re-reads its group's routers (to notice one of its own gone, or a new one) this often
# while its router delivers, and every QUIET_READ_S when nothing came for that long: a router
# that delivers is alive, and thirty members reading the group twice a second cost a fifth of a CPU.
READ_EVERY_S = 5.0
QUIET_READ_S = 1.0
SAY_EVERY_S = 60.0          # a log line about what a non-router sent us: at most this often
# A member's `member.` assertion is a lease of this long (SNIPE_MEMBER_LEASE_S overrides it),
# renewed every third of it: a member that died stops being listed at most this long after.
MEMBER_LEASE_S = 15.0
MEMBER_LEASE_ENV = "SNIPE_MEMBER_LEASE_S"
# A lease written back this close to (or after) when the last one ran out may have lapsed, by
# the catalog's and the routers' clocks: the member then asks its routers to replay (a Resume).
LAPSE_MARGIN_S = 1.0

log = logging.getLogger("snipe.multicast")


def _incarnation(session_seed: str | None) -> int:
    """This process's incarnation as a sender (`origin_of`): random, but the same for the copies
    of a task replicated in mode "all" (`session_seed`, as their channels' sessions are), whose
    identical streams the routers must take for one."""
    if session_seed is None:
        return secrets.randbits(63)
    return int.from_bytes(hashlib.sha256(f"mcast|{session_seed}".encode()).digest()[:8], "big") >> 1


def member_lease_s(env: dict[str, str] | os._Environ[str] | None = None) -> float:
    """How long a member's assertion lives unrenewed: SNIPE_MEMBER_LEASE_S, else MEMBER_LEASE_S."""
    text = (os.environ if env is None else env).get(MEMBER_LEASE_ENV)
    if text is None or text == "":
        return MEMBER_LEASE_S
    try:
        lease = float(text)
    except ValueError:
        lease = math.nan
    if not (math.isfinite(lease) and 1.0 <= lease <= 86_400.0):
        raise ConfigError(f"{MEMBER_LEASE_ENV}={text!r} is not a number of seconds from 1 to 86400; "
                          f"set it so, or unset it for the default {MEMBER_LEASE_S:g}")
    return lease


def live_routers(entry: Entry, now: int) -> dict[str, dict[str, Any]]:
    return {a.name[len(ROUTER):]: a.value for a in entry.live(now)
            if a.name.startswith(ROUTER) and isinstance(a.value, dict)}


def live_members(entry: Entry, now: int) -> dict[str, dict[str, Any]]:
    return {a.name[len(MEMBER):]: a.value for a in entry.live(now)
            if a.name.startswith(MEMBER) and isinstance(a.value, dict)}


def ensure_group(catalog: CatalogClient, group: str) -> Entry | None:
    """Claim the group if nobody has, opening `member.` and `router.` names to admitted keys.
    Returns the group's entry as read here when it was claimed already (None: it was not, so
    what it holds now is not known here)."""
    entry = catalog.get(group)
    if entry.owner(catalog.admin_key, now_ms()) is not None:
        return entry
    with contextlib.suppress(NotAuthorized):   # another process claimed it first: its delegation serves
        catalog.put([catalog.sign(group, authority.OWNER, catalog.identity.key_id),
                     catalog.sign(group, authority.DELEGATE_PREFIX + authority.ANY_KEY, [MEMBER, ROUTER])])
    return None


class Membership:
    """This process's groups. Delivery runs in the endpoint's I/O thread; the rest in callers'."""

    def __init__(self, endpoint: Endpoint, catalog: CatalogClient, me: str, host: str | None,
                 lease_s: float | None = None) -> None:
        self.endpoint, self.catalog, self.me, self.host = endpoint, catalog, me, host
        self.lease_s = member_lease_s() if lease_s is None else lease_s
        self.lock = threading.Lock()
        self.joined: dict[str, list[str]] = {}            # group -> routers we registered with
        self.asserted: dict[str, dict[str, Any]] = {}     # group -> our `member.` value, renewed as a lease
        self.renew_at = math.inf                          # when _renew next renews them (monotonic)
        # group -> when the lease last written may run out (monotonic; -inf: it may have already)
        self.lease_until: dict[str, float] = {}
        self.renewed_ts = 0                               # the latest timestamp a lease was signed with
        self.since: dict[str, int] = {}                   # group -> when we joined (ms)
        self.first_seen: dict[str, dict[str, float]] = {}  # group -> live router -> when we first saw it live
        self.reorder: dict[tuple[str, str], Reorder] = {}
        self.hole_replay_at: dict[str, float] = {}       # group -> when we last asked for a replay of a hole
        self.heard_at: dict[str, float] = {}             # group -> when a batch last came (monotonic)
        self.hold_new_until: dict[str, float] = {}       # group -> a new origin's first messages wait till then
        self.waits: dict[str, ReplayWait] = {}           # group -> the routers whose replay we await
        self.read_at: dict[str, float] = {}              # group -> when _tend last read its routers
        self.seqs: dict[str, itertools.count[int]] = {}
        # the origin our messages carry: this incarnation's (a migration carries it along; a
        # restart makes a new one, as the numbering starts again)
        self.origin = origin_of(me, _incarnation(endpoint.session_seed))
        self.not_from_routers = 0                        # batches and answers from a non-router, dropped
        self._said_at = -1e9
        # group name as the caller spelled it -> (monotonic time, URN, `targets` for each seq modulo
        # the number of live routers, the earliest lease expiry in the entry they came from): mcast
        # reads the entry once a second
        self.routers_seen: dict[str, tuple[float, str, list[tuple[str, ...]], int | None]] = {}
        endpoint.system_handlers[MCAST_DELIVER] = self._on_deliver
        endpoint.system_handlers[MCAST_REPLAYED] = endpoint.one_by_one(self._on_replayed)
        endpoint.periodic.append(self._tend)
        endpoint.leases.append(self._renew_leases)        # while frozen too: a migration takes a while

    # --- the application's calls ------------------------------------------------------------------
    def join(self, group: str, elect: Any = None) -> list[str]:
        """Join `group`; `elect(group)` asks this host's daemon to stand as a router, returning
        the routers it knows. Returns the routers we registered with."""
        group = validate_urn(group)
        since = now_ms()
        ensure_group(self.catalog, group)
        with_routers = elect(group) if elect is not None else None
        routers = self._register(self.catalog, group, with_routers)
        with self.lock:
            self.joined[group] = routers
            self.since.setdefault(group, since)
        self._resume(group, routers, lambda r, data: self.endpoint.send(r, data, MCAST_RESUME))
        return routers

    def leave(self, group: str) -> None:
        group = validate_urn(group)
        with self.lock:
            self.joined.pop(group, None)
            self.since.pop(group, None)
            self.read_at.pop(group, None)
            self.heard_at.pop(group, None)
            self.first_seen.pop(group, None)
            self.waits.pop(group, None)
            self.hold_new_until.pop(group, None)
            self.asserted.pop(group, None)
            self.lease_until.pop(group, None)
            for key in [k for k in self.reorder if k[0] == group]:
                del self.reorder[key]
            # Signed under the lock and timestamped past every lease signed so far (the I/O
            # thread signs renewals under it, with another client's clock): a renewal signed
            # just before cannot outlast the tombstone, and none after includes this group.
            self.catalog.clock.update(self.renewed_ts, now_ms())
            tombstone = self.catalog.sign(group, MEMBER + self.me, deleted=True)
        self.catalog.put([tombstone])

    def members(self, group: str) -> list[str]:
        return sorted(live_members(self.catalog.get(validate_urn(group)), now_ms()))

    def mcast(self, group: str, payload: bytes, tag: int = 0) -> int:
        """Send to every member of `group` (through more than half of its routers); returns the
        message's sequence number for this sender and group."""
        hit = self.routers_seen.get(group)
        now = time.monotonic()
        if hit is not None and now - hit[0] < ROUTERS_MAX_AGE_S and (hit[3] is None or hit[3] > now_ms()):
            _, group, rotations, _ = hit
        else:
            asked = group
            group = validate_urn(group)
            entry = self.catalog.cached(group, max_age=ROUTERS_MAX_AGE_S)
            routers = sorted(live_routers(entry, now_ms()))
            if not routers:
                self.catalog.invalidate(group)
                entry = self.catalog.get(group)
                routers = sorted(live_routers(entry, now_ms()))
            if not routers:
                self.routers_seen.pop(asked, None)
                raise NotFound(f"{group} has no live routers: no member has joined it (or their hosts are gone)")
            rotations = [tuple(targets(routers, i)) for i in range(len(routers))]
            self.routers_seen[asked] = (now, group, rotations, entry.next_expiry(now_ms()))
        counter = self.seqs.get(group)
        if counter is None:
            counter = self.seqs[group] = itertools.count(FIRST_SEQ)
        seq = next(counter)
        chosen = rotations[seq % len(rotations)]
        data = pack(Header(group, self.origin, seq, int(tag), chosen), payload)
        for r in chosen:
            self.endpoint.send(r, data, MCAST_DATA)
        return seq

    # --- registration ----------------------------------------------------------------------------
    def _register(self, catalog: CatalogClient, group: str, routers: list[str] | None,
                  before_write: Callable[[list[str]], None] | None = None) -> list[str]:
        """Pick our routers from `routers` (or the live ones) and say so in the catalog;
        `before_write(chosen)` runs first (the resume to the new one: its replay then precedes
        any live message it would send on reading the registration)."""
        now = now_ms()
        if routers is None:
            routers = list(live_routers(catalog.get(group), now))
        seen_at = time.monotonic()
        with self.lock:
            seen = self.first_seen.setdefault(group, {})
            for r in routers:
                seen.setdefault(r, seen_at)
        interfaces = self._interfaces(catalog, self.host)
        by_router = {r: self._interfaces(catalog, r) for r in routers}
        chosen = pick_routers(self.host, interfaces, by_router, shared_networks)
        if before_write is not None:
            before_write(chosen)
        self.assert_member(catalog, group, {"host": self.host or "", "routers": chosen, "since": now})
        return chosen

    def assert_member(self, catalog: CatalogClient, group: str, value: dict[str, Any]) -> None:
        """Say in `group`'s entry that we are a member (`value`), as a lease that _renew renews."""
        start = time.monotonic()
        with self.lock:
            record = catalog.sign(group, MEMBER + self.me, value, ttl=self.lease_s)
            self.renewed_ts = max(self.renewed_ts, record.ts)
        catalog.put([record])
        with self.lock:
            self.asserted[group] = value
            self.lease_until[group] = start + self.lease_s
            self.renew_at = min(self.renew_at, start + self.lease_s / 3)

    def reassert(self, catalog: CatalogClient, values: dict[str, dict[str, Any]]) -> None:
        """Say again that we are a member of each group in `values` (group -> our `member.`
        value) where our lease may have lapsed meanwhile (a migration's clone, a task restored
        from a checkpoint), and ask our routers to replay what they relayed to us in the gap (a
        router delivers to listed members only). If the catalog cannot be reached, the renewal
        keeps trying, and replays once it gets through."""
        start = time.monotonic()
        with self.lock:
            for group, value in values.items():
                self.asserted[group] = value
                self.lease_until[group] = -math.inf        # the renewal that gets through replays
            records = [catalog.sign(g, MEMBER + self.me, v, ttl=self.lease_s) for g, v in sorted(values.items())]
            self.renewed_ts = max([self.renewed_ts, *(r.ts for r in records)])
        try:
            for i in range(0, len(records), MAX_BATCH_RECORDS):
                catalog.put(records[i:i + MAX_BATCH_RECORDS])
        except SnipeError as exc:
            with self.lock:
                self.renew_at = min(self.renew_at, start)
            log.warning("%s: saying again that it is a member of %d group(s) failed (%s); its lease renewal "
                        "keeps trying", self.me, len(records), exc)
            return
        with self.lock:
            for group in values:
                if group in self.asserted:
                    self.lease_until[group] = start + self.lease_s
            self.renew_at = min(self.renew_at, start + self.lease_s / 3)
        for group in sorted(values):
            self._resume_gap(group)

    def _renew_leases(self, now: float) -> None:
        """(I/O thread, an endpoint lease job: runs while frozen too.)"""
        if self.endpoint.catalog is not None:
            self._renew(self.endpoint.catalog, now)

    def _renew(self, catalog: CatalogClient, now: float) -> None:
        """(I/O thread.) Renew the `member.` leases of every group we are in, in one write, every
        third of the lease, also while the endpoint is frozen for a migration; not once this
        process has moved away (its clone renews them). A renewal that gets through after the
        lease may have run out (the catalog was unreachable that long) asks the routers to replay."""
        if now < self.renew_at:
            return
        if self.endpoint.moved is not None:
            self.renew_at = math.inf
            return
        with self.lock:      # signed under the lock: see leave()
            groups = sorted(g for g in self.asserted if g in self.joined)
            records = [catalog.sign(g, MEMBER + self.me, self.asserted[g], ttl=self.lease_s) for g in groups]
            self.renewed_ts = max([self.renewed_ts, *(r.ts for r in records)])
        self.renew_at = now + self.lease_s / 3 if records else math.inf
        for i in range(0, len(records), MAX_BATCH_RECORDS):
            try:
                catalog.put(records[i:i + MAX_BATCH_RECORDS])
            except SnipeError as exc:        # tried again soon: the lease has two more thirds to run
                self.renew_at = now + min(1.0, self.lease_s / 6)
                log.warning("%s: renewing its membership of %d group(s) failed (%s); trying again", self.me,
                            len(records), exc)
                return
            done = max(now, time.monotonic())
            lapsed: list[str] = []
            with self.lock:
                for group in groups[i:i + MAX_BATCH_RECORDS]:
                    if group not in self.asserted:
                        continue                 # left meanwhile (its tombstone is the later)
                    if self.lease_until.get(group, -math.inf) - LAPSE_MARGIN_S <= done:
                        lapsed.append(group)
                    self.lease_until[group] = now + self.lease_s
            for group in lapsed:
                log.warning("%s: its membership of %s may have lapsed (renewed only after its %g s lease); "
                            "asking its routers to replay the gap", self.me, group, self.lease_s)
                self._resume_gap(group)

    def _resume_gap(self, group: str) -> None:
        """Our lease may have lapsed, so our routers may have relayed without us: a Resume makes
        them relay to us again at once and replay from where each sender's stream stands here
        (what we already have is dropped as a duplicate)."""
        with self.lock:
            routers = list(self.joined.get(group, ()))
        if routers:
            self._resume(group, routers, self._submit_resume)

    def _resume(self, group: str, routers: Sequence[str], send: Any, replay_only: Sequence[str] = (),
                new_only: bool = False) -> None:
        """Tell `routers` (those we registered with) where we stand, so they relay to us at once
        and replay what we missed (from our join, or since a router of ours died); `replay_only`
        routers just replay. `new_only`: the replay is for the origins we have not started on,
        nothing of the others (NO_REPLAY as their next seq: a router, old or new, replays from a
        seq no real one reaches)."""
        with self.lock:
            since = self.since.get(group)
            if since is None:
                return
            nxt = resume_next(((origin, r) for (g, origin), r in self.reorder.items() if g == group), new_only)
            # Origins we have not started on: the replay of what came since our join may come
            # after a live message (from another router, or from this one, which may list us
            # already); do not start on that one (Reorder) before every router asked has answered.
            wait = self.waits.setdefault(group, ReplayWait())
            now = time.monotonic()
            self._hold_new(group, wait.asked([*routers, *replay_only], now), now, release=False)
        data = pack_resume(Resume(group, since, nxt))
        for r in routers:
            send(r, data)
        if replay_only:
            data = pack_resume(Resume(group, since, nxt, follow=False))
            for r in replay_only:
                send(r, data)

    @staticmethod
    def _interfaces(catalog: CatalogClient, host: str | None) -> list[dict[str, Any]]:
        if not host:
            return []
        try:
            ifs = catalog.cached(host, max_age=10.0).value("interfaces", now_ms(), [])
        except SnipeError:
            return []
        return ifs if isinstance(ifs, list) else []

    def _tend(self, now: float) -> None:
        """I/O thread, twice a second: re-register where a router of ours has gone, report holes."""
        catalog = self.endpoint.catalog
        if catalog is None:
            return
        with self.lock:
            joined = dict(self.joined)
        for group, mine in joined.items():
            since_read = now - self.read_at.get(group, -1e9)
            quiet = now - self.heard_at.get(group, -1e9) >= QUIET_READ_S
            if since_read < (QUIET_READ_S if quiet else READ_EVERY_S):
                self._replay_holes(group, now, mine, self._submit_resume)
                continue
            self.read_at[group] = now
            catalog.invalidate(group)
            live = live_routers(catalog.get(group, r=1), now_ms())
            with self.lock:
                seen = self.first_seen.setdefault(group, {})
                for r in [r for r in seen if r not in live]:
                    del seen[r]                          # one that comes back is new again
                for r in live:
                    seen.setdefault(r, now)
                first_seen = dict(seen)
                wait = self.waits.get(group)
                # a router gone from the group answers no more: wait no more for it (and forget
                # its counts: one that comes back answers only what it gets from then on)
                if wait is not None and forget_gone(wait, live, now):
                    self._hold_new(group, wait.hold_until, now, release=False)   # below: on_timer
            if set(mine) <= set(live) and len(mine) >= min(2, len(live)):
                self._replay_holes(group, now, [r for r in mine if r in live],
                                   self._submit_resume)
                continue
            def resume(chosen: list[str], group: str = group, first_seen: dict[str, float] = first_seen,
                       live: dict[str, Any] = live) -> None:
                # the ones we move to may be new (no history): the oldest routers replay too
                self._resume(group, chosen, self._submit_resume, resume_targets(chosen, first_seen, live))
            chosen = self._register(catalog, group, list(live), resume)
            with self.lock:
                if group not in self.joined:
                    continue
                self.joined[group] = chosen
        lost: list[Message] = []
        with self.lock:
            for (group, origin), r in self.reorder.items():
                items, hole = r.on_timer(now)
                if hole is not None:
                    lost.append(Message(origin_urn(origin), -1, b"", group=group, failed=True,
                                        reason=f"multicast messages {hole[0]}..{hole[1]} from {origin} never "
                                               f"arrived (their routers failed before relaying them)"))
                lost.extend(items)
        if lost:
            self.endpoint.deliver_local(lost)

    def _submit_resume(self, router: str, data: bytes) -> None:
        self.endpoint.submit(router, MCAST_RESUME, data)

    def _replay_holes(self, group: str, now: float, routers: Sequence[str], send: Any) -> None:
        """A hole open for HOLE_REPLAY_S (the routers handed us over with a gap): ask them to replay."""
        with self.lock:
            open_since = [r.gap_since for (g, _), r in self.reorder.items() if g == group and r.gap_since is not None]
            if not open_since or now - min(open_since) < HOLE_REPLAY_S \
                    or now - self.hole_replay_at.get(group, -1e9) < HOLE_REPLAY_AGAIN_S:
                return
            self.hole_replay_at[group] = now
        self._resume(group, (), send, routers)

    # --- delivery (I/O thread) ---------------------------------------------------------------------
    def _on_replayed(self, m: Deliver) -> None:
        """A router's replay for our Resume has all come: once every router asked has answered,
        the origins we have not started on start (at the lowest seq held)."""
        if not self._from_routers([m], "replay answers"):
            return
        group = unpack_replayed(m.payload)
        now = time.monotonic()
        with self.lock:
            wait = self.waits.get(group)
            if wait is None:
                return
            wait.answered(m.source, now)
            ready = self._hold_new(group, wait.hold_until, now)
        if ready:
            self.endpoint.deliver_local(ready)

    def _hold_new(self, group: str, hold: float, now: float, release: bool = True) -> list[Message]:
        """(Under the lock.) The origins of `group` not started on wait till `hold` (the replay
        wait's end as it stands now); returns what those whose hold is over deliver now (if
        `release`)."""
        self.hold_new_until[group] = hold
        return hold_new((r for (g, _), r in self.reorder.items() if g == group), hold, now, release)

    def _from_routers(self, messages: list[Deliver], what: str) -> list[Deliver]:
        """Only routers, which are host daemons, deliver group messages and answer resumes: from
        anyone else (a process naming any origin it likes) they are dropped, and said."""
        ok = [m for m in messages if is_host(m.source)]
        if len(ok) < len(messages):
            self.not_from_routers += len(messages) - len(ok)
            now = time.monotonic()
            if now - self._said_at >= SAY_EVERY_S:
                self._said_at = now
                bad = next(m.source for m in messages if not is_host(m.source))
                log.warning("dropped multicast %s from %s, which is no router (%d so far)", what, bad,
                            self.not_from_routers)
        return ok

    def _on_deliver(self, batches: list[Deliver]) -> None:
        """Batches from a router: each origin's run through its Reorder (once each, in order)."""
        batches = self._from_routers(batches, "batches")
        decoded = self.endpoint.decoded(batches, read_batch, "multicast batch")    # outside the lock
        ready: list[Message] = []
        ask: dict[str, list[str]] = {}
        now = time.monotonic()
        with self.lock:
            for batch, (group, payload, runs) in decoded:
                if group not in self.joined:
                    continue                             # we left: nothing more for us
                self.heard_at[group] = now
                wait = self.waits.get(group)
                if wait is not None and wait.heard(batch.source, now):   # its replay is coming in
                    ready.extend(self._hold_new(group, wait.hold_until, now))
                for origin, first, n, tags, sizes, at in runs:
                    key = (group, origin)
                    r = self.reorder.get(key)
                    if r is not None and r.skips(first, n):
                        continue                 # the other router's copy (half of all runs): bodies not cut out
                    # A sender first seen past its first message: an earlier one may still be on
                    # its way from our other router (one that had it forwarded comes later than
                    # one sent it directly). Ask our routers to replay (below, one ask per group
                    # and call), and start at the lowest seq once they answered (core.take_run).
                    got, asks = take_run(self.reorder, key, first, n,
                                         partial(_messages, origin_urn(origin), group, n, tags, payload, at, sizes),
                                         now, self.hold_new_until.get(group, 0.0))
                    if asks:
                        ask[group] = list(self.joined[group])
                    ready.extend(got)
                    if r is None:
                        r = self.reorder[key]
                    for a, b in r.take_late():
                        ready.append(Message(origin_urn(origin), -1, b"", group=group, failed=True,
                                             reason=f"multicast messages {a}..{b} from {origin} arrived after "
                                                    f"later ones were delivered: lost to this member, unless "
                                                    f"sent before it joined (not owed: a member gets the "
                                                    f"messages from its join onwards)"))
        for group, routers in ask.items():
            self._resume(group, (), self._submit_resume, routers, new_only=True)
        if ready:
            self.endpoint.deliver_local(ready)


def _messages(source: str, group: str, n: int, tags: int | list[int], payload: bytes, at: int,
              sizes: int | list[int]) -> list[Message]:
    """The Messages of one run of a batch (core.read_batch), made by map: no Python loop per message."""
    return list(map(Message, itertools.repeat(source, n), itertools.repeat(tags, n) if type(tags) is int else tags,
                    run_bodies(payload, at, n, sizes), itertools.repeat(group, n)))


__all__ = ["MCAST_DATA", "MEMBER_LEASE_S", "Membership", "ensure_group", "live_members", "live_routers",
           "member_lease_s"]
