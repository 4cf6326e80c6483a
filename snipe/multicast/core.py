"""Multicast as three small cores with no I/O: who routes, what a router relays, what a member
delivers. The daemon and the messaging endpoint wrap them; the simulator can drive them too.

SNIPE 4.4, as built here:
- Routers are host daemons that elect themselves per group (`should_route`): a host with a
  member becomes a router while the group has fewer than `wanted` live routers, or when no
  router shares a network with it (so a new network gets a router of its own). Hosts that
  elected themselves at once and so left surplus routers sharing a network step down to the
  `keepers`, the same for every router that sees the same list.
- A member registers with up to two routers (`pick_routers`): its own host's first, then those
  on a shared network, then the others, spread over the routers by a hash of host and router.
  Both deliver to it (the member drops the second copy), so losing one leaves the live stream
  flowing with no hole. (One delivering with the other standing by halves the copies. Tried
  twice: a standby that starts delivering on its own queues the replay behind live messages;
  one the member moves to with a `Resume` replays first, but then any message the member's one
  router lacks, because its peers did not list it yet when they relayed, is lost to the member,
  silently when it is the first the member would see. The second copy covers that. Batches
  keep the copies cheap.) A router that a member stops registering with keeps delivering for a
  hand-over time, so the two overlap; a hole that still opens is filled by a replay the member
  asks for.
- A sender sends each message to more than half of the routers (`targets`).
- A router relays (`Relay`) to the members it delivers to and to every router not yet named in
  the message's `seen` list, and drops duplicates by (origin, seq): the routers form a full
  mesh, which satisfies "registers with more than half of the others". With a majority of
  routers reached by every send, every router has every message, so losing a minority of
  routers loses no message: a member whose router died resumes at another.
- A member (`Reorder`) delivers each origin's messages once and in sequence order; a hole that
  has not moved for `gap_timeout` is reported, never skipped silently, and so is a message below
  where the origin's stream started that comes after it started. It starts an origin at its
  first seq (FIRST_SEQ) at once; first seen past it, only once its routers answered a replay.
- Every router keeps its group's recent messages (`History`, bounded by count, bytes and age).
  A member sends the router that is to deliver to it, at its join or when it moves because a
  router of its own died, a `Resume`: the next sequence number it wants from each origin it
  has seen and its join time for the others. The router delivers to it from then on (before
  the catalog says it registered) and replays what it holds from those points. It answers
  (MCAST_REPLAYED) after the replay, once it has no hole below the highest seq it held when the
  Resume came, for the origins the Resume concerns, or after ANSWER_HOLD_S at most
  (`PendingAnswers`): a router with many peers gets a sender's seq 3 directly before seq 1 as a
  forward, and a member starts on a sender first seen past seq 1 once its routers answered. As that router
  may be new (elected after the failure, without the history), a member that moves also asks
  its standby and the two routers it has known the longest for a replay only
  (`resume_targets`). So a member whose routers all failed at once (two of a hundred is still
  a minority) loses nothing as long as the history spans the time it takes to notice (a
  router lease, plus a turn), and a late joiner gets exactly the messages a router relayed
  after its join.
- A router relays to its members in batches (`Batch`): what it relayed in one turn of its I/O
  loop goes to each member as one payload, built once and shared by all of them, so a router's
  cost per delivery and a member's per message shrink with the load.

Wire: a multicast message rides the unicast channel under a reserved tag. Sender -> router and
router -> router (MCAST_DATA), wire form 2: a fixed big-endian header (form byte = DATA_FORM, seq
and tag as signed 64-bit ints, the byte lengths of the group, the origin and the seen list as
unsigned 16-bit ints), then the group and the origin in UTF-8, the seen list (each router's
UTF-8 length in 16 bits, then its bytes), then the body. The origin is the sender's URN and its
incarnation (`origin_of`), so a restarted sender's stream, numbered from FIRST_SEQ again, is a
new one. The names (group, origin, seen) repeat from message to message, so both ends keep them
encoded and decoded in small bounded caches: a message costs one struct call and one dict look-up
each way, and the decoded names are the same str objects every time (their hashes are kept).
Form 1 (releases before) was a 4-byte length and a msgpack header, so its first byte is 0: a
router or member of this release refuses it with a CodecError naming both forms (sender and
routers run this same code; there is no negotiation, so upgrade a cluster's hosts together).
Router -> member (MCAST_DELIVER, a batch), wire form 2: a form byte (BATCH_FORM), a 4-byte
header length, a msgpack header [group, [[origin, first seq, count, tag or [tags], body size or
[body sizes]], ...]] (runs of consecutive seqs of one origin; one tag or size stands for all
the run's), then the bodies back to back. Form 1 (a 4-byte length first, so first byte 0, and
runs of [origin, first seq, [tags], [sizes]]) is refused as MCAST_DATA's is. A resume is
msgpack [group, since (ms), [[origin, next seq], ...], follow].
"""

from __future__ import annotations

import hashlib
import itertools
import math
import struct
from collections import deque
from collections.abc import Callable, Container, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from snipe.errors import CodecError

