"""The daemon as multicast router (SNIPE 4.4): elections, router leases, and relaying.

A daemon stands as a router for a group when a process on its host joins and the election
rule says so (snipe/multicast/core.should_route); it then holds a `router.<host URN>` lease on
the group and renews it while the group has members here. Every turn it re-runs the election
for groups with local members, so a router that died is replaced. Relaying runs in the
daemon's messaging endpoint thread: each message is relayed once (Relay) to the members that
registered with this router and to the routers that have not had it yet. Who those are is read
from the group's catalog entry at most every VIEW_REFRESH_S per group (`_View`), not per message.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from snipe.catalog.client import CatalogClient, now_ms
from snipe.errors import SnipeError
from snipe.messaging.endpoint import Endpoint, Message
from snipe.messaging.routes import shared_networks
from snipe.multicast.core import DEFAULT_WANTED, MCAST_DATA, MCAST_DELIVER, Relay, pack, should_route, unpack
from snipe.multicast.groups import ROUTER, ensure_group, live_members, live_routers
from snipe.urn import validate_urn

log = logging.getLogger("snipe.daemon.mcast")

# How long a router relays with the same member and router lists before reading the group's
# (cached) entry again. The entry itself may be up to 0.5 s old; a member that left is dropped by
# its own Membership anyway, and a hop to a router that died just fails (the others cover it).
VIEW_REFRESH_S = 0.25


@dataclass(frozen=True, slots=True)
class _View:
    """What relaying needs from the group's entry, computed once per refresh."""

    at: float                      # time.monotonic() when computed
    expires_ms: int | None         # the earliest lease expiry in the entry it came from
    members: tuple[str, ...]       # members registered with this router
    routers: tuple[str, ...]       # live routers, this one included, sorted


class GroupRouter:
    def __init__(self, host_urn: str, address: str, catalog: CatalogClient, endpoint: Endpoint, lease_s: float,
                 wanted: int = DEFAULT_WANTED) -> None:
        self.host_urn, self.address, self.catalog, self.endpoint = host_urn, address, catalog, endpoint
        self.lease_s, self.wanted = lease_s, wanted
        self.local: dict[str, set[str]] = {}       # group -> members on this host
        self.routing: set[str] = set()
        self.lock = threading.Lock()
        self.relays: dict[str, Relay] = {}
        self.views: dict[str, _View] = {}
        self.relayed = 0
        endpoint.system_handlers[MCAST_DATA] = self._on_data
        self.next_refresh = 0.0

    # --- daemon thread: requests and leases ----------------------------------------------------
    def join(self, group: str, member: str) -> list[str]:
        group = validate_urn(group)
        ensure_group(self.catalog, group)
        with self.lock:
            self.local.setdefault(group, set()).add(member)
        self._elect(group)
        return sorted(live_routers(self.catalog.get(group), now_ms()))

    def leave(self, group: str, member: str) -> None:
        with self.lock:
            self.local.get(group, set()).discard(member)

    def _elect(self, group: str) -> None:
        now = now_ms()
        self.catalog.invalidate(group)
        routers = live_routers(self.catalog.get(group), now)
        ifs = {r: self._interfaces(r) for r in routers}
        mine = self._interfaces(self.host_urn)
        if should_route(self.host_urn, mine, ifs, shared_networks, self.wanted):
            self.catalog.set(group, ROUTER + self.host_urn, {"daemon": self.address}, ttl=self.lease_s)
            with self.lock:
                if group not in self.routing:
                    log.info("%s: now a router for %s", self.host_urn, group)
                self.routing.add(group)
        elif self.host_urn in routers:
            # Surplus (hosts elected themselves at once): withdraw the lease. Members move to the
            # keepers within a turn of their own; until then this daemon still relays what it gets.
            log.info("%s: stepping down as a router for %s (%d routers, %d wanted)", self.host_urn, group,
                     len(routers), self.wanted)
            self.catalog.delete(group, ROUTER + self.host_urn)
            with self.lock:
                self.routing.discard(group)

    def _interfaces(self, host: str) -> list[dict[str, Any]]:
        try:
            ifs = self.catalog.cached(host, max_age=10.0).value("interfaces", now_ms(), [])
        except SnipeError:
            return []
        return ifs if isinstance(ifs, list) else []

    def tick(self, now: float) -> None:
        """Renew router leases and re-run elections (about four times per lease)."""
        if now < self.next_refresh:
            return
        self.next_refresh = now + min(1.0, self.lease_s / 4)
        with self.lock:
            groups = {g for g, m in self.local.items() if m} | set(self.routing)
        for g in groups:
            with self.lock:
                has_members = bool(self.local.get(g))
            try:
                if has_members:
                    self._elect(g)
                elif g in self.routing:
                    self.catalog.set(g, ROUTER + self.host_urn, {"daemon": self.address}, ttl=self.lease_s)
            except SnipeError as exc:
                log.warning("multicast upkeep of %s failed: %s", g, exc)

    def status(self) -> dict[str, Any]:
        with self.lock:
            return {"routing": sorted(self.routing), "local": {g: sorted(m) for g, m in self.local.items()},
                    "relayed": self.relayed}

    # --- endpoint thread: relaying -------------------------------------------------------------
    def _view(self, group: str) -> _View | None:
        """The members registered here and the live routers, recomputed every VIEW_REFRESH_S
        (sooner when a lease in the entry it came from has expired)."""
        v = self.views.get(group)
        now = time.monotonic()
        if v is not None and now - v.at < VIEW_REFRESH_S and (v.expires_ms is None or v.expires_ms > now_ms()):
            return v
        catalog = self.endpoint.catalog
        if catalog is None:
            return None
        entry = catalog.cached(group, max_age=0.5)
        wall = now_ms()
        members = tuple(u for u, val in live_members(entry, wall).items() if self.host_urn in val.get("routers", []))
        routers = set(live_routers(entry, wall))
        routers.add(self.host_urn)
        v = self.views[group] = _View(now, entry.expires_at_ms(), members, tuple(sorted(routers)))
        return v

    def _on_data(self, m: Message) -> None:
        h, body = unpack(m.payload)
        view = self._view(h.group)
        if view is None:
            return
        relay = self.relays.get(h.group)
        if relay is None:
            relay = self.relays[h.group] = Relay(self.host_urn)
        out = relay.on_data(h, view.members, view.routers)
        if out is None:
            return
        self.relayed += 1
        payload = pack(out.header, body)
        submit = self.endpoint.submit
        for member in out.deliver_to:
            submit(member, MCAST_DELIVER, payload)
        for router in out.forward_to:
            submit(router, MCAST_DATA, payload)
