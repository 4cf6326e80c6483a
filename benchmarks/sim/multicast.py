"""Scenario C, multicast (SNIPE 4.4): 1,000 hosts, 10,000 members, 10% of the routers crash mid-stream.

The project's I/O-free multicast cores (snipe/multicast/core.py) run on virtual hosts, as the
daemons and member processes run them: nothing about election, relaying or reordering is
re-implemented here.

- Every host is a daemon (`HostNode`). When a member on it joins a group, and every
  `daemon_tick` after, it runs `should_route` (with a configurable `wanted`) over the group's live
  routers and their networks, then holds, renews or withdraws a router lease. A router relays
  what arrives with `Relay` to the members registered with it (still
  for `handover` after it stops being) and to the routers not yet in the message's `seen`,
  exactly as daemon/mcast.py does (a per-group view of members and routers refreshed every
  `view_refresh`).
- Members are processes of their own (`MemberNode`) on a host: they join (the host's daemon
  elects, then the member registers with `pick_routers`), re-register every `member_tick` when
  a router of theirs has gone (snipe/multicast/groups.py `_tend`), deliver through `Reorder`
  per sender, and report holes the reorderer gives up on after `gap_timeout`. A member whose
  daemon crashes lives on, as tasks do. With `resume` (the default, as the real code does) a
  member sends each router it registers with a `Resume`, and the router, which keeps a
  `History`, relays to it at once, replays what it missed and then answers (`Replayed`, after
  the replay on the same hop: each hop delivers in the order sent, `fifo_hops`, as the msg/1
  channel does; and, as daemon/mcast.py, only once it has no hole below the highest seq it held
  when the Resume came, or after ANSWER_HOLD_S: core.PendingAnswers) (a member that moves also asks its
  oldest routers for a replay only, and one with a hole open for `hole_replay` asks its
  routers). Members run snipe/multicast/groups.py's protocol with its own core decisions: a
  sender first seen at seq 1 starts at once; one first seen past it makes the member ask its
  routers (replay-only Resume) and hold it, as every sender not started on after a Resume, until
  each router asked has answered (`ReplayWait`); a seq below a stream's start that still comes is
  reported late. With `resume=False` the scenario
  shows what happens without: a member whose two routers both crash loses what was sent until
  it notices, silently if the stream ends first.
- Senders (`SenderNode`) are processes that are not members: each message goes to `targets`
  (more than half of the live routers, from a view kept up to `sender_cache`).

The catalog is modelled, not simulated (scenario A simulates it): `Directory` holds router
leases and member registrations, and a write becomes visible to every reader `catalog_delay`
after it is made, so hosts that elect themselves at once race as real ones do. Each hop (sender
to router, router to router, router to member) is a msg/1 channel, reliable and in order while both ends
live (scenario B simulates that layer): the network here loses nothing, but a crash drops what
was in flight to or from the crashed daemon. Hosts sit on `networks` networks; a hop within a
host, within a network and across networks has its own latency.

What is reported: per member, the delivery ratio of the messages sent while it was a member
(from `grace` after its join until `grace` before it left: a message sent in its last moments
may rightly arrive after it left and be dropped; late joiners and leavers included; the ratio
counted from the join itself, without grace, is reported too), exactly once
and in per-sender order, holes reported, late arrivals (sent after the join: owed and lost,
`late_owed_reported_lost`; sent before it: not owed), the guarantee itself
(`every_live_member_got_every_owed_message`: every message sent from the join on, none missed,
given up or late), members whose both routers crashed, routers per group
and members per router, traffic, delivery latency (virtual), and the wall time.
"""

from __future__ import annotations

import bisect
import math
import random
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from benchmarks.sim.shell import run_world
from snipe.multicast.core import (
    DEFAULT_WANTED,
    MEMBER_ROUTERS,
    Header,
    History,
    PendingAnswers,
    Relay,
    Reorder,
    ReplayWait,
    Resume,
    forget_gone,
    hold_new,
    pack,
    pack_replayed,
    pack_resume,
    pick_routers,
    resume_next,
    resume_targets,
    should_route,
    take_run,
    targets,
)
from snipe.sim import Latency, LogNormal, Network, Simulator

Interfaces = list[dict[str, Any]]


def shared(a: Interfaces, b: Interfaces) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """The simulated hosts' `shared_networks`: interface pairs on the same network."""
    return [(x, y) for x in a for y in b if x["net"] == y["net"]]