MCAST_DATA = -2        # sender -> router, router -> router
MCAST_DELIVER = -3     # router -> member: a batch of one group's messages
MCAST_RESUME = -4      # member -> router: deliver to me from now on, and replay what I missed
MCAST_REPLAYED = -5    # router -> member: the replay for your Resume is all sent (msgpack [group])
REPLAY_WAIT_S = 5.0    # a member waits this long for a router's answer after the last it heard from it
REPLAY_BOUND_S = 30.0  # ... and this long at most after its last Resume
FIRST_SEQ = 1          # the seq of a sender's first message to a group
ORIGIN_SEP = "#"       # origin = "<sender URN>#<incarnation>": a URN has no "#" (snipe/urn.py)
NO_REPLAY = 1 << 62    # a Resume's next seq no real one reaches: replay nothing of that origin
ANSWER_HOLD_S = 2.0    # a router holds its answer to a Resume for holes below what it held this long at most
DEFAULT_WANTED = 2
MEMBER_ROUTERS = 2
BATCH_MESSAGES = 1024        # a batch to members holds at most this many messages
BATCH_BYTES = 256 << 10      # ... and, unless it is one message, at most this many body bytes
BATCH_FORM = 2               # the first byte of an MCAST_DELIVER payload: its wire form
_BATCH_HEAD = struct.Struct(">BI")    # form, header bytes
_INT = {int}


@dataclass(slots=True)          # not frozen: a frozen dataclass costs 3-4x as much to make, once a message
class Header:
    group: str
    origin: str
    seq: int
    tag: int
    seen: tuple[str, ...]


# MCAST_DATA, wire form 2 (see the module docstring)
DATA_FORM = 2
_DATA_HEAD = struct.Struct(">Bqq")          # form, seq, tag
_DATA_LENS = struct.Struct(">HHH")          # group, origin and seen bytes
_DATA_FIXED = struct.Struct(">BqqHHH")      # the two together, as read
_NAME_LEN = struct.Struct(">H")             # a seen router's bytes
_NAMES_AT = _DATA_HEAD.size                 # where the lengths and names start
# Encoded and decoded names, each at most NAMES_CACHE_ENTRIES entries of at most NAMES_CACHE_BYTES
# bytes (anyone may send a router names of their choosing): a full cache starts over.
NAMES_CACHE_ENTRIES = 1024
NAMES_CACHE_BYTES = 2048
_names_encoded: dict[tuple[str, str, tuple[str, ...]], bytes] = {}
_names_decoded: dict[bytes, tuple[str, str, tuple[str, ...]]] = {}


def _encode_names(group: str, origin: str, seen: tuple[str, ...]) -> bytes:
    """The lengths and names part of a header (cached)."""
    try:
        if not (type(group) is str and type(origin) is str and all(type(r) is str for r in seen)):
            raise TypeError
        g, o = group.encode(), origin.encode()
        parts = []
        for r in seen:
            b = r.encode()
            parts.append(_NAME_LEN.pack(len(b)))
            parts.append(b)
        s = b"".join(parts)
        names = _DATA_LENS.pack(len(g), len(o), len(s)) + g + o + s
    except (TypeError, UnicodeEncodeError, struct.error):
        raise CodecError(f"a multicast header cannot carry group {group!r}, origin {origin!r}, seen {seen!r}: "
                         f"strings of valid UTF-8, each at most 65535 bytes, are needed") from None
    if len(names) <= NAMES_CACHE_BYTES:
        if len(_names_encoded) >= NAMES_CACHE_ENTRIES:
            _names_encoded.clear()
        _names_encoded[(group, origin, seen)] = names
    return names


def _decode_names(key: bytes, glen: int, olen: int, slen: int) -> tuple[str, str, tuple[str, ...]]:
    """(group, origin, seen) from the lengths and names part of a header (cached); CodecError if
    malformed."""
    at = _DATA_LENS.size
    end = at + glen + olen + slen
    if len(key) != end:
        raise CodecError(f"multicast header: its names need {end} bytes, {len(key)} came")
    try:
        group = key[at:at + glen].decode()
        origin = key[at + glen:at + glen + olen].decode()
        seen = []
        at += glen + olen
        while at < end:
            (n,) = _NAME_LEN.unpack_from(key, at)
            at += _NAME_LEN.size
            if at + n > end:
                raise CodecError("multicast header: a seen router runs past the seen list")
            seen.append(key[at:at + n].decode())
            at += n
    except (UnicodeDecodeError, struct.error):
        raise CodecError("multicast header: names that are not length-prefixed UTF-8") from None
    names = (group, origin, tuple(seen))
    if len(key) <= NAMES_CACHE_BYTES:
        if len(_names_decoded) >= NAMES_CACHE_ENTRIES:
            _names_decoded.clear()
        _names_decoded[key] = names
    return names


def pack(h: Header, body: bytes | memoryview) -> bytes:
    """An MCAST_DATA payload; CodecError if a field does not fit the header (seq and tag: signed
    64-bit; each name: at most 65535 bytes of UTF-8)."""
    seen = h.seen if type(h.seen) is tuple else tuple(h.seen)
    try:
        names = _names_encoded.get((h.group, h.origin, seen))
    except TypeError:                   # an unhashable field: _encode_names says which
        names = None
    if names is None:
        names = _encode_names(h.group, h.origin, seen)
    try:
        head = _DATA_HEAD.pack(DATA_FORM, h.seq, h.tag)
    except struct.error:
        raise CodecError(f"multicast seq {h.seq!r} and tag {h.tag!r} must be signed 64-bit integers") from None
    return b"".join((head, names, body))


