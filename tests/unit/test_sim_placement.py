"""The bidding core (snipe/bidding.py) run in the simulator with many virtual hosts: every task
is placed, none on a dead host, each on the cheapest bid its spawner received, and the load
spreads within a class of hosts; the same seed gives the same figures."""

from __future__ import annotations

import dataclasses

from benchmarks.sim import placement
from benchmarks.simulate import simulate, without_timings


def test_placement_by_bids_with_dead_hosts_places_every_task_on_the_cheapest_live_bid() -> None:
    cfg = dataclasses.replace(placement.QUICK, hosts=200, tasks=400, dead_fraction=0.1)
    rep = placement.run_placement(cfg, seed=5)
    assert rep["placed"] == 400 and rep["unplaced"] == 0 and rep["dead_hosts"] == 20
    assert rep["placed_on_dead_hosts"] == 0 and rep["not_on_the_cheapest_bid"] == 0 and rep["invariants_hold"]
    assert rep["tasks_by_price"]["0.5"] > rep["tasks_by_price"]["1"] >= rep["tasks_by_price"]["2"]
    # a host's bid rises with its running tasks: within one price and size, no host hoards them
    assert max(rep["tasks_per_cpu_spread_within_a_class"].values()) <= 2.0, rep
    # a tenth of the hosts dead, so most calls ask one, yet most do not wait out the deadline:
    # once all but a quarter have bid, the rest get the straggler's while only
    assert rep["time_to_place_p50_ms"] < cfg.bid_timeout * 1000 / 2, rep


def test_a_world_where_every_asked_host_is_dead_leaves_tasks_unplaced_and_says_so() -> None:
    cfg = dataclasses.replace(placement.QUICK, hosts=20, tasks=10, ask=20, dead_fraction=1.0)
    rep = placement.run_placement(cfg, seed=1)
    assert rep["placed"] == 0 and rep["unplaced"] == 10 and not rep["invariants_hold"]


def test_the_placement_scenario_is_determined_by_the_seed() -> None:
    a = without_timings(simulate(seed=2, quick=True, only=["placement"]))
    b = without_timings(simulate(seed=2, quick=True, only=["placement"]))
    assert a == b and a["scenarios"]["placement"]["placed"] == placement.QUICK.tasks
