"""Placement by bids: hosts bid for a task, the spawner takes the cheapest (no I/O here).

Placement from the catalog (snipe/placement.py) reads what each host published at its last
lease refresh. Bidding asks the hosts themselves, as OCEAN's and HUBzero's markets do: each
daemon answers a call for bids with a price computed from what it knows this moment (`bid`),
and the spawner's `Auction` takes the lowest within a deadline.

A host's bid is its operator's `price` (per CPU-second, `[daemon] price`, default 1.0) times
how busy the task would find it: 1 + (its running tasks + this one) per CPU + its load per CPU.
So an idle host at price 1 bids about 1 + 1/cpus, a host whose operator charges twice as much
bids twice as high at the same load, and a busy cheap host may still lose to an idle dear one.
Equal bids (hosts that ask nothing all bid 0) go to the least busy.
A host refuses (with its reason) when it is draining, when it does not meet the task's
requirement predicates, or when its bid is above the caller's `max_price`.

The auction: every candidate asked gets until the deadline; a refusal or silence is noted with
its reason; the winner is the lowest bid (then the least busy, then by host URN, so every
spawner facing the same bids picks alike); no bid at all is a NotFound saying why each host did
not bid. Once all but a quarter of the hosts asked have bid (`quorum`), the caller waits only a
short while more for the rest: a host that died since its last lease would otherwise hold every
call for bids to the full deadline (the simulator showed every call taking it, with 5% of the
hosts dead).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from snipe.errors import ConfigError, NotFound
from snipe.query import Predicate, matches

DEFAULT_PRICE = 1.0


@dataclass(frozen=True)
class HostState:
    """What a daemon knows of its host when asked for a bid."""

    host: str
    price: float
    cpus: int
    running_tasks: int
    load_per_cpu: float
    draining: bool
    metadata: Mapping[str, Any]         # what it publishes (arch, memory, ...), for the predicates


@dataclass(frozen=True)
class Bid:
    host: str
    price: float                        # the lower the better
    detail: Mapping[str, Any] = field(default_factory=dict)
    busy: float = 0.0                   # how busy the task would find the host: breaks ties (free hosts bid 0)


@dataclass(frozen=True)
class Refusal:
    host: str
    reason: str


@dataclass(frozen=True)
class _Fact:
    """A metadata item shaped as query.matches reads assertions (name, value, live)."""

    name: str
    value: Any


def check_price(value: Any, what: str = "price") -> float:
    """A price or price cap from a config file or a caller: a finite number >= 0."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"{what} must be a number >= 0, not {value!r}")
    return float(value)


def bid(state: HostState, requires: Sequence[Predicate], max_price: float | None = None) -> Bid | Refusal:
    """This host's answer to a call for bids for one task."""
    if state.draining:
        return Refusal(state.host, "draining: it takes no new tasks")
    if not matches([_Fact(k, v) for k, v in state.metadata.items()], requires):
        wanted = " and ".join(f"{n} {op} {v!r}" for n, op, v in requires)
        return Refusal(state.host, f"does not meet the requirements ({wanted})")
    cpus = max(1, state.cpus)
    busy = (state.running_tasks + 1) / cpus + max(0.0, state.load_per_cpu)
    price = state.price * (1.0 + busy)
    if max_price is not None and price > max_price:
        return Refusal(state.host, f"its bid {price:.6g} is above the price cap {max_price:g}")
    return Bid(state.host, price, {"price_per_cpu_s": state.price, "running_tasks": state.running_tasks,
                                   "cpus": cpus, "load_per_cpu": round(state.load_per_cpu, 3)}, busy)


class Auction:
    """One call for bids: `on_bid`/`on_refusal` as answers come, `on_deadline` when time is up;
    `winner()` once `done`."""

    def __init__(self, hosts: Sequence[str], enough: int | None = None) -> None:
        if not hosts:
            raise NotFound("no live host to ask for a bid; start a snipe-daemon (or snipe.init() locally)")
        self.waiting = set(hosts)
        self.bids: dict[str, Bid] = {}
        self.refusals: dict[str, str] = {}
        self.enough = enough if enough is not None else max(1, len(self.waiting) - len(self.waiting) // 4)

    @property
    def done(self) -> bool:
        return not self.waiting

    @property
    def quorum(self) -> bool:
        """Enough bids that the rest need only a short wait (see the module docstring)."""
        return len(self.bids) >= self.enough

    def on_bid(self, b: Bid) -> None:
        if b.host in self.waiting:
            self.waiting.discard(b.host)
            self.bids[b.host] = b

    def on_refusal(self, r: Refusal) -> None:
        if r.host in self.waiting:
            self.waiting.discard(r.host)
            self.refusals[r.host] = r.reason

    def on_deadline(self) -> None:
        for host in sorted(self.waiting):
            self.refusals[host] = "did not bid in time"
        self.waiting.clear()

    def ranked(self) -> list[Bid]:
        """The bids, best first: the cheapest, then the least busy (hosts that ask nothing all bid
        0, and would otherwise take every task in URN order), then by URN."""
        return sorted(self.bids.values(), key=lambda b: (b.price, b.busy, b.host))

    def winner(self) -> Bid:
        """The lowest bid; NotFound naming why each host did not bid, if none did."""
        ranked = self.ranked()
        if ranked:
            return ranked[0]
        why = "; ".join(f"{h.rsplit(':', 1)[-1]}: {r}" for h, r in sorted(self.refusals.items()))
        raise NotFound(f"no host bid for the task ({why})")