def unpack(payload: bytes | memoryview) -> tuple[Header, bytes]:
    """The header and body of an MCAST_DATA payload; CodecError if malformed."""
    if type(payload) is not bytes:
        payload = bytes(payload)        # a large one may come as ZeroMQ's buffer
    try:
        form, seq, tag, glen, olen, slen = _DATA_FIXED.unpack_from(payload, 0)
    except struct.error:
        raise CodecError(f"multicast data of {len(payload)} bytes is shorter than its fixed header") from None
    if form != DATA_FORM:
        raise CodecError(f"multicast data in wire form {form}; this release reads form {DATA_FORM} only (form 1, "
                         f"first byte 0, is the msgpack header of earlier releases): run one release on "
                         f"every host")
    end = _DATA_FIXED.size + glen + olen + slen
    if len(payload) < end:
        raise CodecError(f"multicast data of {len(payload)} bytes is shorter than its header ({end} bytes)")
    key = payload[_NAMES_AT:end]
    names = _names_decoded.get(key)
    if names is None:
        names = _decode_names(key, glen, olen, slen)
    return Header(names[0], names[1], seq, tag, names[2]), payload[end:]


class Batch:
    """Messages of one group for a router's members, in the order it relayed them: runs of
    consecutive seqs per origin. `pack` makes the one payload every member gets.

    A run is [origin, first seq, count, tags, sizes], its tags one int while they are all the
    same (most streams use one tag) and a list otherwise, and so its body sizes: adding a
    message to a run then appends nothing but its body, and a member reads a run (or skips the
    other router's copy of it) without a look at each message."""

    def __init__(self, group: str) -> None:
        self.group = group
        self.runs: list[list[Any]] = []          # [origin, first seq, count, tag or [tags], size or [sizes]]
        self.bodies: list[bytes] = []
        self.count = 0
        self.size = 0
        self._last: list[Any] | None = None      # runs[-1]

    def full(self) -> bool:
        return self.count >= BATCH_MESSAGES or self.size >= BATCH_BYTES

    def add(self, origin: str, seq: int, tag: int, body: bytes) -> None:
        size = len(body)
        self.bodies.append(body)
        self.count += 1
        self.size += size
        run = self._last
        if run is not None and run[1] + run[2] == seq and run[0] == origin:
            n = run[2]
            run[2] = n + 1
            tags = run[3]
            if type(tags) is list:
                tags.append(tag)
            elif tags != tag:
                run[3] = [tags] * n + [tag]
            sizes = run[4]
            if type(sizes) is list:
                sizes.append(size)
            elif sizes != size:
                run[4] = [sizes] * n + [size]
            return
        self._last = run = [origin, seq, 1, tag, size]
        self.runs.append(run)

    def pack(self) -> bytes:
        head = msgpack.packb([self.group, self.runs], use_bin_type=True)
        return b"".join((_BATCH_HEAD.pack(BATCH_FORM, len(head)), head, *self.bodies))


def batches(group: str, items: Iterable[tuple[str, int, int, bytes]]) -> list[bytes]:
    """(origin, seq, tag, body) items as packed batches of at most BATCH_MESSAGES / BATCH_BYTES."""
    out: list[bytes] = []
    b = Batch(group)
    for origin, seq, tag, body in items:
        if b.count and (b.count >= BATCH_MESSAGES or b.size + len(body) > BATCH_BYTES):
            out.append(b.pack())
            b = Batch(group)
        b.add(origin, seq, tag, body)
    if b.count:
        out.append(b.pack())
    return out


def _bad_run(run: Any) -> CodecError:
    what = f"a list of {len(run)}" if type(run) is list else f"a {type(run).__name__}"    # not the run: any size
    return CodecError(f"multicast batch: each run must be [origin, first seq, count (1 to {BATCH_MESSAGES} in all), "
                      f"tag or [count tags], size or [count sizes]]; one ({what}) is not")


