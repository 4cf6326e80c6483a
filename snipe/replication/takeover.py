"""Who takes over a task whose host died: an I/O-free core every daemon runs.

A task spawned with `restart="on-host-failure"` (or a replicated task in standby mode) names
the hosts that may take it over: those its key was sealed to (snipe/replication/sealed.py).
Each daemon feeds the planner what the catalog says (`observe`: the watched tasks, the live
hosts, the time); the planner answers with the claims this host should make.

Exactly one survivor takes over, by two rules:
- ranking: the live candidates are ordered (a standby's own order, else rendezvous hashing on
  the task's URN); the candidate ranked k waits k * `stagger` seconds after it first saw the
  host dead, so the first one usually claims alone;
- the catalog decides races: a claim is an `_owner` claim on `<task URN>.takeover<n>` (n the
  incarnation being started), and the earliest claim wins at every replica (snipe/authority.py).
  The shell reads the claim back after a settling time and takes over only if it owns it.

Invariants: a (task, incarnation) is claimed at most once by a planner; nothing is claimed while
the task's host is live, nor for a host that is not a candidate.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Watched:
    """A task that may be taken over, as the catalog shows it."""

    urn: str
    host: str                          # the host it runs on now
    incarnation: int                   # 0 as first spawned, +1 per takeover
    candidates: tuple[str, ...]        # hosts that may take it over
    ordered: bool = False              # candidates are in preference order (standbys), else hashed


@dataclass(frozen=True)
class Claim:
    """Effect: claim the takeover of `urn` as `incarnation` by claiming `claim_urn`."""

    urn: str
    incarnation: int
    claim_urn: str


def claim_urn(urn: str, incarnation: int) -> str:
    return f"{urn}.takeover{incarnation}"


def ranking(w: Watched, live: Iterable[str]) -> list[str]:
    """The live candidates for `w`, best first."""
    alive = set(live)
    hosts = [h for h in w.candidates if h in alive and h != w.host]
    if w.ordered:
        return hosts
    return sorted(hosts, key=lambda h: hashlib.sha256(f"{w.urn}|{h}".encode()).digest())


class TakeoverPlanner:
    def __init__(self, me: str, *, stagger: float = 1.0) -> None:
        self.me = me
        self.stagger = stagger
        self.dead_since: dict[tuple[str, int], float] = {}     # (task, incarnation) -> first seen orphaned
        self.claimed: set[tuple[str, int]] = set()

    def observe(self, tasks: Iterable[Watched], live: Iterable[str], now: float) -> list[Claim]:
        alive = set(live)
        out: list[Claim] = []
        seen: set[tuple[str, int]] = set()
        for w in tasks:
            key = (w.urn, w.incarnation)
            if w.host in alive or w.host == self.me or key in self.claimed:
                continue
            seen.add(key)
            since = self.dead_since.setdefault(key, now)
            order = ranking(w, alive)
            if self.me not in order:
                continue
            if now >= since + order.index(self.me) * self.stagger:
                self.claimed.add(key)
                out.append(Claim(w.urn, w.incarnation + 1, claim_urn(w.urn, w.incarnation + 1)))
        self.dead_since = {k: t for k, t in self.dead_since.items() if k in seen}   # host back, or taken over
        return out
