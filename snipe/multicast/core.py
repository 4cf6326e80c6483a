"""Multicast as three small cores with no I/O: who routes, what a router relays, what a member
delivers. The daemon and the messaging endpoint wrap them; the simulator can drive them too.

SNIPE 4.4, as built here:
- Routers are host daemons that elect themselves per group (`should_route`): a host with a
  member becomes a router while the group has fewer than `wanted` live routers, or when no
  router shares a network with it (so a new network gets a router of its own). Hosts that
  elected themselves at once and so left surplus routers sharing a network step down to the
  `keepers`, the same for every router that sees the same list.
- A member registers with up to two routers (`pick_routers`): its own host's first, then those
  on a shared network, best first.
- A sender sends each message to more than half of the routers (`targets`).
- A router relays (`Relay`) to its registered members and to every router not yet named in the
  message's `seen` list, and drops duplicates by (origin, seq): the routers form a full mesh,
  which satisfies "registers with more than half of the others". With a majority of routers
  reached by every send and every member registered with two, losing a minority of routers
  loses no message.
- A member (`Reorder`) delivers each origin's messages once and in sequence order; a message
  missing for longer than `gap_timeout` is reported, never skipped silently.

Wire: a multicast message rides the unicast channel under a reserved tag, its payload being a
4-byte header length, a msgpack header [group, origin, seq, tag, seen], then the body.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from snipe.errors import CodecError

MCAST_DATA = -2        # sender -> router, router -> router
MCAST_DELIVER = -3     # router -> member
DEFAULT_WANTED = 2
MEMBER_ROUTERS = 2
_LEN = struct.Struct(">I")


@dataclass(frozen=True, slots=True)
class Header:
    group: str
    origin: str
    seq: int
    tag: int
    seen: tuple[str, ...]


def pack(h: Header, body: bytes | memoryview) -> bytes:
    head = msgpack.packb([h.group, h.origin, h.seq, h.tag, list(h.seen)], use_bin_type=True)
    return _LEN.pack(len(head)) + head + bytes(body)


def unpack(payload: bytes | memoryview) -> tuple[Header, memoryview]:
    view = memoryview(payload)
    try:
        (n,) = _LEN.unpack_from(view, 0)
        group, origin, seq, tag, seen = msgpack.unpackb(view[4:4 + n], raw=False)
    except Exception:
        raise CodecError("malformed multicast header") from None
    if not (isinstance(group, str) and isinstance(origin, str) and type(seq) is int and type(tag) is int
            and isinstance(seen, list) and all(isinstance(s, str) for s in seen)):
        raise CodecError("multicast header fields have the wrong types")
    return Header(group, origin, seq, tag, tuple(seen)), view[4 + n:]


# --- election --------------------------------------------------------------------------------------
Shared = Callable[[list[dict[str, Any]], list[dict[str, Any]]], list[Any]]


def should_route(me: str, my_interfaces: list[dict[str, Any]], routers: Mapping[str, list[dict[str, Any]]],
                 shared: Shared, wanted: int = DEFAULT_WANTED) -> bool:
    """Should host `me` (which has a member of the group) be one of its routers?

    A host already routing stays unless hosts that elected themselves at the same moment left
    more routers than needed: then those not in `keepers` step down (their networks stay
    covered, by a keeper that shares them)."""
    if me in routers:
        return len(routers) <= wanted or me in keepers(routers, shared, wanted)
    if len(routers) < wanted:
        return True
    return not any(_same_network(my_interfaces, ifs, shared) for ifs in routers.values())


def keepers(routers: Mapping[str, list[dict[str, Any]]], shared: Shared, wanted: int = DEFAULT_WANTED) -> list[str]:
    """The routers that stay when there are surplus ones: the first `wanted` by name, then, in
    name order, each one sharing no network with those already kept. Every router computes the
    same list from the same view, so exactly the surplus steps down."""
    keep: list[str] = []
    for r in sorted(routers):
        if len(keep) < wanted or not any(_same_network(routers[r], routers[k], shared) for k in keep):
            keep.append(r)
    return keep


def _same_network(a: list[dict[str, Any]], b: list[dict[str, Any]], shared: Shared) -> bool:
    """Shared for election: a common subnet or net name, or the same addresses (two daemons on
    one machine, which route selection rightly never pairs)."""
    addrs = {i.get("address") for i in a if isinstance(i, dict)} - {None}
    return bool(shared(a, b)) or bool(addrs & {i.get("address") for i in b if isinstance(i, dict)})


def pick_routers(my_host: str | None, my_interfaces: list[dict[str, Any]],
                 routers: Mapping[str, list[dict[str, Any]]], shared: Shared, n: int = MEMBER_ROUTERS) -> list[str]:
    """The routers a member registers with: its own host's, then those on a shared network."""
    def rank(r: str) -> tuple[int, int, str]:
        if r == my_host:
            return (0, 0, r)
        pairs = shared(my_interfaces, routers[r])
        return (1, 0, r) if pairs else (2, 0, r)
    return sorted(routers, key=rank)[:n]