def read_batch(payload: bytes | memoryview) -> tuple[str, bytes, list[tuple[str, int, int, Any, Any, int]]]:
    """A batch's group, its payload (as bytes) and its runs as (origin, first seq, count, tag
    or tags, size or sizes, where the run's bodies start in the payload), all checked
    (CodecError if malformed); no body is cut out yet (`run_bodies`): a member skips the other
    router's copy of a run from its header alone."""
    if not isinstance(payload, bytes):
        payload = bytes(payload)        # a large one may come as ZeroMQ's buffer: bodies are bytes
    try:
        form, head_len = _BATCH_HEAD.unpack_from(payload, 0)
    except struct.error:
        raise CodecError(f"a multicast batch of {len(payload)} bytes is shorter than its fixed header") from None
    if form != BATCH_FORM:
        raise CodecError(f"multicast batch in wire form {form}; this release reads form {BATCH_FORM} only (form 1, "
                         f"first byte 0, is the batch of earlier releases): run one release on every host")
    at = _BATCH_HEAD.size
    try:
        group, runs = msgpack.unpackb(payload[at:at + head_len], raw=False)
    except Exception:
        raise CodecError("malformed multicast batch header") from None
    if not isinstance(group, str) or not isinstance(runs, list):
        raise CodecError("multicast batch: the header must be [group, runs]")
    at += head_len
    count = 0
    out = []
    for run in runs:
        if type(run) is not list or len(run) != 5:
            raise _bad_run(run)
        origin, first, n, tags, sizes = run
        if not (type(origin) is str and type(first) is int and type(n) is int and 1 <= n <= BATCH_MESSAGES - count):
            raise _bad_run(run)
        count += n
        # set(map(type, ...)) checks a long list's items far faster than a generator would
        if type(tags) is not int and not (type(tags) is list and len(tags) == n and set(map(type, tags)) == _INT):
            raise _bad_run(run)
        out.append((origin, first, n, tags, sizes, at))
        if type(sizes) is int and sizes >= 0:
            at += sizes * n
        elif type(sizes) is list and len(sizes) == n and set(map(type, sizes)) == _INT and min(sizes) >= 0:
            at += sum(sizes)
        else:
            raise _bad_run(run)
    if at != len(payload):
        raise CodecError(f"multicast batch: the sizes add up to {at} bytes, the payload has {len(payload)}")
    return group, payload, out


def run_tags(n: int, tags: int | list[int]) -> list[int]:
    """The `n` tags of a run read_batch checked."""
    return [tags] * n if type(tags) is int else tags


def run_bodies(payload: bytes, at: int, n: int, sizes: int | list[int]) -> list[bytes]:
    """The `n` bodies of a run read_batch checked, from `at` on."""
    if type(sizes) is int:
        if not sizes:
            return [b""] * n
        return [payload[i:i + sizes] for i in range(at, at + n * sizes, sizes)]
    bodies = []
    for k in sizes:
        bodies.append(payload[at:at + k])
        at += k
    return bodies


def unpack_batch(payload: bytes | memoryview) -> tuple[str, list[tuple[str, int, list[int], list[bytes]]]]:
    """(group, [(origin, first seq, tags, bodies), ...]) of a batch; CodecError if malformed."""
    group, payload, runs = read_batch(payload)
    return group, [(origin, first, run_tags(n, tags), run_bodies(payload, at, n, sizes))
                   for origin, first, n, tags, sizes, at in runs]


@dataclass(frozen=True, slots=True)
class Resume:
    """A member's request to a router it (re-)registered with."""

    group: str
    since_ms: int                        # the member's join: origins not in `next` replay from here
    next: dict[str, int]                 # origin -> the first seq the member still wants
    follow: bool = True                  # False: only replay (a router the member did not register with)


def pack_resume(r: Resume) -> bytes:
    return msgpack.packb([r.group, r.since_ms, [[o, q] for o, q in sorted(r.next.items())], r.follow],
                         use_bin_type=True)


def unpack_resume(payload: bytes | memoryview) -> Resume:
    try:
        group, since, nxt, follow = msgpack.unpackb(payload, raw=False)
        table = {o: q for o, q in nxt}
    except Exception:
        raise CodecError("malformed multicast resume") from None
    if not (isinstance(group, str) and type(since) is int and type(follow) is bool
            and all(isinstance(o, str) and type(q) is int for o, q in table.items())):
        raise CodecError("multicast resume fields have the wrong types")
    return Resume(group, since, table, follow)


def pack_replayed(group: str) -> bytes:
    return msgpack.packb([group], use_bin_type=True)


def unpack_replayed(payload: bytes | memoryview) -> str:
    try:
        (group,) = msgpack.unpackb(payload, raw=False)
    except Exception:
        raise CodecError("malformed multicast replay answer") from None
    if not isinstance(group, str):
        raise CodecError("multicast replay answer: the group must be a string")
    return group


