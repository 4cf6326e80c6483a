"""Scenarios for the simulator (snipe/sim/): the project's real I/O-free cores on virtual hosts.

Each scenario is a function `(seed, quick, hosts) -> figures` in `SCENARIOS`; `hosts` (None:
the scenario's default) scales the number of virtual hosts, `quick` picks a run of seconds.
benchmarks/simulate.py runs them and prints the figures. A new scenario is a module with a
`CoreNode` subclass (benchmarks/sim/shell.py) around its core, a world that builds and runs
it, and one entry here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benchmarks.sim import catalog, channel, multicast, placement


def run_catalog(seed: int, quick: bool, hosts: int | None) -> dict[str, Any]:
    """Scenario A: `hosts` replicas converging after a partition heals."""
    cfg = catalog.QUICK if quick else catalog.CatalogConfig()
    if hosts is not None:
        cfg = dataclasses.replace(cfg, replicas=hosts, writers=min(cfg.writers, hosts // 2),
                                  joiners=min(cfg.joiners, hosts // 4))
    return catalog.run_catalog(cfg, seed)


def run_channel(seed: int, quick: bool, hosts: int | None) -> dict[str, Any]:
    """Scenario B: `hosts // 2` sender/receiver pairs over a lossy, reordering, duplicating network."""
    cfg = channel.QUICK if quick else channel.ChannelConfig()
    if hosts is not None:
        cfg = dataclasses.replace(cfg, pairs=max(1, hosts // 2))
    return channel.run_channel(cfg, seed)


def run_placement(seed: int, quick: bool, hosts: int | None) -> dict[str, Any]:
    """Scenario D: spawners placing tasks by bids from `hosts` daemons, some of them dead."""
    cfg = placement.QUICK if quick else placement.PlacementConfig()
    if hosts is not None:
        cfg = dataclasses.replace(cfg, hosts=hosts, ask=min(cfg.ask, hosts))
    return placement.run_placement(cfg, seed)


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    run: Callable[[int, bool, int | None], dict[str, Any]]


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("catalog", "replication and anti-entropy: convergence after a partition heals", run_catalog),
    Scenario("channel", "msg/1 reliable channel: exactly-once in-order delivery over a hostile network",
             run_channel),
    # TODO(multicast): a placeholder until the router-election core lands (benchmarks/sim/multicast.py).
    Scenario("multicast", "router election and multicast delivery with 10% of routers failing",
             multicast.run_multicast),
    Scenario("multicast-high-rate", "multicast at 2,000 messages a second to one group with 12 routers",
             multicast.run_multicast_high_rate),
    Scenario("placement", "placement by bids: spawners take the cheapest bid from hosts, some dead",
             run_placement),
)}

__all__ = ["SCENARIOS", "Scenario", "run_catalog", "run_channel", "run_placement"]