@dataclass(frozen=True)
class MulticastConfig:
    hosts: int = 1000
    networks: int = 20
    members: int = 10_000             # member processes, spread at random over the hosts
    groups: int = 10                  # each member is in one group, chosen at random
    wanted: int = DEFAULT_WANTED      # should_route's target number of routers per group
    member_routers: int = MEMBER_ROUTERS
    senders_per_group: int = 2        # processes that are not members, on random hosts
    messages: int = 50                # per sender
    rate: float = 20.0                # messages per second per sender
    payload_bytes: int = 64
    join_window: float = 2.0          # members join at random in [0, join_window)
    start_at: float = 3.0             # senders start
    late_join_fraction: float = 0.05  # of the members: join mid-stream instead
    leave_fraction: float = 0.02      # of the members: leave mid-stream
    crash_fraction: float = 0.10      # of the routers (hosts routing any group), at crash_at
    crash_at: float | None = None     # None: halfway through the stream
    lease_s: float = 5.0              # router leases (the daemon's --lease)
    catalog_delay: float = 0.05       # a catalog write becomes visible this long after it is made
    daemon_tick: float = 1.0          # elections and lease renewal (daemon/mcast.py tick)
    member_tick: float = 0.5          # re-registration and hole reports (groups.py _tend)
    view_refresh: float = 0.25        # a router's view of its members and the other routers
    sender_cache: float = 1.0         # a sender's view of the routers
    gap_timeout: float = 10.0         # Reorder: how long a hole is waited for
    grace: float = 1.0                # a member counts messages sent from this long after its join
    #                                   (and until this long before it leaves)
    drain: float = 15.0               # simulated time after the last send
    resume: bool = True               # members send Resume on (re-)registration; routers keep History
    history_age: float = 120.0        # History bound (seconds; count and bytes as the daemon's)
    resumed_hold: float = 10.0        # a resuming member is relayed to before the catalog lists it
    handover: float = 3.0             # a member whose first live router is another is still relayed to
    hole_replay: float = 2.0          # a member with a hole open this long asks its routers for a replay
    hole_replay_again: float = 10.0   # ... and again after this long
    fifo_hops: bool = True            # each hop delivers in the order sent, as a msg/1 channel does (a
    #                                   router's answer comes after its replay); False: latency reorders
    local_latency: Latency = field(default_factory=lambda: LogNormal(0.0001, 0.3, floor=0.00003))
    network_latency: Latency = field(default_factory=lambda: LogNormal(0.0005, 0.4, floor=0.0001))
    remote_latency: Latency = field(default_factory=lambda: LogNormal(0.01, 0.5, floor=0.002))

    def stream_seconds(self) -> float:
        return self.messages / self.rate


QUICK = MulticastConfig(hosts=60, networks=4, members=600, groups=3, messages=20, rate=10.0, drain=14.0)
# The second world: one group with 12 routers and 2,000 messages a second (two senders at 1,000
# each), so that a message sent directly to a member's router overtakes an earlier one that
# router gets only as another router's forward (scenario `multicast-high-rate`).
HIGH_RATE = MulticastConfig(hosts=60, networks=4, members=300, groups=1, senders_per_group=2, messages=2000,
                            rate=1000.0, wanted=12, drain=14.0)
HIGH_RATE_QUICK = replace(HIGH_RATE, members=40, messages=300, drain=8.0)


