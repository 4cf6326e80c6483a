"""Scenario C, multicast (SNIPE 4.4): a placeholder until the router-election core lands.

TODO(multicast): the I/O-free router-election core is being written by another engineer. When
it exists, wire it here the way benchmarks/sim/catalog.py and benchmarks/sim/channel.py wire
theirs, and register nothing new elsewhere (`run_multicast` is already in the registry):

1. a `CoreNode` subclass (benchmarks/sim/shell.py) per daemon host holding the election core:
   `handle` passes mcast/1 messages to the core's `on_message`, `on_timer` to its `on_timer`,
   `apply` carries out the `Send`/`StartTimer` effects it returns; `on_crash` drops the core,
   `on_restart` builds a fresh one (what survives a crash is the core's decision);
2. the world: 1,000 hosts, 10,000 members spread over them, each member registered with more
   than one router; senders multicasting to their group through more than half of the routers;
3. faults: 10% of the routers crash mid-stream (`Simulator.crash`), plus loss and latency from
   `snipe.sim.Network`;
4. the figures the issue asks for: delivery ratio (per member, per sender: every message once,
   in per-sender FIFO order) with 10% of routers failing, messages and bytes, wall time.

Until then `run_multicast` reports that nothing was simulated; it never invents figures.
"""

from __future__ import annotations

from typing import Any

PENDING = {
    "simulated": False,
    "reason": "the multicast router-election core (SNIPE 4.4) has not landed yet",
    "todo": "wire the election core into benchmarks/sim/multicast.py (see its docstring): 1,000 hosts, "
            "10,000 members, 10% of routers failing; report the delivery ratio",
}


def run_multicast(seed: int, quick: bool, hosts: int | None) -> dict[str, Any]:
    """Scenario C: not yet simulated (see the module's TODO)."""
    return dict(PENDING)
