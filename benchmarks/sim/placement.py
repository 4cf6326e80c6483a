"""Scenario D, placement by bids: spawners call for bids from many hosts (snipe/bidding.py).

Every host runs the daemon's side of the core (`bidding.bid` from its price, CPUs and running
tasks); every spawner runs the caller's (`bidding.Auction`): it asks a random sample of the
hosts, takes the cheapest bid that arrives within the deadline, and sends that host the task.
Some hosts are dead from the start and never answer; tasks run for a while and end. Messages go
through the real wire codec and a network with a long-tailed latency (benchmarks/sim/shell.py).

What must hold, and is checked: every task is placed, none on a dead host; each lands on the
cheapest bid its spawner received; and the load spreads: a host's bid grows with its running
tasks, so among hosts of one price and size the busiest carries only a few more tasks per CPU
than the least busy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from benchmarks.sim.shell import CoreNode, run_world
from snipe.bidding import Auction, Bid, HostState, Refusal, bid
from snipe.effects import Send
from snipe.sim import Latency, LogNormal, Network, Simulator
from snipe.wire import Envelope

PROTOCOL, VERSION = "daemon", 1


@dataclass(frozen=True)
class PlacementConfig:
    hosts: int = 2000
    spawners: int = 20
    tasks: int = 4000                # placed in all, spread over the spawners
    rate: float = 400.0              # calls for bids a second, all spawners together (Poisson)
    ask: int = 32                    # hosts asked per call (a random sample of all hosts)
    dead_fraction: float = 0.05      # hosts that never answer
    prices: tuple[float, ...] = (0.5, 1.0, 2.0)
    cpus: tuple[int, ...] = (4, 8)
    task_s: float = 60.0             # how long a placed task runs
    bid_timeout: float = 0.5
    straggler_s: float = 0.05        # once all but a quarter have bid, the rest get this long (the shell's rule)
    latency: Latency = field(default_factory=lambda: LogNormal(0.002, 0.5, floor=0.0002))


QUICK = PlacementConfig(hosts=100, spawners=4, tasks=200, ask=16, rate=100.0)


class HostNode(CoreNode):
    """A daemon: bids from its state, takes the tasks it is sent, ends them after `task_s`."""

    def __init__(self, world: PlacementWorld, name: str, price: float, cpus: int) -> None:
        super().__init__(world.sim, name)
        self.world, self.price, self.cpus = world, price, cpus
        self.running = 0
        self.placed = 0

    def handle(self, src: str, env: Envelope, frames: Sequence[bytes]) -> None:
        if env.kind == "bid":
            answer = bid(HostState(self.name, self.price, self.cpus, self.running, 0.0, False, {}), [])
            body = {"refused": answer.reason} if isinstance(answer, Refusal) else \
                {"bid": answer.price, "busy": answer.busy}
            self.send(Send(src, Envelope(PROTOCOL, VERSION, "bid-answer", env.request_id, body)))
        elif env.kind == "spawn":
            self.running += 1
            self.placed += 1
            self.sim.call_later(self.world.cfg.task_s, self._ended)

    def _ended(self) -> None:
        self.running -= 1

    def on_timer(self, key: str) -> None:
        pass


class SpawnerNode(CoreNode):
    """A caller of `snipe.spawn(placement="bids")`: one auction per task."""

    def __init__(self, world: PlacementWorld, name: str) -> None:
        super().__init__(world.sim, name)
        self.world = world
        self.rng = world.sim.stream(f"placement/{name}")
        self.auctions: dict[int, tuple[Auction, float]] = {}
        self.next_id = 1

    def call_for_bids(self) -> None:
        asked = self.rng.sample(self.world.host_names, min(self.world.cfg.ask, len(self.world.host_names)))
        rid = self.next_id
        self.next_id += 1
        self.auctions[rid] = (Auction(asked), self.sim.now)
        for h in asked:
            self.send(Send(h, Envelope(PROTOCOL, VERSION, "bid", rid, {"requires": []})))
        self.sim.set_timer(self.name, f"deadline:{rid}", self.sim.now + self.world.cfg.bid_timeout)

    def handle(self, src: str, env: Envelope, frames: Sequence[bytes]) -> None:
        held = self.auctions.get(env.request_id)
        if held is None or env.kind != "bid-answer":
            return                                  # late: that auction was decided
        auction, _ = held
        if "bid" in env.body:
            auction.on_bid(Bid(src, float(env.body["bid"]), busy=float(env.body.get("busy", 0.0))))
        else:
            auction.on_refusal(Refusal(src, str(env.body.get("refused"))))
        if auction.done:
            self._decide(env.request_id)
        elif auction.quorum and len(auction.bids) == auction.enough:      # just reached: the rest get a while
            deadline = self.auctions[env.request_id][1] + self.world.cfg.bid_timeout
            self.sim.set_timer(self.name, f"deadline:{env.request_id}",
                               min(deadline, self.sim.now + self.world.cfg.straggler_s))

    def on_timer(self, key: str) -> None:
        rid = int(key.split(":", 1)[1])
        if rid in self.auctions:
            self.auctions[rid][0].on_deadline()
            self._decide(rid)

    def _decide(self, rid: int) -> None:
        auction, started = self.auctions.pop(rid)
        self.sim.cancel_timer(self.name, f"deadline:{rid}")
        ranked = auction.ranked()
        if not ranked:
            self.world.unplaced += 1
            return
        won = ranked[0]
        self.world.placements.append((won.host, won.price, min(b.price for b in ranked),
                                      self.sim.now - started, len(ranked)))
        self.send(Send(won.host, Envelope(PROTOCOL, VERSION, "spawn", rid, {})))


class PlacementWorld:
    def __init__(self, cfg: PlacementConfig, seed: int) -> None:
        self.cfg = cfg
        self.sim = Simulator(seed, Network(cfg.latency))
        self.host_names: list[str] = []
        self.hosts: dict[str, HostNode] = {}
        self.dead: set[str] = set()
        self.placements: list[tuple[str, float, float, float, int]] = []   # host, won, lowest, wait, bids
        self.unplaced = 0

    def build(self) -> None:
        rng = self.sim.stream("placement/world")
        for i in range(self.cfg.hosts):
            name = f"h{i}"
            node = HostNode(self, name, rng.choice(self.cfg.prices), rng.choice(self.cfg.cpus))
            self.sim.add_node(name, node)
            self.host_names.append(name)
            self.hosts[name] = node
        for name in rng.sample(self.host_names, int(self.cfg.hosts * self.cfg.dead_fraction)):
            self.sim.crash(name)
            self.dead.add(name)
        spawners = []
        for i in range(self.cfg.spawners):
            s = SpawnerNode(self, f"s{i}")
            self.sim.add_node(s.name, s)
            spawners.append(s)
        at = 0.0
        for k in range(self.cfg.tasks):
            at += rng.expovariate(self.cfg.rate)
            self.sim.call_at(at, spawners[k % len(spawners)].call_for_bids)

    def run(self) -> None:
        end = self.cfg.tasks / self.cfg.rate * 3 + self.cfg.bid_timeout * 4 + 1.0
        self.sim.run(until=end)

    def report(self) -> dict[str, Any]:
        c = self.cfg
        waits = sorted(p[3] for p in self.placements)
        on_dead = sum(1 for p in self.placements if p[0] in self.dead)
        not_cheapest = sum(1 for p in self.placements if p[1] > p[2])
        per_cpu: dict[tuple[float, int], list[float]] = {}
        for h in self.hosts.values():
            if h.name not in self.dead:
                per_cpu.setdefault((h.price, h.cpus), []).append(h.placed / h.cpus)
        spread = {f"price {p:g}, {n} cpus": round(max(v) - min(v), 2) for (p, n), v in sorted(per_cpu.items())}
        by_price = {f"{p:g}": sum(1 for x in self.placements if self.hosts[x[0]].price == p) for p in c.prices}
        ok = (len(self.placements) == c.tasks and self.unplaced == 0 and on_dead == 0 and not_cheapest == 0)
        return {
            "hosts": c.hosts, "dead_hosts": len(self.dead), "spawners": c.spawners, "tasks": c.tasks,
            "asked_per_task": c.ask, "placed": len(self.placements), "unplaced": self.unplaced,
            "placed_on_dead_hosts": on_dead, "not_on_the_cheapest_bid": not_cheapest,
            "bids_per_task_mean": round(sum(p[4] for p in self.placements) / max(1, len(self.placements)), 1),
            "time_to_place_p50_ms": round(waits[len(waits) // 2] * 1000, 2) if waits else None,
            "time_to_place_p99_ms": round(waits[int(len(waits) * 0.99)] * 1000, 2) if waits else None,
            "tasks_by_price": by_price,
            "tasks_per_cpu_spread_within_a_class": spread,
            "invariants_hold": ok,
        }


def run_placement(cfg: PlacementConfig, seed: int) -> dict[str, Any]:
    """Build, run and report scenario D, with the wall time of each part."""
    return run_world(lambda: PlacementWorld(cfg, seed))