class ReplayWait:
    """A member's wait, per group, for the routers it sent a `Resume` to. Each router answers
    (MCAST_REPLAYED) after its replay, on the same channel, so an answer means that router's
    replay has arrived. Until every router asked has answered, an origin the member has not
    started on must not start (`hold_until`): a router that already lists the member (the catalog
    said so before the Resume came) sends it live messages ahead of the replay, and starting at
    the first of those drops the replay of the earlier ones as duplicates, a loss nobody reports.
    A fixed hold (0.5 s) lost thousands that way when a member was slow to read a long replay.

    A router that never answers (dead) is waited on for `cap` after the last thing heard from it
    (its deadline moves with each batch or answer it sends: a long replay read slowly is progress,
    not death), and the whole wait for `bound` at most after the last Resume; a router the member
    finds gone from the group is dropped from the wait (`forget`)."""

    def __init__(self, cap: float = REPLAY_WAIT_S, bound: float = REPLAY_BOUND_S) -> None:
        self.cap = cap
        self.bound = bound
        # Per router, ever: Resumes sent and answers received. A router answers each Resume once,
        # in order, on one channel, so its answers reach `sent` exactly when the answer to the
        # last Resume came: an answer to an earlier Resume that comes after its round ran out
        # cannot end a later round (no wire field needed).
        self.sent: dict[str, int] = {}
        self.got: dict[str, int] = {}
        self.waiting: dict[str, float] = {}     # routers of this round whose answers fall short -> deadline
        self.until = 0.0                        # the round's overall bound
        self.hold_until = 0.0

    def _settle(self, now: float) -> bool:
        """Recompute the hold; True if the round is over by now."""
        if not self.waiting:
            self.hold_until = now
            return True
        self.hold_until = min(self.until, max(self.waiting.values()))
        if self.hold_until <= now:
            self.hold_until = now
            return True
        return False

    def asked(self, routers: Iterable[str], now: float) -> float:
        """Resumes went to `routers`: hold until each answers (or goes quiet for `cap`). Returns the hold."""
        if now >= self.hold_until:
            self.waiting = {}                    # the last wait is over: what it still owed is not awaited
        routers = list(routers)
        for r in routers:
            self.sent[r] = self.sent.get(r, 0) + 1
            self.waiting[r] = now + self.cap
        if routers:
            self.until = now + self.bound
            self._settle(now)
        return self.hold_until

    def heard(self, router: str, now: float) -> bool:
        """A batch came from `router`: while the round waits on it, its deadline moves. True if
        the hold changed."""
        if router not in self.waiting or now >= self.hold_until:
            return False
        before = self.hold_until
        self.waiting[router] = now + self.cap
        self._settle(now)
        return self.hold_until != before

    def answered(self, router: str, now: float) -> bool:
        """`router` answered; True if that was the last answer owed (the hold ends now)."""
        got, sent = self.got.get(router, 0), self.sent.get(router, 0)
        if got >= sent:
            return False                         # answers no Resume of ours
        self.got[router] = got = got + 1
        if router not in self.waiting or now >= self.hold_until:
            return False                         # the round is over, or does not wait on it
        if got < sent:
            self.waiting[router] = now + self.cap    # an earlier Resume's answer: progress, not the end
            self._settle(now)
            return False
        del self.waiting[router]
        return self._settle(now)

    def forget(self, router: str, now: float) -> bool:
        """`router` is gone (no longer a live router of the group): wait no more for it, and
        forget its counts (one that comes back answers only the Resumes it gets from then on).
        True if the round ended with it."""
        self.sent.pop(router, None)
        self.got.pop(router, None)
        if router not in self.waiting or now >= self.hold_until:
            self.waiting.pop(router, None)
            return False
        del self.waiting[router]
        return self._settle(now)


def resume_targets(chosen: Sequence[str], first_seen: Mapping[str, float], live: Iterable[str],
                   n: int = 2) -> list[str]:
    """Routers a member moving to `chosen` (because a router of its own went away) also asks for a
    replay only: the `n` live ones it has seen live the longest (`first_seen`: router -> when the
    member first saw it live). The routers it picks may all be new, elected after the failure
    with no history of what it missed, or already dead with a lease still running; every router
    that lived through the failure had every message."""
    picked = set(chosen)
    old = sorted((first_seen[r], r) for r in live if r not in picked and r in first_seen)
    return [r for _, r in old[:n]]


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
    """The routers a member registers with: its own host's, then those on a shared network,
    then the others. Within a tier the order is a hash of (host, router) (rendezvous hashing):
    the members of one host agree, and different hosts spread over the routers instead of all
    taking the same name-first one as their second."""
    def rank(r: str) -> tuple[int, bytes, str]:
        if r == my_host:
            return (0, b"", r)
        tier = 1 if shared(my_interfaces, routers[r]) else 2
        return (tier, hashlib.blake2b(f"{my_host}|{r}".encode(), digest_size=8).digest(), r)
    return sorted(routers, key=rank)[:n]




def targets(routers: Sequence[str], origin_seq: int) -> list[str]:
    """More than half of the routers, rotating with the sequence number to spread the load."""
    ordered = sorted(routers)
    if not ordered:
        return []
    k = len(ordered) // 2 + 1
    start = origin_seq % len(ordered)
    return [ordered[(start + i) % len(ordered)] for i in range(k)]


def origin_of(urn: str, incarnation: int) -> str:
    """The origin a sender's messages carry: its URN and this incarnation of it. A sender that is
    restarted (from the beginning or from a checkpoint) numbers its messages from FIRST_SEQ again
    as a new stream; under its bare URN, the routers, which drop what they relayed before by
    (origin, seq), would take them for copies of its earlier incarnation's, and lose them."""
    return f"{urn}{ORIGIN_SEP}{incarnation:x}"


def origin_urn(origin: str) -> str:
    """The sender's URN in an origin (what a member's application sees as the message's source)."""
    return origin.split(ORIGIN_SEP, 1)[0]


# --- relay -----------------------------------------------------------------------------------------
@dataclass(slots=True)
class _Seen:
    below: int = 1                       # every seq < below has been seen
    above: set[int] = field(default_factory=set)

    def add(self, seq: int) -> bool:
        """Record seq; False if it was seen before."""
        if seq == self.below and not self.above:     # the next one, nothing out of order: the usual case
            self.below = seq + 1
            return True
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


