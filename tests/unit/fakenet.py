"""A seeded fake network and a manual clock for Replicator cores (tests only).

The network carries the `Send` effects of several `Replicator`s to each other, through the real
wire codec, and fires their `StartTimer`s when the manual clock passes them. Faults, all drawn
from one seeded `random.Random`: drop and duplicate (per message, at send time), reorder (deliver
a random in-flight message instead of the oldest) and partitions (a cut link drops what crosses
it at delivery time). Every loop is bounded: `run` fails the test instead of spinning forever.

Clocks: replicas take milliseconds (`now_ms`), replicator timers take seconds (`now_ms / 1000`).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from rcds.replica import Accepted, IngestResult, Replica
from rcds.replication import Replicator
from rcds.storage import MemoryStorage
from snipe import wire
from snipe.assertion import Assertion
from snipe.effects import Effect, Send, StartTimer

T0_MS = 1_700_000_000_000


@dataclass
class Message:
    src: str
    dst: str
    parts: list[bytes]


@dataclass
class FakeNet:
    replicators: dict[str, Replicator]
    seed: int = 0
    now_ms: int = T0_MS
    drop: float = 0.0
    duplicate: float = 0.0
    reorder: bool = False
    in_flight: list[Message] = field(default_factory=list)
    timers: dict[tuple[str, str], float] = field(default_factory=dict)
    cut: set[frozenset[str]] = field(default_factory=set)
    log: list[tuple[str, str, str]] = field(default_factory=list)    # (src, dst, kind) delivered
    dropped: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    @classmethod
    def of_replicas(cls, names: Sequence[str], admin_key: bytes, *, interval: float = 1.0, max_leaves: int = 512,
                    gc_grace_ms: int | None = None, **kw: object) -> FakeNet:
        """One MemoryStorage replica per name, every one a peer of every other, timers armed."""
        reps = {}
        for name in names:
            storage = MemoryStorage()
            extra = {} if gc_grace_ms is None else {"gc_grace_ms": gc_grace_ms}
            replica = Replica(storage, admin_key, **extra)
            reps[name] = Replicator(name, replica, storage, names, interval=interval, max_leaves=max_leaves)
        net = cls(reps, **kw)  # type: ignore[arg-type]
        for name, r in reps.items():
            net.apply(name, r.start(net.now_ms / 1000))
        return net

    # --- what the shells would do --------------------------------------------------------------
    def apply(self, src: str, effects: Iterable[Effect]) -> None:
        for e in effects:
            match e:
                case Send():
                    if self.rng.random() < self.drop:
                        self.dropped += 1
                        continue
                    copies = 2 if self.rng.random() < self.duplicate else 1
                    parts = wire.encode(e.envelope, e.frames)
                    for _ in range(copies):
                        self.in_flight.append(Message(src, e.to, list(parts)))
                case StartTimer():
                    self.timers[(src, e.key)] = e.at
                case _:
                    raise AssertionError(f"unknown effect {e!r}")

    def write(self, node: str, records: Sequence[Assertion]) -> list[IngestResult]:
        """A client write at `node`: ingest, queue the accepted for push, flush."""
        r = self.replicators[node]
        results = r.replica.ingest(list(records), self.now_ms)
        r.on_local_writes([x for x in results if isinstance(x, Accepted)])
        self.apply(node, r.flush())
        return results

    # --- faults ------------------------------------------------------------------------------
    def partition(self, *groups: Iterable[str]) -> None:
        """Cut every link between different groups (nodes in no group keep their links)."""
        sets = [set(g) for g in groups]
        for i, a in enumerate(sets):
            for b in sets[i + 1:]:
                self.cut.update(frozenset((x, y)) for x in a for y in b)

    def heal(self) -> None:
        self.cut.clear()

    # --- delivery and time ---------------------------------------------------------------------
    def step(self) -> bool:
        """Deliver one in-flight message; False when none is left."""
        if not self.in_flight:
            return False
        m = self.in_flight.pop(self.rng.randrange(len(self.in_flight)) if self.reorder else 0)
        if frozenset((m.src, m.dst)) in self.cut:
            self.dropped += 1
            return True
        env, frames = wire.decode(m.parts)
        self.log.append((m.src, m.dst, env.kind))
        self.apply(m.dst, self.replicators[m.dst].on_message(env, frames, self.now_ms))
        return True

    def run(self, max_steps: int = 100_000) -> int:
        """Deliver until nothing is in flight; fail if that takes more than `max_steps`."""
        for n in range(max_steps + 1):
            if not self.step():
                return n
        raise AssertionError(f"the network did not go quiet within {max_steps} deliveries")

    def advance(self, ms: int, *, deliver: bool = True) -> None:
        """Move the clock on, let every replica fire its storage timers, then fire due replicator
        timers (earliest first, ties by node name) and, unless told not to, deliver everything."""
        self.now_ms += ms
        for r in self.replicators.values():
            while r.replica.tick(self.now_ms) >= 1000:
                pass
        now_s = self.now_ms / 1000
        for (node, key), at in sorted(self.timers.items(), key=lambda kv: (kv[1], kv[0])):
            if at <= now_s + 1e-9:
                del self.timers[(node, key)]
                self.apply(node, self.replicators[node].on_timer(key, now_s))
        if deliver:
            self.run()

    def rounds(self, n: int, interval_ms: int = 1000) -> None:
        """`n` anti-entropy periods: every replica starts one round per period."""
        for _ in range(n):
            self.advance(interval_ms)

    # --- observations ------------------------------------------------------------------------
    def records(self, node: str) -> list[Assertion]:
        return list(self.replicators[node].storage.scan_prefix(""))

    def digests(self, node: str) -> list[bytes]:
        return self.replicators[node].storage.top_digests()

    def converged(self) -> bool:
        tops = [self.digests(n) for n in self.replicators]
        return all(t == tops[0] for t in tops)

    def rounds_until_converged(self, limit: int, interval_ms: int = 1000) -> int:
        """Run anti-entropy periods until every replica holds the same digests; fail past `limit`."""
        for n in range(limit + 1):
            if self.converged():
                return n
            self.advance(interval_ms)
        raise AssertionError(f"replicas did not converge within {limit} anti-entropy periods")
