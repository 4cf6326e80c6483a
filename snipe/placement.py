"""Choosing a host for a new task: a pure function over the hosts' catalog entries.

A host qualifies when its lease is live (`alive`), it is not draining, and its metadata meets
every requirement predicate (snipe/query.py). Among those the least loaded wins: fewest tasks
per CPU, then lowest load per CPU, then the URN (so the choice is deterministic).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from snipe import hlc
from snipe.catalog.entry import Entry
from snipe.errors import NotFound
from snipe.query import Predicate, matches


def eligible(hosts: Mapping[str, Entry], requires: Sequence[Predicate], now_ms: int) -> list[str]:
    out = []
    for urn, entry in hosts.items():
        live = entry.live(now_ms)
        if entry.value("alive", now_ms) is not True or entry.value("draining", now_ms) is True:
            continue
        if entry.value("daemon", now_ms) is None or not matches(live, requires):
            continue
        out.append(urn)
    return out


def choose_host(hosts: Mapping[str, Entry], requires: Sequence[Predicate], now_ms: int,
                placed_since: Mapping[str, Sequence[int]] | None = None) -> str:
    """The URN of the best host for a new task, or NotFound saying why none fits.

    `placed_since` lists, per host, when (ms) this client placed tasks there: those newer than
    the host's own `tasks` count are added to it, so a burst of spawns spreads out instead of
    all landing on the host that looked idlest at its last lease refresh.
    """
    candidates = eligible(hosts, requires, now_ms)
    if not candidates:
        alive = [u for u, e in hosts.items() if e.value("alive", now_ms) is True]
        if not alive:
            raise NotFound("no host is alive in the catalog; start a snipe-daemon (or snipe.init() locally)")
        wanted = " and ".join(f"{n} {op} {v!r}" for n, op, v in requires) or "nothing"
        raise NotFound(f"no live, non-draining host meets the requirements ({wanted}); "
                       f"{len(alive)} host(s) are alive")

    def load(urn: str) -> tuple[float, float, str]:
        e = hosts[urn]
        cpus = max(1, int(e.value("cpus", now_ms, 1) or 1))
        tasks = float(e.value("tasks", now_ms, 0) or 0)
        counted_at = max((hlc.physical_ms(a.ts) for a in e.live(now_ms) if a.name == "tasks"), default=0)
        tasks += sum(1 for t in (placed_since or {}).get(urn, ()) if t > counted_at)
        per_cpu = float(e.value("load_per_cpu", now_ms, 0.0) or 0.0)
        return (tasks / cpus, per_cpu, urn)

    return min(candidates, key=load)