@dataclass(slots=True)
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
        # The forwards for each seen list, for the routers list they were worked out against (a
        # tuple, the same object from one message to the next): a message then costs a look-up.
        self._hops_for: tuple[str, ...] | None = None
        self._hops: dict[tuple[str, ...], tuple[tuple[str, ...], tuple[str, ...] | None]] = {}

    def on_data(self, h: Header, members_here: Sequence[str], routers: Sequence[str]) -> Relayed | None:
        """`routers`: the live ones, sorted (the forwards go out in that order)."""
        s = self.seen.get((h.group, h.origin))
        if s is None:
            s = self.seen[(h.group, h.origin)] = _Seen()
        seq = h.seq
        if seq == s.below and not s.above:       # the next one, nothing out of order: the usual case
            s.below = seq + 1
        elif not s.add(seq):
            self.duplicates += 1
            return None
        self.relayed += 1
        seen = h.seen
        if type(routers) is tuple and type(seen) is tuple:
            if routers is not self._hops_for:
                self._hops_for, self._hops = routers, {}
            hop = self._hops.get(seen)
            if hop is None:
                if len(self._hops) >= 64:        # seen lists are few (rotations of the senders' targets)
                    self._hops.clear()
                hop = self._hops[seen] = self._hop(seen, routers)
        else:
            hop = self._hop(seen, routers)
        forward, seen_now = hop
        if seen_now is not None:
            h = Header(h.group, h.origin, seq, h.tag, seen_now)
        return Relayed(members_here if type(members_here) is tuple else tuple(members_here), forward, h)

    def _hop(self, seen: Sequence[str], routers: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...] | None]:
        """The routers a message that `seen` names must be forwarded to, and the seen list the
        forwards carry (None: `seen` as it is, naming this router and every one)."""
        forward = tuple(r for r in routers if r != self.me and r not in seen)
        if forward or self.me not in seen:
            return forward, tuple(sorted({*seen, self.me, *forward}))
        return forward, None


class History:
    """A router's recent messages of one group, oldest first, for `Resume`: at most
    `max_messages` and `max_bytes` (each item counted `item_overhead` bytes more than its size:
    what keeping it costs), none older than `max_age` (in the caller's clock) when one is added."""

    def __init__(self, max_messages: int = 100_000, max_bytes: int = 64 << 20, max_age: float = 120.0,
                 item_overhead: int = 0) -> None:
        self.max_messages, self.max_bytes, self.max_age = max_messages, max_bytes, max_age
        self.item_overhead = item_overhead
        # origin, seq, at, item, size (without the overhead: a small size is a shared int, not a new one)
        self.items: deque[tuple[str, int, float, Any, int]] = deque()
        self.bytes = 0                           # the sizes with the overhead
        self.dropped = 0

    def add(self, origin: str, seq: int, at: float, item: Any, size: int) -> None:
        items = self.items
        items.append((origin, seq, at, item, size))
        self.bytes += size + self.item_overhead
        if len(items) > self.max_messages or self.bytes > self.max_bytes or at - items[0][2] > self.max_age:
            while items and (len(items) > self.max_messages or self.bytes > self.max_bytes
                             or at - items[0][2] > self.max_age):
                self.bytes -= items.popleft()[4] + self.item_overhead
                self.dropped += 1

    def trim(self) -> None:
        """Shed the oldest items until within `max_bytes` (after it was lowered)."""
        items = self.items
        while items and self.bytes > self.max_bytes:
            self.bytes -= items.popleft()[4] + self.item_overhead
            self.dropped += 1

    @property
    def mark(self) -> int:
        """How many items were ever added: `added_since` takes what came after this point."""
        return self.dropped + len(self.items)

    def added_since(self, mark: int, upto: Mapping[str, int]) -> list[Any]:
        """Items added after `mark` of the origins in `upto`, at or below their seq there, in the
        order they came (what filled a router's holes since a member asked)."""
        out = []
        for origin, seq, _, item, _ in itertools.islice(self.items, max(0, mark - self.dropped), None):
            top = upto.get(origin)
            if top is not None and seq <= top:
                out.append(item)
        return out

    def replay(self, nxt: Mapping[str, int], since: float) -> list[Any]:
        """What a member resuming from `nxt` (origin -> first seq wanted; origins it has not
        seen: whatever came at or after `since`) lacks, in the order it came."""
        out = []
        for origin, seq, at, item, _ in self.items:
            want = nxt.get(origin)
            if (seq >= want) if want is not None else (at >= since):
                out.append(item)
        return out


@dataclass(slots=True)
class _Ask:
    member: str
    group: str
    due: float                   # answered by then whatever the holes
    upto: dict[str, int]         # origin -> the highest seq held at the ask, with a hole below it
    mark: int                    # the group's History.mark at the ask
    registered: bool             # the member was delivered to at the ask


@dataclass(frozen=True, slots=True)
class Answer:
    """An answer (MCAST_REPLAYED) a router may send now. `replay`: what filled its holes since
    the ask must first be replayed to the member (History.added_since(mark, replay)), as it was
    not relayed to it; None: it was."""

    member: str
    group: str
    replay: dict[str, int] | None = None
    mark: int = 0