def scaled(cfg: MulticastConfig, hosts: int) -> MulticastConfig:
    """`cfg` for `hosts` hosts: ten members per host, a network per 50 hosts (at least two)."""
    return replace(cfg, hosts=hosts, members=10 * hosts, networks=max(2, min(cfg.networks, hosts // 50 or 1)),
                   groups=max(1, min(cfg.groups, hosts // 20 or 1)))


class MulticastNetwork(Network):
    """Latency by where the two ends are: one host, one network, or two networks. With
    `fifo_hops`, each (sender, receiver) hop delivers in the order sent, as the msg/1 channel the
    real hops ride does: a message that would overtake an earlier one on the same hop waits for
    it (head-of-line, as on a channel). `clock` is the simulator, set once it exists."""

    def __init__(self, cfg: MulticastConfig, host_of: dict[str, str], net_of: dict[str, int]) -> None:
        super().__init__(cfg.remote_latency)
        self.cfg, self.host_of, self.net_of = cfg, host_of, net_of
        self.clock: Simulator | None = None
        self.last_arrival: dict[tuple[str, str], float] = {}

    def transit(self, src: str, dst: str, size: int, label: str, rng: random.Random) -> list[float]:
        delays = super().transit(src, dst, size, label, rng)
        if not self.cfg.fifo_hops or not delays or self.clock is None:
            return delays
        now, key = self.clock.now, (src, dst)
        last = self.last_arrival.get(key, 0.0)
        out = []
        for d in delays:
            if now + d < last:
                d = last - now
                while now + d < last:            # float rounding: never land before the one ahead
                    d = math.nextafter(d, math.inf)
            last = now + d                       # equal times keep the send order (the event queue's)
            out.append(d)
        self.last_arrival[key] = last
        return out

    def latency_for(self, src: str, dst: str) -> Latency:
        a, b = self.host_of[src], self.host_of[dst]
        if a == b:
            return self.cfg.local_latency
        return self.cfg.network_latency if self.net_of[a] == self.net_of[b] else self.cfg.remote_latency


class Directory:
    """The group entries of the catalog: router leases and member registrations. A write is
    visible to every reader `delay` seconds after it is made."""

    def __init__(self, sim: Simulator, delay: float, interfaces: dict[str, Interfaces]) -> None:
        self.sim, self.delay, self.interfaces = sim, delay, interfaces
        self.routers: dict[str, dict[str, float]] = {}                 # group -> host -> lease expiry
        self.registered: dict[str, tuple[str, ...]] = {}              # member -> its routers
        self.by_router: dict[tuple[str, str], set[str]] = {}          # (group, router) -> members
        self.writes = 0

    def live_routers(self, group: str) -> dict[str, Interfaces]:
        now = self.sim.now
        leases = self.routers.get(group, {})
        return {h: self.interfaces[h] for h in sorted(leases) if leases[h] > now}

    def earliest_expiry(self, group: str) -> float:
        now = self.sim.now
        return min((t for t in self.routers.get(group, {}).values() if t > now), default=float("inf"))

    def members_of(self, group: str, router: str) -> tuple[str, ...]:
        return tuple(sorted(self.by_router.get((group, router), ())))

    # --- writes (visible after the delay) ------------------------------------------------------
    def set_router(self, group: str, host: str, ttl: float) -> None:
        self.writes += 1
        self.sim.call_later(self.delay, self._lease, group, host, self.sim.now + ttl)

    def delete_router(self, group: str, host: str) -> None:
        self.writes += 1
        self.sim.call_later(self.delay, self._unlease, group, host)

    def register(self, group: str, member: str, routers: tuple[str, ...] | None) -> None:
        self.writes += 1
        self.sim.call_later(self.delay, self._register, group, member, routers)

    def _lease(self, group: str, host: str, expires: float) -> None:
        self.routers.setdefault(group, {})[host] = expires

    def _unlease(self, group: str, host: str) -> None:
        self.routers.get(group, {}).pop(host, None)

    def _register(self, group: str, member: str, routers: tuple[str, ...] | None) -> None:
        for r in self.registered.pop(member, ()):
            self.by_router.get((group, r), set()).discard(member)
        if routers is not None:
            self.registered[member] = routers
            for r in routers:
                self.by_router.setdefault((group, r), set()).add(member)


@dataclass(slots=True)
class _View:
    at: float
    expires: float
    members: tuple[str, ...]
    routers: tuple[str, ...]


class HostNode:
    """A daemon: elections, leases and relaying for the groups its members joined."""

    def __init__(self, world: MulticastWorld, name: str) -> None:
        self.world, self.sim, self.name = world, world.sim, name
        self.interfaces = world.interfaces[name]
        self.local: dict[str, set[str]] = {}
        self.routing: set[str] = set()
        self.relays: dict[str, Relay] = {}
        self.views: dict[str, _View] = {}
        self.histories: dict[str, History] = {}
        self.resumed: dict[str, dict[str, float]] = {}     # group -> member -> when it resumed
        self.ours: dict[str, dict[str, float]] = {}        # group -> member -> when last its first live router
        self.replayed = 0
        self.answers = PendingAnswers()                     # answers to Resumes held for this router's holes

    def start(self, at: float) -> None:
        self.sim.set_timer(self.name, "tick", at)

    # --- requests from members on this host -----------------------------------------------------
    def join(self, group: str, member: str) -> None:
        self.local.setdefault(group, set()).add(member)
        self.elect(group)

    def leave(self, group: str, member: str) -> None:
        self.local.get(group, set()).discard(member)

    # --- elections and leases ---------------------------------------------------------------------
    def elect(self, group: str) -> None:
        w, d = self.world, self.world.directory
        routers = d.live_routers(group)
        if should_route(self.name, self.interfaces, routers, shared, w.cfg.wanted):
            if group not in self.routing:
                w.counts["elections"] += 1
            self.routing.add(group)
            d.set_router(group, self.name, w.cfg.lease_s)
        elif self.name in routers:
            w.counts["step-downs"] += 1
            self.routing.discard(group)
            d.delete_router(group, self.name)

    def on_timer(self, key: str) -> None:
        if key == "answers":
            self._answer()
            return
        cfg = self.world.cfg
        for g in sorted({g for g, m in self.local.items() if m} | self.routing):
            if self.local.get(g):
                self.elect(g)
            else:
                self.world.directory.set_router(g, self.name, cfg.lease_s)
        self.sim.set_timer(self.name, "tick", self.sim.now + cfg.daemon_tick)

    # --- relaying ----------------------------------------------------------------------------------
    def _view(self, group: str) -> _View:
        v = self.views.get(group)
        now = self.sim.now
        if v is not None and now - v.at < self.world.cfg.view_refresh and v.expires > now:
            return v
        d, cfg = self.world.directory, self.world.cfg
        routers = set(d.live_routers(group))
        routers.add(self.name)
        ours = self.ours.setdefault(group, {})
        for m in d.members_of(group, self.name):
            ours[m] = now
        members: set[str] = set()
        for held, hold in ((ours, cfg.handover), (self.resumed.get(group, {}), cfg.resumed_hold)):
            for m, at in list(held.items()):
                if now - at < hold:
                    members.add(m)
                else:
                    del held[m]
        v = self.views[group] = _View(now, d.earliest_expiry(group), tuple(sorted(members)), tuple(sorted(routers)))
        return v

    def on_message(self, src: str, payload: tuple[Header, float] | Resume) -> None:
        if type(payload) is Resume:
            self._on_resume(src, payload)
            return
        h, sent_at = payload
        view = self._view(h.group)
        relay = self.relays.get(h.group)
        if relay is None:
            relay = self.relays[h.group] = Relay(self.name)
        out = relay.on_data(h, view.members, view.routers)
        if out is None:
            return
        size = len(pack(out.header, self.world.body))
        send, me, item = self.sim.send, self.name, (out.header, sent_at)
        if self.world.cfg.resume:
            history = self.histories.get(h.group)
            if history is None:
                history = self.histories[h.group] = History(max_age=self.world.cfg.history_age)
            history.add(h.origin, h.seq, self.sim.now, (item, size), size)
        for m in out.deliver_to:
            send(me, m, item, size, "mcast deliver")
        for r in out.forward_to:
            send(me, r, item, size, "mcast relay")
        if len(self.answers):                     # after this turn's relays, as daemon/mcast.py
            self._answer()

    def _on_resume(self, member: str, r: Resume) -> None:
        """As daemon/mcast.py: relay to the member from now on, replay what it lacks."""
        if r.follow:
            self.resumed.setdefault(r.group, {})[member] = self.sim.now
            self.views.pop(r.group, None)
        history = self.histories.get(r.group)
        missed = history.replay(r.next, r.since_ms / 1000) if history is not None else []
        self.replayed += len(missed)
        for item, size in missed:
            self.sim.send(self.name, member, item, size, "mcast replay")
        # after the replay, on the same hop (FIFO), even with nothing to replay, once this router
        # has no hole below what it held now (core.PendingAnswers): the member starts on new
        # origins once every router it asked has answered (core.ReplayWait)
        view = self.views.get(r.group)
        registered = r.follow or (view is not None and member in view.members)
        self.answers.ask(member, r, self.relays.get(r.group), history.mark if history is not None else 0,
                         registered, self.sim.now)
        self._answer()

    def _answer(self) -> None:
        """As GroupRouter._answer: the answers whose holes filled or whose hold ran out."""
        for a in self.answers.ready(self.relays, self._delivers_to, self.sim.now):
            if a.replay is not None:              # not relayed to it: replay what filled the holes
                history = self.histories.get(a.group)
                filled = history.added_since(a.mark, a.replay) if history is not None else []
                self.replayed += len(filled)
                for item, size in filled:
                    self.sim.send(self.name, a.member, item, size, "mcast replay")
            self.sim.send(self.name, a.member, Replayed(a.group), len(pack_replayed(a.group)), "mcast replayed")
        due = self.answers.next_due()
        if due is not None:
            self.sim.set_timer(self.name, "answers", due)

    def _delivers_to(self, group: str, member: str) -> bool:
        return member in self._view(group).members

    def on_crash(self) -> None:
        self.world.retired_relays.extend(self.relays.values())
        self.world.retired_replayed += self.replayed
        self.world.retired_at_bound += self.answers.at_bound
        self.answers = PendingAnswers()
        self.local, self.routing, self.relays, self.views = {}, set(), {}, {}
        self.histories, self.resumed, self.ours, self.replayed = {}, {}, {}, 0

    def on_restart(self) -> None:
        self.start(self.sim.now)


@dataclass(frozen=True, slots=True)
class Replayed:
    """A router's answer to a Resume (MCAST_REPLAYED): its replay for it has all been sent."""

    group: str


class MemberNode:
    """A member process: joins through its host's daemon, registers, tends, delivers in order,
    as snipe/multicast/groups.py's Membership does and with the same core decisions
    (`take_run`, `resume_next`, `hold_new`, `forget_gone`, `ReplayWait`, `Reorder`): a sender
    first seen at FIRST_SEQ starts at once; one first seen past it makes the member ask its
    routers for a replay (a replay-only Resume, NO_REPLAY for the senders started on) and hold
    it, like every sender not started on after a Resume, until each router asked has answered
    (or gone quiet for REPLAY_WAIT_S, or REPLAY_BOUND_S passed, or it is gone from the group);
    a seq below where a stream started that still comes is reported late."""

    def __init__(self, world: MulticastWorld, name: str, host: str, group: str) -> None:
        self.world, self.sim, self.name, self.host, self.group = world, world.sim, name, host, group
        self.joined_at: float | None = None
        self.left_at: float | None = None
        self.mine: tuple[str, ...] = ()
        self.first_seen: dict[str, float] = {}    # live router -> when this member first saw it live
        self.reorder: dict[str, Reorder] = {}
        self.wait = ReplayWait()                  # the routers whose answer to a Resume we await
        self.hold_new_until = 0.0                 # senders not started on wait till then
        self.got: dict[str, bytearray] = {}       # origin -> 1 at each seq delivered
        self.last: dict[str, int] = {}
        self.violations = 0                       # a duplicate or an out-of-order delivery
        self.holes = 0                            # messages a reorderer gave up on (a hole reported)
        self.holes_owed = 0                       # ... of them sent at or after the join
        self.late_owed = 0                        # came below the start, sent at or after the join: lost
        self.late_before_join = 0                 # came below the start, sent before the join: not owed
        self.after_leave = 0
        self.hole_replay_at = -1e9

    @property
    def joined(self) -> bool:
        return self.joined_at is not None and self.left_at is None

    def join(self) -> None:
        self.joined_at = self.sim.now
        host = self.world.hosts[self.host]
        if self.sim.is_up(self.host):
            host.join(self.group, self.name)      # the daemon's election; its lease write is under way
        self.sim.call_later(self.world.cfg.catalog_delay, self._register)
        self.sim.set_timer(self.name, "tend", self.sim.now + self.world.cfg.member_tick)

    def leave(self) -> None:
        self.left_at = self.sim.now
        self.world.directory.register(self.group, self.name, None)
        if self.sim.is_up(self.host):
            self.world.hosts[self.host].leave(self.group, self.name)
        self.sim.cancel_timer(self.name, "tend")

    def _register(self) -> None:
        if not self.joined:
            return
        live = self.world.directory.live_routers(self.group)
        chosen = tuple(pick_routers(self.host, self.world.interfaces[self.host], live, shared,
                                    self.world.cfg.member_routers))
        moving = bool(self.first_seen)
        for r in live:
            self.first_seen.setdefault(r, self.sim.now)
        self.mine = chosen
        self.world.directory.register(self.group, self.name, chosen)
        if self.world.cfg.resume:
            # the ones we move to may be new (no history): the oldest routers replay too
            self._resume(chosen, resume_targets(chosen, self.first_seen, live) if moving else ())

    def _resume(self, routers: tuple[str, ...] | list[str], replay_only: tuple[str, ...] | list[str] = (),
                new_only: bool = False) -> None:
        """As Membership._resume: tell `routers` where we stand (they relay to us at once and
        replay what we missed), `replay_only` routers just replay; the senders not started on
        wait till every router asked has answered."""
        assert self.joined_at is not None
        now = self.sim.now
        nxt = resume_next(sorted(self.reorder.items()), new_only)
        self.hold_new_until = self.wait.asked([*routers, *replay_only], now)
        hold_new(self.reorder.values(), self.hold_new_until, now, release=False)
        if not (routers or replay_only):
            return
        since = round(self.joined_at * 1000)
        follow = Resume(self.group, since, nxt)
        only = Resume(self.group, since, nxt, follow=False)
        size = len(pack_resume(follow))
        if new_only:
            self.world.counts["asks for a new sender"] += 1
        for router in routers:
            self.sim.send(self.name, router, follow, size, "mcast resume")
        for router in replay_only:
            self.sim.send(self.name, router, only, size, "mcast resume")

    def on_timer(self, key: str) -> None:
        now = self.sim.now
        live = self.world.directory.live_routers(self.group)
        seen = self.first_seen
        for r in [r for r in seen if r not in live]:
            del seen[r]
        for r in live:
            seen.setdefault(r, now)
        if forget_gone(self.wait, live, now):     # a router gone from the group answers no more
            self.hold_new_until = self.wait.hold_until
            hold_new(self.reorder.values(), self.hold_new_until, now, release=False)    # below: on_timer
        if not (set(self.mine) <= set(live) and len(self.mine) >= min(2, len(live))):
            self.world.counts["re-registrations"] += 1
            self._register()
        else:
            self._replay_holes(now)
        for origin in sorted(self.reorder):
            items, hole = self.reorder[origin].on_timer(now)
            if hole is not None:
                self.holes += hole[1] - hole[0] + 1
                self.holes_owed += self.world.sent_since(origin, hole[0], hole[1], self.joined_at)
            self._deliver(items)
        self.sim.set_timer(self.name, "tend", now + self.world.cfg.member_tick)

    def _replay_holes(self, now: float) -> None:
        """As snipe/multicast/groups.py: a hole open for `hole_replay` asks the routers to replay."""
        cfg = self.world.cfg
        gaps = [r.gap_since for r in self.reorder.values() if r.gap_since is not None]
        if not cfg.resume or not gaps or now - min(gaps) < cfg.hole_replay \
                or now - self.hole_replay_at < cfg.hole_replay_again:
            return
        self.hole_replay_at = now
        self.world.counts["hole replays"] += 1
        self._resume((), self.mine)

    def on_message(self, src: str, payload: tuple[Header, float] | Replayed) -> None:
        if not self.joined:
            if self.left_at is not None and type(payload) is not Replayed:
                self.after_leave += 1
            return
        now = self.sim.now
        if type(payload) is Replayed:             # as Membership._on_replayed
            self.world.counts["replay answers"] += 1
            self.wait.answered(src, now)
            self.hold_new_until = self.wait.hold_until
            self._deliver(hold_new(self.reorder.values(), self.hold_new_until, now))
            return
        h, sent_at = payload
        if self.wait.heard(src, now):             # its replay is coming in: the hold moves
            self.hold_new_until = self.wait.hold_until
            self._deliver(hold_new(self.reorder.values(), self.hold_new_until, now))
        origin, seq = h.origin, h.seq
        got, ask = take_run(self.reorder, origin, seq, 1, lambda: [(origin, seq, sent_at)], now,
                            self.hold_new_until, self.world.cfg.gap_timeout)
        self._deliver(got)
        for first, last in self.reorder[origin].take_late():   # came below where the stream started
            # (one seq: one message came) a message sent before the join is not owed (members get
            # messages from their join onwards): reported by the member, not a loss
            if sent_at < self.joined_at:          # type: ignore[operator]
                self.late_before_join += last - first + 1
            else:
                self.late_owed += last - first + 1
        if ask:                                   # a sender first seen past its first seq: ask, hold
            self._resume((), self.mine if self.mine and self.world.cfg.resume else (), new_only=True)

    def _deliver(self, items: list[tuple[str, int, float]]) -> None:
        if not items:
            return
        now, sample, size = self.sim.now, self.world.latency, self.world.cfg.messages + 2
        for origin, seq, sent_at in items:
            got = self.got.get(origin)
            if got is None:
                got = self.got[origin] = bytearray(size)
            if got[seq] or seq <= self.last.get(origin, 0):
                self.violations += 1
            got[seq] = 1
            self.last[origin] = seq
            if seq % 8 == 0:
                sample.append(now - sent_at)

    def on_crash(self) -> None:
        raise AssertionError("members do not crash in this scenario")

    def on_restart(self) -> None:
        pass


class SenderNode:
    """A process that multicasts to one group without being a member."""

    def __init__(self, world: MulticastWorld, name: str, host: str, group: str) -> None:
        self.world, self.sim, self.name, self.host, self.group = world, world.sim, name, host, group
        self.seq = 0
        self.sent_at: list[float] = [0.0]         # by seq (seq 0 unused)
        self.not_sent = 0                         # mcast found no live router (NotFound)
        self.cache: tuple[float, float, list[str]] | None = None

    def _routers(self) -> list[str]:
        now, c = self.sim.now, self.cache
        if c is not None and now - c[0] < self.world.cfg.sender_cache and c[1] > now:
            return c[2]
        d = self.world.directory
        routers = sorted(d.live_routers(self.group))
        self.cache = (now, d.earliest_expiry(self.group), routers) if routers else None
        return routers

    def send_next(self, left: int) -> None:
        routers = self._routers()
        if not routers:
            self.not_sent += 1
        else:
            self.seq += 1
            now = self.sim.now
            self.sent_at.append(now)
            chosen = targets(routers, self.seq)
            h = Header(self.group, self.name, self.seq, 0, tuple(chosen))
            size = len(pack(h, self.world.body))
            for r in chosen:
                self.sim.send(self.name, r, (h, now), size, "mcast data")
        if left > 1:
            self.sim.call_later(1.0 / self.world.cfg.rate, self.send_next, left - 1)

    def on_message(self, src: str, payload: Any) -> None:
        pass

    def on_timer(self, key: str) -> None:
        pass

    def on_crash(self) -> None:
        pass

    def on_restart(self) -> None:
        pass


class MulticastWorld:
    """Builds the hosts, members and senders, runs the stream with its crash, and reports."""

    def __init__(self, cfg: MulticastConfig, seed: int) -> None:
        self.cfg = cfg
        self.host_of: dict[str, str] = {}
        self.net_of: dict[str, int] = {}
        net = MulticastNetwork(cfg, self.host_of, self.net_of)
        self.sim = Simulator(seed, net)
        net.clock = self.sim
        self.rng_setup = self.sim.stream("multicast-setup")
        self.rng = self.sim.stream("multicast-workload")
        self.body = b"x" * cfg.payload_bytes
        self.interfaces: dict[str, Interfaces] = {}
        self.hosts: dict[str, HostNode] = {}
        self.members: list[MemberNode] = []
        self.senders: list[SenderNode] = []
        self.sender_of: dict[str, SenderNode] = {}
        self.counts: Counter[str] = Counter()
        self.latency: list[float] = []
        self.retired_relays: list[Relay] = []
        self.retired_replayed = 0
        self.retired_at_bound = 0
        self.crashed: list[str] = []
        self.at_crash: dict[str, Any] = {}
        self.directory = Directory(self.sim, cfg.catalog_delay, self.interfaces)

    def build(self) -> None:
        cfg, rng, sim = self.cfg, self.rng_setup, self.sim
        for i in range(cfg.hosts):
            name = f"h{i}"
            net = i % cfg.networks
            self.host_of[name], self.net_of[name] = name, net
            self.interfaces[name] = [{"net": net, "address": f"10.{net}.{i // 250}.{i % 250 + 1}"}]
            node = self.hosts[name] = HostNode(self, name)
            sim.add_node(name, node)
            node.start(rng.random() * cfg.daemon_tick)
        host_names = list(self.hosts)
        groups = [f"urn:snipe:group:g{g}" for g in range(cfg.groups)]
        stream_end = cfg.start_at + cfg.stream_seconds()
        late = set(rng.sample(range(cfg.members), round(cfg.late_join_fraction * cfg.members)))
        leavers = set(rng.sample(sorted(set(range(cfg.members)) - late), round(cfg.leave_fraction * cfg.members)))
        for i in range(cfg.members):
            host, group = rng.choice(host_names), rng.choice(groups)
            m = MemberNode(self, f"m{i}", host, group)
            self.host_of[m.name] = host
            self.members.append(m)
            sim.add_node(m.name, m)
            joins = cfg.start_at + rng.random() * cfg.stream_seconds() * 0.8 if i in late \
                else rng.random() * cfg.join_window
            sim.call_at(joins, m.join)
            if i in leavers:
                sim.call_at(cfg.start_at + rng.random() * cfg.stream_seconds(), m.leave)
        for g, group in enumerate(groups):
            for k in range(cfg.senders_per_group):
                s = SenderNode(self, f"s{g}.{k}", rng.choice(host_names), group)
                self.host_of[s.name] = s.host
                self.senders.append(s)
                self.sender_of[s.name] = s
                sim.add_node(s.name, s)
                sim.call_at(cfg.start_at + rng.random() / cfg.rate, s.send_next, cfg.messages)
        crash_at = cfg.crash_at if cfg.crash_at is not None else cfg.start_at + cfg.stream_seconds() / 2
        sim.call_at(crash_at, self._crash)
        self.end = stream_end + 1.0 / cfg.rate + cfg.drain

    def _crash(self) -> None:
        d = self.directory
        routers_of = {g: list(d.live_routers(g)) for g in sorted(d.routers)}
        routing = sorted({h for rs in routers_of.values() for h in rs})
        self.crashed = sorted(self.rng.sample(routing, round(self.cfg.crash_fraction * len(routing))))
        dead = set(self.crashed)
        both = sum(1 for m in self.members if m.joined and len(m.mine) >= 1 and set(m.mine) <= dead)
        per_group = [sum(1 for h in rs if h in dead) / len(rs) for rs in routers_of.values() if rs]
        self.at_crash = {
            "at_s": round(self.sim.now, 3),
            "routing_hosts": len(routing),
            "crashed_routers": len(self.crashed),
            "routers_per_group": _stats([len(rs) for rs in routers_of.values()]),
            "largest_share_of_a_groups_routers_crashed": round(max(per_group, default=0.0), 3),
            "groups_losing_a_majority_of_routers": sum(1 for x in per_group if x >= 0.5),
            "members_all_of_whose_routers_crashed": both,
        }
        for h in self.crashed:
            self.sim.crash(h)

    def run(self) -> None:
        self.sim.run(until=self.end)

    def sent_since(self, origin: str, first: int, last: int, since: float | None) -> int:
        """How many of `origin`'s seqs first..last were sent at or after `since` (owed to a member
        that joined then)."""
        times = self.sender_of[origin].sent_at
        return sum(1 for q in range(max(first, 1), min(last, len(times) - 1) + 1)
                   if since is not None and times[q] >= since)

    # --- figures -----------------------------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        cfg, st = self.cfg, self.sim.net.stats
        by_group: dict[str, list[SenderNode]] = {}
        for s in self.senders:
            by_group.setdefault(s.group, []).append(s)
        expected = delivered = strict_expected = strict_delivered = 0
        ratios: list[float] = []
        complete = violations = holes = holes_owed = after_leave = late_before_join = late_owed = 0
        missing_owed = 0
        for m in self.members:
            if m.joined_at is None:
                continue
            exp = got = s_exp = s_got = 0
            until = m.left_at - cfg.grace if m.left_at is not None else float("inf")
            for s in by_group.get(m.group, []):
                times = s.sent_at
                lo = bisect.bisect_left(times, m.joined_at + cfg.grace, 1)
                lo_strict = bisect.bisect_left(times, m.joined_at, 1)
                hi = bisect.bisect_left(times, until, 1)
                bm = m.got.get(s.name, b"")
                exp += max(0, hi - lo)
                got += bm[lo:hi].count(1) if hi > lo else 0
                s_exp += max(0, hi - lo_strict)
                s_got += bm[lo_strict:hi].count(1) if hi > lo_strict else 0
            expected += exp
            delivered += got
            strict_expected += s_exp
            strict_delivered += s_got
            if exp:
                ratios.append(got / exp)
                complete += got == exp
            missing_owed += s_got < s_exp
            violations += m.violations
            holes += m.holes
            holes_owed += m.holes_owed
            late_owed += m.late_owed
            late_before_join += m.late_before_join
            after_leave += m.after_leave
        relays = [*self.retired_relays, *(r for h in self.hosts.values() for r in h.relays.values())]
        final_routers = [len(self.directory.live_routers(g)) for g in sorted(by_group)]
        per_router = [len(v) for v in self.directory.by_router.values() if v]
        labels = st.by_label
        lat = sorted(self.latency)
        return {
            "hosts": cfg.hosts,
            "networks": cfg.networks,
            "members": cfg.members,
            "groups": cfg.groups,
            "wanted": cfg.wanted,
            "member_routers": cfg.member_routers,
            "senders": len(self.senders),
            "messages_sent": sum(s.seq for s in self.senders),
            "messages_not_sent_no_router": sum(s.not_sent for s in self.senders),
            "late_joiners": round(cfg.late_join_fraction * cfg.members),
            "leavers": round(cfg.leave_fraction * cfg.members),
            "crash": self.at_crash,
            "delivery_ratio": round(delivered / expected, 6) if expected else None,
            "delivery_ratio_min_member": round(min(ratios), 6) if ratios else None,
            "members_with_every_message": complete,
            "members_counted": len(ratios),
            "delivery_ratio_from_join_without_grace": round(strict_delivered / strict_expected, 6)
            if strict_expected else None,
            "grace_s": cfg.grace,
            "expected_deliveries": expected,
            # The guarantee: every member gets every message sent while it was a member (from its
            # join itself: a router replays what it relayed since the join, so each is owed), once,
            # in per-sender order. Messages sent before the join are not owed.
            "every_live_member_got_every_owed_message": strict_delivered == strict_expected and late_owed == 0
            and holes_owed == 0,
            "owed_deliveries": strict_expected,
            "owed_deliveries_missed": strict_expected - strict_delivered,
            "members_missing_an_owed_message": missing_owed,
            # each owed message delivered exactly once and in order: no duplicate, no out-of-order
            # delivery, and none missed (silently, given up as a hole, or come too late to be
            # delivered in order)
            "exactly_once_in_order": violations == 0 and strict_delivered == strict_expected and late_owed == 0
            and holes_owed == 0,
            "duplicates_or_out_of_order": violations,
            "holes_reported": holes,
            "holes_reported_owed": holes_owed,
            "late_owed_reported_lost": late_owed,
            "late_sent_before_join_reported_not_owed": late_before_join,
            "arrived_after_leave_dropped": after_leave,
            "routers_per_group_at_end": _stats(final_routers),
            "members_per_router_at_end": _stats(per_router),
            "elections": self.counts["elections"],
            "step_downs": self.counts["step-downs"],
            "re_registrations": self.counts["re-registrations"],
            "catalog_writes": self.directory.writes,
            "relayed": sum(r.relayed for r in relays),
            "duplicates_dropped_by_routers": sum(r.duplicates for r in relays),
            "resume": cfg.resume,
            "replayed": self.retired_replayed + sum(h.replayed for h in self.hosts.values()),
            "resume_messages": labels.get("mcast resume", [0, 0])[0],
            "replay_answers": labels.get("mcast replayed", [0, 0])[0],
            "replay_answers_at_the_bound": self.retired_at_bound + sum(h.answers.at_bound for h in self.hosts.values()),
            "asks_for_a_new_sender": self.counts["asks for a new sender"],
            "fifo_hops": cfg.fifo_hops,
            "delivery_latency_s": {"p50": _q(lat, 0.5), "p99": _q(lat, 0.99), "max": _q(lat, 1.0),
                                   "samples": len(lat)},
            "data_messages": labels.get("mcast data", [0, 0])[0],
            "relay_messages": labels.get("mcast relay", [0, 0])[0],
            "deliver_messages": labels.get("mcast deliver", [0, 0])[0],
            "messages": st.sent,
            "bytes": st.bytes_sent,
            "network": st.as_dict(),
            "virtual_s": round(self.sim.now, 3),
            "events": self.sim.events,
            "config": {k: (repr(v) if not isinstance(v, int | float | type(None)) else v)
                       for k, v in asdict(cfg).items()},
        }


def _q(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return round(sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))], 6)


def _stats(values: list[int]) -> dict[str, Any]:
    if not values:
        return {"min": None, "mean": None, "max": None}
    return {"min": min(values), "mean": round(sum(values) / len(values), 2), "max": max(values)}


def run_scenario(cfg: MulticastConfig, seed: int) -> dict[str, Any]:
    """Build, run and report scenario C, with the wall time of each part."""
    return run_world(lambda: MulticastWorld(cfg, seed))


def run_multicast(seed: int, quick: bool, hosts: int | None) -> dict[str, Any]:
    """Scenario C: `hosts` daemons (default 1,000) with ten members each, 10% of the routers crashing."""
    cfg = QUICK if quick else MulticastConfig()
    if hosts is not None:
        cfg = scaled(cfg, hosts)
    return {"simulated": True, **run_scenario(cfg, seed)}


def run_multicast_high_rate(seed: int, quick: bool, hosts: int | None) -> dict[str, Any]:
    """Scenario C at a high rate: one group, 12 routers, 2,000 messages a second (`hosts`: that
    many daemons, five members each)."""
    cfg = HIGH_RATE_QUICK if quick else HIGH_RATE
    if hosts is not None:
        cfg = replace(cfg, hosts=hosts, members=5 * hosts, networks=max(2, min(cfg.networks, hosts // 15 or 1)))
    return {"simulated": True, **run_scenario(cfg, seed)}


__all__ = ["HIGH_RATE", "HIGH_RATE_QUICK", "QUICK", "MulticastConfig", "MulticastWorld", "run_multicast",
           "run_multicast_high_rate", "run_scenario", "scaled"]
