"""Scenario A, the catalog: N real replica cores gossiping through a partition, crashes and loss.

Every virtual host runs one replica: `rcds.replica.Replica` (as `CountingReplica`, which only
counts refusals) over an in-memory store (`IndexedStorage`), driven by
`rcds.replication.Replicator`: push on write, anti-entropy every `interval`. Nothing about
replication is re-implemented here; this module only builds the world, carries effects
(benchmarks/sim/shell.py) and watches digests.

The workload, as daemons behave: `writers` hosts each hold a host record (the admin's `_owner`,
which admits the host's key, and `names_per_host` assertions the host signed). Every replica
starts with that record set, as a converged cluster would (one replica is built through
`Replica.ingest`, the rest are clones of it). Then:

1. replicas start their anti-entropy timers at random phases;
2. at `partition_at`, a random `partition_fraction` of the hosts is cut off from the rest;
3. during the partition writers update their `load` `updates` times in all (a random writer
   each time, at its own host's replica: a client write, ingest then push), `joiners` new
   hosts are admitted and publish their records, and `crash_fraction` of the replicas crash
   and restart after `downtime` (their store survives, as LMDB would; the replicator's memory
   does not);
4. at the heal the simulator keeps going until every replica's digests equal those of a
   reference store holding every record written, and reports how long that took.

Sizing. Memory grows as replicas x records: at 10,000 replicas the defaults (100 host
records of 4 assertions, 80 more written during the partition) hold about 4.8 million
record copies in about 1.8 GB. Every host of 10,000 publishing its own record would be 400
million copies, far beyond one process; the convergence time depends on how many records
differ mostly through message sizes, which the `writers`/`updates` knobs explore.

Peers. `Replicator` pushes a write to every peer and runs anti-entropy with `peers[turn % len]`,
round-robin in the order given (`set_peers` sorts). With 10,000 replicas a push to every peer is
10,000 messages per write and a shared sorted order sends every replica to the same peer at
once, so each simulated replica gets a partial view instead: `view` peers drawn at random, in a
random order, passed to the constructor (which keeps the order). Push then reaches `view` peers
and anti-entropy walks a random permutation of them, so repair spreads like random gossip,
in O(log N) rounds; membership protocols such as Cyclon or HyParView keep views like these.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from benchmarks.sim.catalog_store import CountingReplica, IndexedStorage
from benchmarks.sim.shell import T0_MS, CoreNode, run_world
from rcds.replica import Accepted, Refused
from rcds.replication import Replicator
from snipe import hlc
from snipe.assertion import Assertion, make_assertion
from snipe.identity import Identity
from snipe.sim import Latency, LogNormal, Network, Simulator
from snipe.wire import Envelope

HOST_NAMES = ("cpus", "arch", "memory", "daemon", "interfaces", "playground")


@dataclass(frozen=True)
class CatalogConfig:
    replicas: int = 10_000
    writers: int = 100               # hosts holding a host record (each on its own replica's host)
    names_per_host: int = 3          # assertions a host record holds besides the admin's _owner
    updates: int = 40                # `load` updates during the partition, each by a random writer
    joiners: int = 10                # hosts admitted and published during the partition
    view: int = 0                    # peers per replica; 0: max(8, 2 * ceil(log2 N))
    interval: float = 1.0            # anti-entropy period (s), Replicator's default
    latency: Latency = field(default_factory=lambda: LogNormal(0.02, 0.5, floor=0.001))
    loss: float = 0.01
    duplicate: float = 0.0
    partition_at: float = 3.0
    partition_for: float = 10.0
    partition_fraction: float = 0.2
    crash_fraction: float = 0.01
    downtime: tuple[float, float] = (2.0, 8.0)
    give_up_after: float = 600.0     # virtual seconds after the heal

    def peers_per_replica(self) -> int:
        k = self.view or max(8, 2 * math.ceil(math.log2(max(2, self.replicas))))
        return min(k, self.replicas - 1)


QUICK = CatalogConfig(replicas=200, writers=30, updates=20, joiners=5, partition_for=8.0, crash_fraction=0.03,
                      downtime=(1.0, 4.0))


class ReplicaNode(CoreNode):
    """One replica host: the replica core, its replicator, and a store that survives crashes."""

    def __init__(self, world: CatalogWorld, name: str, storage: IndexedStorage, peers: Sequence[str]) -> None:
        super().__init__(world.sim, name)
        self.world = world
        self.storage = storage
        self.peers = list(peers)
        self.replica = CountingReplica(storage, world.admin.public_key, world.refusals)
        self.replicator: Replicator | None = None
        self.seen_rev = storage.last_rev()

    def start(self) -> None:
        self.replicator = Replicator(self.name, self.replica, self.storage, self.peers,
                                     interval=self.world.cfg.interval)
        self.apply(self.replicator.start(self.sim.now))

    def write(self, records: list[Assertion]) -> None:
        """A client write at this replica: ingest, then push what was new."""
        assert self.replicator is not None
        results = self.replica.ingest(list(records), self.now_ms)
        bad = [r for r in results if isinstance(r, Refused)]
        if bad:
            raise AssertionError(f"{self.name} refused a client write: {bad[0].error}")
        self.replicator.on_local_writes([r for r in results if isinstance(r, Accepted)])
        self.apply(self.replicator.flush())
        self._changed()

    def handle(self, src: str, env: Envelope, frames: Sequence[bytes]) -> None:
        assert self.replicator is not None
        self.apply(self.replicator.on_message(env, frames, self.now_ms))
        self._changed()

    def on_timer(self, key: str) -> None:
        assert self.replicator is not None
        self.apply(self.replicator.on_timer(key, self.sim.now))

    def on_crash(self) -> None:
        assert self.replicator is not None
        self.world.retired.append(self.replicator.stats())
        self.replicator = None

    def on_restart(self) -> None:
        self.start()

    def _changed(self) -> None:
        rev = self.storage.last_rev()
        if rev != self.seen_rev:
            self.seen_rev = rev
            self.world.changed(self)


class CatalogWorld:
    """Builds the replicas and the workload, runs them, and reports."""

    def __init__(self, cfg: CatalogConfig, seed: int) -> None:
        self.cfg = cfg
        self.sim = Simulator(seed, Network(cfg.latency, loss=cfg.loss, duplicate=cfg.duplicate))
        self.setup_rng = self.sim.stream("catalog-setup")
        self.rng = self.sim.stream("catalog-workload")
        self.admin = Identity.from_seed(self.setup_rng.randbytes(32))
        self.admin_clock = hlc.HybridClock()
        self.refusals: Counter[str] = Counter()
        self.retired: list[Any] = []
        self.written: list[Assertion] = []
        self.nodes: list[ReplicaNode] = []
        self.heal_at = cfg.partition_at + cfg.partition_for
        self.target: bytes | None = None
        self.pending: set[str] = set()
        self.converged_at: float | None = None
        self.curve: list[tuple[float, int]] = []
        self.last_write_at: float | None = None
        self.at_heal: dict[str, int] = {}
        self.events = Counter[str]()

    # --- building ------------------------------------------------------------------------------
    def _host_record(self, ident: Identity, urn: str, now_ms: int) -> list[Assertion]:
        clock = hlc.HybridClock()
        recs = [make_assertion(self.admin, urn, "_owner", ident.key_id, self.admin_clock.now(now_ms))]
        for i in range(self.cfg.names_per_host):
            name = HOST_NAMES[i % len(HOST_NAMES)] + ("" if i < len(HOST_NAMES) else str(i))
            recs.append(make_assertion(ident, urn, name, f"{name} of {urn}", clock.now(now_ms)))
        return recs

    def build(self) -> None:
        cfg, rng, sim = self.cfg, self.setup_rng, self.sim
        names = [f"r{i}" for i in range(cfg.replicas)]
        self.names = names
        boot_ms = T0_MS - 60_000
        homes = rng.sample(range(cfg.replicas), min(cfg.replicas, cfg.writers + cfg.joiners))
        self.writers = [(names[h], Identity.from_seed(rng.randbytes(32)), hlc.HybridClock())
                        for h in homes[:cfg.writers]]
        self.joiners = [(names[h], Identity.from_seed(rng.randbytes(32))) for h in homes[cfg.writers:]]
        template = IndexedStorage()
        boot = CountingReplica(template, self.admin.public_key, self.refusals)
        for home, ident, _ in self.writers:
            results = boot.ingest(self._host_record(ident, f"urn:snipe:host:{home}", boot_ms), boot_ms)
            assert all(isinstance(r, Accepted) and r.new for r in results), results
        self.reference = template.clone()      # will receive every record written: the target
        k = cfg.peers_per_replica()
        for i, name in enumerate(names):
            picks = rng.sample(range(cfg.replicas - 1), k)
            peers = [names[p + 1 if p >= i else p] for p in picks]
            node = ReplicaNode(self, name, template.clone(), peers)
            self.nodes.append(node)
            sim.add_node(name, node)
            sim.call_at(rng.random() * cfg.interval, node.start)
        self.by_name = {n.name: n for n in self.nodes}
        self._plan()

    def _plan(self) -> None:
        cfg, rng, sim = self.cfg, self.setup_rng, self.sim
        t0, t1 = cfg.partition_at, self.heal_at
        cut = rng.sample(self.names, round(cfg.partition_fraction * cfg.replicas))
        cut_set = set(cut)
        self.side = {n: (1 if n in cut_set else 0) for n in self.names}
        sim.call_at(t0, sim.net.partition, [cut, [n for n in self.names if n not in cut_set]])
        sim.call_at(t1, self._heal)
        for _ in range(cfg.updates if self.writers else 0):
            home, ident, clock = rng.choice(self.writers)
            sim.call_at(t0 + 0.5 + rng.random() * max(0.0, t1 - t0 - 1.0), self._update, home, ident, clock)
        for home, ident in self.joiners:
            sim.call_at(t0 + 0.5 + rng.random() * max(0.0, t1 - t0 - 1.0), self._join, home, ident)
        lo, hi = cfg.downtime
        for name in rng.sample(self.names, round(cfg.crash_fraction * cfg.replicas)):
            at = t0 + rng.random() * max(0.0, t1 - t0 - hi)
            sim.call_at(at, sim.crash, name)
            sim.call_at(at + lo + rng.random() * (hi - lo), sim.restart, name)

    # --- the workload ------------------------------------------------------------------------
    def _replica_for(self, home: str) -> ReplicaNode:
        """The writer's own replica, or, while that one is down, a live one on its side."""
        if self.sim.is_up(home):
            return self.by_name[home]
        self.events["writes redirected (home replica down)"] += 1
        side = self.side[home]
        while True:
            n = self.rng.choice(self.nodes)
            if self.sim.is_up(n.name) and self.side[n.name] == side:
                return n

    def _update(self, home: str, ident: Identity, clock: hlc.HybridClock) -> None:
        node = self._replica_for(home)
        a = make_assertion(ident, f"urn:snipe:host:{home}", "load", round(self.rng.random() * 8, 2),
                           clock.now(node.now_ms))
        self.written.append(a)
        self.last_write_at = self.sim.now
        node.write([a])

    def _join(self, home: str, ident: Identity) -> None:
        node = self._replica_for(home)
        recs = self._host_record(ident, f"urn:snipe:host:{home}", node.now_ms)
        self.written.extend(recs)
        self.last_write_at = self.sim.now
        node.write(recs)

    def _heal(self) -> None:
        self.sim.net.heal()
        self.at_heal = {"sent": self.sim.net.stats.sent, "bytes_sent": self.sim.net.stats.bytes_sent}
        ref = CountingReplica(self.reference, self.admin.public_key, Counter())
        results = ref.ingest(list(self.written), T0_MS + round(self.sim.now * 1000), from_peer=True)
        assert all(isinstance(r, Accepted) for r in results), [r for r in results if isinstance(r, Refused)]
        self.target = b"".join(self.reference.top_digests())
        self.pending = {n.name for n in self.nodes if b"".join(n.storage.top_digests()) != self.target}
        self._sample()
        if not self.pending:
            self._converged()

    def changed(self, node: ReplicaNode) -> None:
        if node.name in self.pending and b"".join(node.storage.top_digests()) == self.target:
            self.pending.discard(node.name)
            if not self.pending:
                self._converged()

    def _converged(self) -> None:
        self.converged_at = self.sim.now
        self.curve.append((round(self.sim.now - self.heal_at, 3), 0))
        self.sim.stop()

    def _sample(self) -> None:
        self.curve.append((round(self.sim.now - self.heal_at, 3), len(self.pending)))
        if self.pending:
            self.sim.call_later(self.cfg.interval, self._sample)

    # --- running -------------------------------------------------------------------------------
    def run(self) -> None:
        self.sim.run(until=self.heal_at + self.cfg.give_up_after)

    def report(self) -> dict[str, Any]:
        cfg, st = self.cfg, self.sim.net.stats
        totals = Counter[str]()
        for s in [*self.retired, *(n.replicator.stats() for n in self.nodes if n.replicator)]:
            totals.update(asdict(s))
        converged = self.converged_at is not None
        conv = round(self.converged_at - self.heal_at, 3) if self.converged_at is not None else None
        return {
            "replicas": cfg.replicas,
            "peers_per_replica": cfg.peers_per_replica(),
            "anti_entropy_interval_s": cfg.interval,
            "latency": repr(cfg.latency),
            "loss": cfg.loss,
            "writers": cfg.writers,
            "records_per_replica": self.reference.count(),
            "records_written_during_partition": len(self.written),
            "partitioned_replicas": round(cfg.partition_fraction * cfg.replicas),
            "partition_s": [cfg.partition_at, self.heal_at],
            "crashed_replicas": round(cfg.crash_fraction * cfg.replicas),
            "last_write_before_heal_s": (round(self.heal_at - self.last_write_at, 3)
                                         if self.last_write_at is not None else None),
            "converged": converged,
            "convergence_s": conv,
            "convergence_rounds": round(conv / cfg.interval, 2) if conv is not None else None,
            "unconverged_replicas": len(self.pending),
            "unconverged_by_second": [[t, n] for t, n in self.curve],
            "messages": st.sent,
            "bytes": st.bytes_sent,
            "messages_after_heal": st.sent - self.at_heal.get("sent", st.sent),
            "bytes_after_heal": st.bytes_sent - self.at_heal.get("bytes_sent", st.bytes_sent),
            "network": st.as_dict(),
            "replication": dict(sorted(totals.items())),
            "refused_by_peers": dict(sorted(self.refusals.items())),
            "workload_events": dict(sorted(self.events.items())),
            "virtual_s": round(self.sim.now, 3),
            "events": self.sim.events,
        }


def run_catalog(cfg: CatalogConfig, seed: int) -> dict[str, Any]:
    """Build, run and report scenario A, with the wall time of each part."""
    return run_world(lambda: CatalogWorld(cfg, seed))