class PendingAnswers:
    """A router's answers to `Resume`s, held back while it has a hole below the highest seq it
    held when the Resume came, for the origins the Resume concerns (every origin of the group it
    has seen, except those marked NO_REPLAY), or `hold` at most (a router elected after a stream
    began, whose holes never fill; a lost message).

    Why: a member asks its routers when it first sees a sender past its first seq, and starts on
    that sender once they answered. A router with many peers gets a sender's seq 3 directly
    before seq 1 comes as another router's forward; answering at once says nothing of seq 1,
    and the member started at seq 3 (seq 1 came late: an owed loss, reported).

    The caller feeds the Resumes (`ask`, after replaying) and, each turn after that turn's relays
    went out, `ready`: the answers (each member's in the order asked) to send now, after
    replaying what filled the holes to a member not delivered to (`Answer.replay`)."""

    def __init__(self, hold: float = ANSWER_HOLD_S) -> None:
        self.hold = hold
        self.asks: list[_Ask] = []
        self.at_bound = 0                        # answers sent at the bound with a hole still open

    def __len__(self) -> int:
        return len(self.asks)

    def ask(self, member: str, r: Resume, relay: Relay | None, mark: int, registered: bool,
            now: float) -> None:
        """`member` sent `r` (its replay went out): its answer waits for the holes `relay` has now."""
        upto: dict[str, int] = {}
        if relay is not None:
            for (group, origin), s in relay.seen.items():
                if group == r.group and s.above and r.next.get(origin) != NO_REPLAY:
                    upto[origin] = max(s.above)
        self.asks.append(_Ask(member, r.group, now + self.hold, upto, mark, registered))

    def next_due(self) -> float | None:
        return min((a.due for a in self.asks), default=None)

    def ready(self, relays: Mapping[str, Relay], registered: Callable[[str, str], bool],
              now: float) -> list[Answer]:
        """The answers to send now, in the order asked per member and group. `registered(group,
        member)`: the router delivers that group's messages to the member now."""
        if not self.asks:
            return []
        out: list[Answer] = []
        keep: list[_Ask] = []
        blocked: set[tuple[str, str]] = set()
        for a in self.asks:
            key = (a.member, a.group)
            if key in blocked:
                keep.append(a)
                continue
            filled = self._filled(a, relays.get(a.group))
            if filled or now >= a.due:
                self.at_bound += not filled
                delivered = not a.upto or (a.registered and registered(a.group, a.member))
                out.append(Answer(a.member, a.group, None if delivered else a.upto, a.mark))
            else:
                blocked.add(key)                 # a later answer of that member waits behind this one
                keep.append(a)
        self.asks = keep
        return out

    @staticmethod
    def _filled(a: _Ask, relay: Relay | None) -> bool:
        if not a.upto:
            return True
        if relay is None:
            return False
        for origin, top in a.upto.items():
            s = relay.seen.get((a.group, origin))
            if s is None or s.below <= top:
                return False
        return True


# --- member ------------------------------------------------------------------------------------
class Reorder:
    """One origin's messages to one member: once each, in seq order, starting at the first one
    seen (a member that joins mid-stream gets messages from its join onwards). A hole that has
    not moved for `gap_timeout` is given up (and reported by the caller).

    Until `hold_until` (the member just asked its routers to relay to it and to replay what came
    since its join) nothing is delivered and the start is the lowest seq seen by then: a live
    message from one router can come before another router's replay of the ones before it, and
    starting at the live one would drop the replay as duplicates, a gap nobody reports. Seeing
    `first_seq` (the first seq any origin sends) ends the hold at once: nothing comes before it.

    Once started, a message below the start that arrives is one this member was owed (routers
    send a member only what they relayed after its join) and can no longer deliver in order: it
    is reported (`take_late`), once, never dropped as a duplicate."""

    def __init__(self, gap_timeout: float = 10.0, hold_until: float = 0.0, first_seq: int | None = None) -> None:
        self.expected: int | None = None
        self.start: int | None = None           # the seq the stream started at (None: no lower bound)
        self.held: dict[int, Any] = {}
        self.gap_since: float | None = None
        self.gap_timeout = gap_timeout
        self.hold_until = hold_until
        self.first_seq = first_seq
        self.late: set[int] = set()             # seqs below the start that came (each reported once)
        self._late_new: list[int] = []

    def wants(self, seq: int) -> bool:
        """False for a message already delivered, held or reported late (a duplicate: skip
        building its item)."""
        if self.expected is None:
            return seq not in self.held
        if self.start is not None and seq < self.start:
            return seq not in self.late
        return seq >= self.expected and seq not in self.held

    def skips(self, first: int, n: int) -> bool:
        """True if the run of `n` seqs from `first` is all delivered already (a replay of what we have)."""
        return self.expected is not None and (self.start is None or self.start <= first) \
            and first + n <= self.expected

    def take_late(self) -> list[tuple[int, int]]:
        """The (first, last) runs of seqs below the start that came since the last call: lost to
        this member, to be reported."""
        if not self._late_new:
            return []
        seqs, self._late_new = sorted(self._late_new), []
        runs = [(seqs[0], seqs[0])]
        for q in seqs[1:]:
            runs[-1:] = [(runs[-1][0], q)] if q == runs[-1][1] + 1 else [runs[-1], (q, q)]
        return runs

    def _begin(self, seq: int) -> None:
        self.expected = self.start = seq

    def _start(self, now: float) -> bool:
        """(No start yet.) Start at the lowest seq held, once the hold is over (or `first_seq` is
        held); False while it lasts."""
        low = min(self.held) if self.held else None
        if now < self.hold_until and (low is None or low != self.first_seq):
            return False
        if low is not None:
            self._begin(low)
        return True

    def on_run(self, first: int, items: list[Any], now: float) -> list[Any]:
        """`items` with seqs first, first+1, ...: what can be delivered now, in order."""
        if self.expected is None and not self.held and (now >= self.hold_until or first == self.first_seq):
            self._begin(first)
            self.expected = first + len(items)          # the usual case: the next ones, nothing held
            return items
        if self.expected is not None and first == self.expected and not self.held:
            self.expected = first + len(items)
            return items
        out: list[Any] = []
        for i, item in enumerate(items):
            out.extend(self.on_data(first + i, item, now))
        return out

    def on_data(self, seq: int, item: Any, now: float) -> list[Any]:
        if self.expected is None:
            if not self._start(now) and seq != self.first_seq:
                self.held.setdefault(seq, item)
                return []
            if self.expected is None or seq < self.expected:
                self._begin(seq)
        assert self.expected is not None
        if self.start is not None and seq < self.start:      # no start (None): no lower bound
            if seq not in self.late:
                self.late.add(seq)
                self._late_new.append(seq)
            return []
        if seq < self.expected or seq in self.held:
            return self._drain(now) if self.expected in self.held else []
        self.held[seq] = item
        return self._drain(now)

    def _drain(self, now: float) -> list[Any]:
        out = []
        assert self.expected is not None
        while self.expected in self.held:
            out.append(self.held.pop(self.expected))
            self.expected += 1
        # A hole is given up only after gap_timeout without progress: a replay that fills it
        # bit by bit while the live stream goes on (a member catching up at a new router) is not lost.
        self.gap_since = None if not self.held else now if out or self.gap_since is None else self.gap_since
        return out

    def on_timer(self, now: float) -> tuple[list[Any], tuple[int, int] | None]:
        """After the hold, start and deliver what is held; after `gap_timeout` with a hole, give up
        on the hole: deliver what follows it and return the (first, last) seqs that were lost, to
        be reported."""
        if self.expected is None:
            return (self._drain(now) if self.held and self._start(now) else []), None
        if self.gap_since is None or now - self.gap_since < self.gap_timeout or not self.held:
            return [], None
        assert self.expected is not None
        nxt = min(self.held)
        lost = (self.expected, nxt - 1)
        self.expected = nxt
        self.gap_since = None
        return self.on_data(nxt, self.held.pop(nxt), now), lost


