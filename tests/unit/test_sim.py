"""The simulator (snipe/sim/) and its scenarios (benchmarks/sim/).

Engine tests drive plain recording nodes and assert the whole trace: event order, ties, loss,
duplication, partitions, crashes, inboxes and determinism by seed. Scenario tests run each
scenario small and assert what it must guarantee (convergence, exactly-once in order), never
how fast it ran.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from snipe.sim import Fixed, LogNormal, Network, ShiftedExponential, Simulator, Uniform


class Recorder:
    """A node that logs what happens to it, as (time, event, detail)."""

    def __init__(self, sim: Simulator, name: str, log: list[tuple[Any, ...]]) -> None:
        self.sim, self.name, self.log = sim, name, log

    def on_message(self, src: str, payload: Any) -> None:
        self.log.append((round(self.sim.now, 9), self.name, "msg", src, payload))

    def on_timer(self, key: str) -> None:
        self.log.append((round(self.sim.now, 9), self.name, "timer", key))

    def on_crash(self) -> None:
        self.log.append((round(self.sim.now, 9), self.name, "crash"))

    def on_restart(self) -> None:
        self.log.append((round(self.sim.now, 9), self.name, "restart"))


def world(*names: str, seed: int = 0, net: Network | None = None, **node_kw: Any
          ) -> tuple[Simulator, list[tuple[Any, ...]]]:
    sim = Simulator(seed, net or Network(Fixed(0.01)))
    log: list[tuple[Any, ...]] = []
    for n in names:
        sim.add_node(n, Recorder(sim, n, log), **node_kw)
    return sim, log


# --- events and time ------------------------------------------------------------------------------
def test_events_run_in_time_order_and_ties_in_scheduling_order():
    sim = Simulator(0)
    out: list[str] = []
    sim.call_at(2.0, out.append, "c")
    sim.call_at(1.0, out.append, "a")
    sim.call_at(2.0, out.append, "d")          # same time as "c", scheduled later: runs after it
    sim.call_at(1.0, out.append, "b")
    assert sim.run() == 4
    assert out == ["a", "b", "c", "d"]
    assert sim.now == 2.0


def test_events_scheduled_from_an_event_at_the_same_time_run_after_those_already_due():
    sim = Simulator(0)
    out: list[str] = []

    def first() -> None:
        out.append("first")
        sim.call_later(0.0, out.append, "spawned")

    sim.call_at(1.0, first)
    sim.call_at(1.0, out.append, "second")
    sim.run()
    assert out == ["first", "second", "spawned"]


def test_run_until_stops_the_clock_there_and_keeps_later_events():
    sim = Simulator(0)
    out: list[float] = []
    for t in (0.5, 1.5, 2.5):
        sim.call_at(t, lambda: out.append(sim.now))
    assert sim.run(until=2.0) == 2
    assert sim.now == 2.0 and out == [0.5, 1.5] and sim.pending() == 1
    sim.run()
    assert out == [0.5, 1.5, 2.5]


def test_cancel_stop_and_max_events():
    sim = Simulator(0)
    out: list[int] = []
    ids = [sim.call_at(float(i), out.append, i) for i in range(10)]
    sim.cancel(ids[1])
    sim.call_at(4.5, sim.stop)
    sim.run()
    assert out == [0, 2, 3, 4]
    assert sim.run(max_events=2) == 2 and out == [0, 2, 3, 4, 5, 6]
    with pytest.raises(ValueError, match="already at"):
        sim.call_at(1.0, out.append, 99)


def test_streams_are_fixed_by_seed_and_name_and_independent():
    a, b = Simulator(7), Simulator(7)
    assert [a.stream("x").random() for _ in range(3)] == [b.stream("x").random() for _ in range(3)]
    assert a.stream("x").random() != a.stream("y").random()
    assert Simulator(8).stream("x").random() != Simulator(7).stream("x").random()


# --- timers ---------------------------------------------------------------------------------------
def test_timers_fire_at_their_time_and_rearming_a_key_replaces_it():
    sim, log = world("a")
    sim.set_timer("a", "t", 1.0)
    sim.set_timer("a", "t", 3.0)                # replaces the 1.0 deadline
    sim.set_timer("a", "u", 2.0)
    sim.set_timer("a", "v", 2.5)
    sim.cancel_timer("a", "v")
    sim.run()
    assert log == [(2.0, "a", "timer", "u"), (3.0, "a", "timer", "t")]


def test_a_timer_in_the_past_fires_now():
    sim, log = world("a")
    sim.call_at(5.0, sim.set_timer, "a", "late", 1.0)
    sim.run()
    assert log == [(5.0, "a", "timer", "late")]


# --- network --------------------------------------------------------------------------------------
def test_messages_arrive_after_their_latency_in_order_of_arrival():
    class Steps:
        def __init__(self) -> None:
            self.d = iter([0.3, 0.1, 0.2])

        def sample(self, rng: random.Random) -> float:
            return next(self.d)

    sim, log = world("a", "b", net=Network(Steps()))
    for i in range(3):
        sim.send("a", "b", i, size=10, label="x")
    sim.run()
    assert log == [(0.1, "b", "msg", "a", 1), (0.2, "b", "msg", "a", 2), (0.3, "b", "msg", "a", 0)]
    st = sim.net.stats
    assert (st.sent, st.bytes_sent, st.delivered, st.bytes_delivered) == (3, 30, 3, 30)
    assert st.as_dict()["by_label"] == {"x": {"messages": 3, "bytes": 30}}


def test_loss_drops_that_fraction_and_duplication_sends_two_copies():
    sim, log = world("a", "b", net=Network(Fixed(0.01), loss=1.0))
    sim.send("a", "b", "x", 1)
    sim.run()
    assert log == [] and sim.net.stats.lost == 1

    sim, log = world("a", "b", net=Network(Fixed(0.01), duplicate=1.0))
    sim.send("a", "b", "x", 1)
    sim.run()
    assert [e[3:] for e in log] == [("a", "x"), ("a", "x")] and sim.net.stats.duplicated == 1

    sim, log = world("a", "b", net=Network(Fixed(0.01), loss=0.25), seed=3)
    for i in range(4000):
        sim.send("a", "b", i, 1)
    sim.run()
    assert 850 < sim.net.stats.lost < 1150 and len(log) == 4000 - sim.net.stats.lost


def test_a_partition_cuts_links_between_groups_only_and_heal_restores_them():
    sim, log = world("a", "b", "c", "d")
    sim.net.partition([["a", "b"], ["c"]])      # d is in no group: it keeps every link
    for dst in ("b", "c", "d"):
        sim.send("a", dst, "m", 1)
    sim.send("c", "d", "m", 1)
    sim.run()
    assert sorted((e[1], e[3]) for e in log) == [("b", "a"), ("d", "a"), ("d", "c")]
    assert sim.net.stats.cut == 1
    sim.net.heal()
    sim.send("a", "c", "after", 1)
    sim.run()
    assert log[-1][1:] == ("c", "msg", "a", "after")


def test_a_cut_drops_messages_already_in_flight_and_a_single_link_can_be_cut():
    sim, log = world("a", "b", "c")
    sim.send("a", "b", "in flight", 1)          # arrives at 0.01
    sim.call_at(0.005, sim.net.partition, [["a"], ["b"]])
    sim.run()
    assert log == [] and sim.net.stats.cut == 1
    sim.net.heal()
    sim.net.cut("c", "a")
    sim.send("a", "c", "x", 1)
    sim.send("c", "a", "y", 1)
    sim.send("a", "b", "z", 1)
    sim.run()
    assert [e[4] for e in log] == ["z"]
    sim.net.restore("a", "c")
    sim.send("a", "c", "x", 1)
    sim.run()
    assert [e[4] for e in log] == ["z", "x"]


def test_a_crashed_node_loses_its_timers_receives_nothing_and_sends_nothing():
    sim, log = world("a", "b")
    sim.set_timer("b", "t", 0.5)
    sim.send("a", "b", "early", 1)              # arrives at 0.01, b up
    sim.call_at(0.1, sim.crash, "b")
    sim.call_at(0.2, sim.send, "a", "b", "while down", 1)
    sim.call_at(0.2, sim.send, "b", "a", "from the dead", 1)
    sim.call_at(0.3, sim.set_timer, "b", "t2", 0.4)   # a down node cannot arm timers
    sim.call_at(1.0, sim.restart, "b")
    sim.call_at(1.5, sim.send, "a", "b", "after restart", 1)
    sim.run()
    assert log == [(0.01, "b", "msg", "a", "early"), (0.1, "b", "crash"), (1.0, "b", "restart"),
                   (1.51, "b", "msg", "a", "after restart")]
    assert sim.net.stats.to_down_node == 1 and sim.net.stats.sent == 2 + 1


def test_an_inbox_serves_one_message_at_a_time_and_drops_beyond_its_limit():
    sim, log = world("a", "b", service_time=0.1, inbox_limit=2)
    for i in range(5):
        sim.send("a", "b", i, 1)                # all arrive at 0.01
    sim.run()
    assert log == [(0.11, "b", "msg", "a", 0), (0.21, "b", "msg", "a", 1), (0.31, "b", "msg", "a", 2)]
    assert sim.net.stats.inbox_full == 2


def test_a_crash_empties_the_inbox():
    sim, log = world("a", "b", service_time=0.1)
    for i in range(3):
        sim.send("a", "b", i, 1)
    sim.call_at(0.15, sim.crash, "b")
    sim.call_at(0.5, sim.restart, "b")
    sim.call_at(0.6, sim.send, "a", "b", "later", 1)
    sim.run()
    assert log == [(0.11, "b", "msg", "a", 0), (0.15, "b", "crash"), (0.5, "b", "restart"),
                   (0.71, "b", "msg", "a", "later")]
    assert sim.net.stats.to_down_node == 1      # message 2 waited in the inbox; 1 was in service


def test_latency_distributions_stay_in_their_ranges():
    rng = random.Random(1)
    assert all(0.01 <= Uniform(0.01, 0.02).sample(rng) <= 0.02 for _ in range(1000))
    assert all(ShiftedExponential(0.005, 0.01).sample(rng) >= 0.005 for _ in range(1000))
    ln = sorted(LogNormal(0.02, 0.5, floor=0.001).sample(rng) for _ in range(2001))
    assert ln[0] >= 0.001 and 0.018 < ln[1000] < 0.022


def _chatter(seed: int) -> list[tuple[Any, ...]]:
    """Ten nodes gossiping at random over a lossy, duplicating, jittery network with a crash."""
    trace: list[tuple[Any, ...]] = []
    sim = Simulator(seed, Network(LogNormal(0.01, 1.0), loss=0.1, duplicate=0.1), trace=trace)
    names = [f"n{i}" for i in range(10)]

    class Gossip:
        def __init__(self, name: str) -> None:
            self.name = name

        def on_message(self, src: str, payload: Any) -> None:
            if payload < 200:
                sim.send(self.name, sim.rng.choice(names), payload + 1, 1)

        def on_timer(self, key: str) -> None:
            sim.send(self.name, sim.rng.choice(names), 0, 1)
            sim.set_timer(self.name, key, sim.now + sim.rng.random())

        def on_crash(self) -> None: ...

        def on_restart(self) -> None:
            sim.set_timer(self.name, "tick", sim.now)

    for n in names:
        sim.add_node(n, Gossip(n))
        sim.set_timer(n, "tick", 0.0)
    sim.call_at(1.0, sim.crash, "n3")
    sim.call_at(2.0, sim.restart, "n3")
    sim.run(until=5.0)
    return trace


def test_same_seed_same_run_event_for_event():
    a, b = _chatter(42), _chatter(42)
    assert len(a) > 1000 and a == b
    assert _chatter(43) != a


# --- scenario wiring: the simulator's storage and replica are the plain ones, faster ---------------
def _catalog_history(seed: int) -> list[tuple[int, list[Any]]]:
    """Writes (and a grace-period tick) at replica level: claims, updates, tombstones, leases."""
    from snipe import hlc
    from snipe.assertion import make_assertion
    from snipe.identity import Identity

    rng = random.Random(seed)
    admin = Identity.from_seed(bytes([9]) * 32)
    hosts = [Identity.from_seed(bytes([10 + i]) * 32) for i in range(4)]
    t = 1_700_000_000_000
    steps: list[tuple[int, list[Any]]] = []
    for i, h in enumerate(hosts):
        steps.append((t, [make_assertion(admin, f"urn:snipe:host:h{i}", "_owner", h.key_id, hlc.pack(t))]))
    for n in range(200):
        t += 10
        i = rng.randrange(len(hosts))
        urn, name = f"urn:snipe:host:h{i}", rng.choice(["cpus", "load", "arch", "memory"])
        deleted = rng.random() < 0.1
        a = make_assertion(hosts[i], urn, name, None if deleted else n, hlc.pack(t),
                           ttl_ms=rng.choice([0, 0, 50]) if not deleted else 0, deleted=deleted)
        steps.append((t, [a]))
    return steps


def test_indexed_storage_holds_and_answers_exactly_as_memory_storage_and_clones_are_independent():
    from benchmarks.sim.catalog_store import IndexedStorage
    from rcds.replica import Replica
    from rcds.storage import TOPS, MemoryStorage, leaf_of

    steps = _catalog_history(5)
    admin_key = steps[0][1][0].signer
    plain, indexed = MemoryStorage(), IndexedStorage()
    reps = [Replica(plain, admin_key, gc_grace_ms=100), Replica(indexed, admin_key, gc_grace_ms=100)]
    snapshot = None
    for n, (t, recs) in enumerate(steps):
        results = [r.ingest(list(recs), t) for r in reps]
        assert results[0] == results[1]
        assert reps[0].tick(t) == reps[1].tick(t)
        if n == 100:
            snapshot = (indexed.clone(), dict(indexed.records), indexed.top_digests(), list(indexed.log))
    assert reps[0].tick(steps[-1][0] + 10_000) == reps[1].tick(steps[-1][0] + 10_000) > 0   # forgets

    def state(s: MemoryStorage) -> tuple[Any, ...]:
        urns = sorted({a.urn for a in s.records.values()} | {f"urn:snipe:host:h{i}" for i in range(4)})
        leaves = sorted({leaf_of(u) for u in urns})
        return (dict(s.records), list(s.records), s.log, s.rev, s.top_digests(),
                [s.leaf_digests(t) for t in range(TOPS)], [s.held(u) for u in urns],
                [s.leaf_summaries(x) for x in leaves], dict(s.admitted), s.host_keys, s.timers)

    assert state(plain) == state(indexed)

    # The clone taken halfway kept that state while the original moved on, and carries on alike.
    assert snapshot is not None
    clone, records, tops, log = snapshot
    assert dict(clone.records) == records and clone.top_digests() == tops and clone.log == log
    fresh = IndexedStorage()
    fresh_rep, clone_rep = Replica(fresh, admin_key, gc_grace_ms=100), Replica(clone, admin_key, gc_grace_ms=100)
    for n, (t, recs) in enumerate(steps):
        if n > 100:
            assert clone_rep.ingest(list(recs), t) == fresh_rep.ingest(list(recs), t)
            clone_rep.tick(t)
        else:
            fresh_rep.ingest(list(recs), t)
        fresh_rep.tick(t)
    assert state(clone) == state(fresh)


def test_counting_replica_ingests_as_the_core_does_and_counts_refusals():
    from collections import Counter

    from benchmarks.sim.catalog_store import CountingReplica, IndexedStorage
    from rcds.replica import Accepted, Refused

    steps = _catalog_history(6)
    owner = steps[0][1][0]
    refusals: Counter[str] = Counter()
    r = CountingReplica(IndexedStorage(), owner.signer, refusals)
    assert r.ingest([owner.encode()], steps[0][0], from_peer=True) == [Accepted(owner, 1, True)]
    assert isinstance(r.ingest([b"not an assertion"], steps[0][0])[0], Refused)
    assert refusals == Counter({"CodecError": 1})


# --- scenarios ------------------------------------------------------------------------------------
def test_catalog_scenario_converges_after_the_partition_heals():
    from benchmarks.sim.catalog import QUICK, CatalogWorld

    world = CatalogWorld(QUICK, seed=2)
    world.build()
    world.run()
    rep = world.report()
    assert rep["converged"] and rep["unconverged_replicas"] == 0 and rep["convergence_s"] > 0
    assert rep["unconverged_by_second"][0][1] > 0          # the partition really left replicas apart
    assert rep["records_written_during_partition"] > 0 and rep["network"]["cut"] > 0
    assert rep["crashed_replicas"] > 0 and rep["network"]["lost"] > 0
    reference = dict(world.reference.records)
    assert len(reference) == rep["records_per_replica"]
    for node in world.nodes:                                # every replica holds every record written
        assert dict(node.storage.records) == reference


def test_channel_scenario_delivers_everything_exactly_once_in_order():
    from benchmarks.sim.channel import QUICK, run_channel

    rep = run_channel(QUICK, seed=2)
    assert rep["delivery_ratio"] == 1.0 and rep["exactly_once_in_order"] and rep["all_acknowledged"]
    assert rep["delivery_failures"] == 0 and rep["pairs_exact"] == rep["pairs"]
    # ... and the network did its worst: losses, duplicates, cut links, hence retransmissions.
    net = rep["network"]
    assert net["lost"] > 0 and net["duplicated"] > 0 and net["cut"] > 0
    assert rep["retransmissions"] > 0 and rep["duplicates_suppressed"] > 0


def test_the_multicast_scenario_has_its_place_in_the_registry():
    from benchmarks.sim import SCENARIOS

    assert "multicast" in SCENARIOS        # the third scenario's slot (benchmarks/sim/multicast.py)


def test_simulate_quick_is_determined_by_the_seed_even_across_processes():
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from benchmarks.simulate import simulate, without_timings

    here = without_timings(simulate(seed=3, quick=True, hosts=80, only=["catalog", "channel"]))
    root = Path(__file__).resolve().parents[2]
    for hashseed in ("0", "12345"):                       # str hashing differs: set order must not matter
        cmd = [sys.executable, str(root / "benchmarks" / "simulate.py"), "--quick", "--json", "--seed", "3",
               "--hosts", "80", "--only", "catalog,channel"]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=240,
                             env={**os.environ, "PYTHONHASHSEED": hashseed})
        assert without_timings(json.loads(out.stdout)) == here
    other = without_timings(simulate(seed=4, quick=True, hosts=80, only=["catalog"]))
    assert other["scenarios"]["catalog"] != here["scenarios"]["catalog"]