def targets(routers: Sequence[str], origin_seq: int) -> list[str]:
    """More than half of the routers, rotating with the sequence number to spread the load."""
    ordered = sorted(routers)
    if not ordered:
        return []
    k = len(ordered) // 2 + 1
    start = origin_seq % len(ordered)
    return [ordered[(start + i) % len(ordered)] for i in range(k)]


# --- relay -----------------------------------------------------------------------------------------
@dataclass
class _Seen:
    below: int = 1                       # every seq < below has been seen
    above: set[int] = field(default_factory=set)

    def add(self, seq: int) -> bool:
        """Record seq; False if it was seen before."""
        if seq < self.below or seq in self.above:
            return False
        self.above.add(seq)
        while self.below in self.above:
            self.above.discard(self.below)
            self.below += 1
        if len(self.above) > 100_000:    # bound memory: a long-lost seq is treated as seen
            self.below = min(self.above)
            self.above = {s for s in self.above if s > self.below}
        return True


@dataclass(frozen=True, slots=True)
class Relayed:
    deliver_to: tuple[str, ...]          # member URNs
    forward_to: tuple[str, ...]          # router (host) URNs
    header: Header                       # with `seen` extended by the forwards


class Relay:
    """A router's per-group state. Invariant: each (origin, seq) is relayed at most once."""

    def __init__(self, me: str) -> None:
        self.me = me
        self.seen: dict[tuple[str, str], _Seen] = {}
        self.relayed = 0
        self.duplicates = 0

    def on_data(self, h: Header, members_here: Sequence[str], routers: Sequence[str]) -> Relayed | None:
        s = self.seen.setdefault((h.group, h.origin), _Seen())
        if not s.add(h.seq):
            self.duplicates += 1
            return None
        self.relayed += 1
        forward = tuple(r for r in sorted(routers) if r != self.me and r not in h.seen)
        seen = tuple(sorted({*h.seen, self.me, *forward}))
        return Relayed(tuple(members_here), forward, Header(h.group, h.origin, h.seq, h.tag, seen))


# --- member ------------------------------------------------------------------------------------
class Reorder:
    """One origin's messages to one member: once each, in seq order, starting at the first one
    seen (a member that joins mid-stream gets messages from its join onwards)."""

    def __init__(self, gap_timeout: float = 10.0) -> None:
        self.expected: int | None = None
        self.held: dict[int, Any] = {}
        self.gap_since: float | None = None
        self.gap_timeout = gap_timeout

    def wants(self, seq: int) -> bool:
        """False for a message already delivered or held (a duplicate: skip building its item)."""
        return self.expected is None or (seq >= self.expected and seq not in self.held)

    def on_data(self, seq: int, item: Any, now: float) -> list[Any]:
        if self.expected is None:
            self.expected = seq
        if seq < self.expected or seq in self.held:
            return []
        self.held[seq] = item
        out = []
        while self.expected in self.held:
            out.append(self.held.pop(self.expected))
            self.expected += 1
        self.gap_since = (self.gap_since or now) if self.held else None
        return out

    def on_timer(self, now: float) -> tuple[list[Any], tuple[int, int] | None]:
        """After `gap_timeout` with a hole, give up on the hole: deliver what follows it and
        return the (first, last) seqs that were lost, to be reported."""
        if self.gap_since is None or now - self.gap_since < self.gap_timeout or not self.held:
            return [], None
        assert self.expected is not None
        nxt = min(self.held)
        lost = (self.expected, nxt - 1)
        self.expected = nxt
        self.gap_since = None
        return self.on_data(nxt, self.held.pop(nxt), now), lost