# --- a member's decisions, shared by snipe/multicast/groups.py and the simulator ---------------------
def resume_next(streams: Iterable[tuple[str, Reorder]], new_only: bool = False) -> dict[str, int]:
    """A Resume's next seqs from a member's (origin, Reorder) pairs: each started origin's
    expected seq, or NO_REPLAY if `new_only` (the ask for senders not started on: a router, old
    or new, replays nothing of the started ones). Origins not started on are left out: the
    router replays them from the member's join."""
    return {origin: NO_REPLAY if new_only else r.expected for origin, r in streams if r.expected is not None}


def hold_new(streams: Iterable[Reorder], hold: float, now: float, release: bool = True) -> list[Any]:
    """The origins not started on wait till `hold` (a replay wait's end as it stands now);
    returns what those whose hold is over deliver now (if `release`; else a later `on_timer`)."""
    ready: list[Any] = []
    for r in streams:
        if r.expected is None:
            r.hold_until = hold
            if release and hold <= now:
                ready.extend(r.on_timer(now)[0])
    return ready


def forget_gone(wait: ReplayWait, live: Container[str], now: float) -> bool:
    """The routers `wait` counts that are no longer live: wait no more for them and forget their
    counts. True if any was dropped (the caller moves the origins' hold; released at its tick)."""
    gone = [r for r in wait.sent if r not in live]
    for r in gone:
        wait.forget(r, now)
    return bool(gone)


def take_run(streams: MutableMapping[Any, Reorder], key: Any, first: int, n: int, items: Callable[[], list[Any]],
             now: float, hold_new_until: float, gap_timeout: float = 10.0) -> tuple[list[Any], bool]:
    """A run of `n` seqs from `first` of one origin (`key` in `streams`) came to a member: what
    it delivers now, in order, and whether the member must ask its routers for a replay (a
    replay-only Resume, `resume_next(new_only=True)`, then `ReplayWait.asked` and `hold_new`).

    A sender first seen at FIRST_SEQ starts at once. One first seen past it may have an earlier
    message still on its way (a router that got the first one only as another's forward relays
    the second first): it is held (till the ask's wait sets its end) and the routers asked, even
    while a wait is under way (answers to Resumes a router got before it had that sender's first
    message say nothing about it). `items()` builds the run's items, skipped for a run already
    delivered. Seqs that came below the stream's start are left in the Reorder's `take_late`."""
    r = streams.get(key)
    ask = False
    if r is None:
        hold = hold_new_until
        if first != FIRST_SEQ:
            ask = True
            hold = math.inf                      # until the ask's ReplayWait sets the end
        r = streams[key] = Reorder(gap_timeout, hold_until=hold, first_seq=FIRST_SEQ)
    elif r.skips(first, n):
        return [], False                         # a replay of what we have: skip building it
    return r.on_run(first, items(), now), ask
