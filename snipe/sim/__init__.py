"""A deterministic discrete-event simulator that runs I/O-free protocol cores on many virtual nodes.

The engine (`Simulator`) knows no protocol: it keeps virtual time, a seeded event queue, nodes
with timers, inboxes and crash/restart, and a `Network` with latency distributions, loss,
duplication and partitions. Scenarios that wire the project's cores (replication, the reliable
channel, ...) into nodes live in benchmarks/sim/; `benchmarks/simulate.py` runs them.
"""

from snipe.sim.engine import NodeHandler, Simulator
from snipe.sim.network import Fixed, Latency, LogNormal, Network, ShiftedExponential, TrafficStats, Uniform

__all__ = [
    "Fixed",
    "Latency",
    "LogNormal",
    "Network",
    "NodeHandler",
    "ShiftedExponential",
    "Simulator",
    "TrafficStats",
    "Uniform",
]
