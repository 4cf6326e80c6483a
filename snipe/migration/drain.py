"""Emptying a host: stop new placements on it, then migrate every running task off it.

Each task goes to the host placement would choose for a new task (least loaded, live, not
draining), counting the tasks this drain already sent there. The migrations run side by side
(all asked at once on one connection to the host's daemon). A task that cannot move is left
running where it is, with the reason: most often it registered no on_checkpoint hook (it
cannot be resumed mid-computation, and restarting it from the beginning would silently throw
its progress away: that is for its owner to decide), or it made no snipe call within the
timeout (no safe point).
"""

from __future__ import annotations

import time
from typing import Any

from snipe.catalog.client import now_ms
from snipe.daemonclient import PROTOCOL, VERSION, DaemonClient
from snipe.errors import NotFound
from snipe.identity import Identity
from snipe.placement import choose_host
from snipe.runtime import session
from snipe.wire import Envelope, decode, encode


def drain(host: str, *, identity: Identity | None = None, migrate: bool = True,
          timeout: float = 120.0) -> dict[str, Any]:
    """Drain `host` (a name or URN). Returns {host, draining, moved: [{urn, to}], left: [{urn, reason}]}."""
    s = session()
    ident = identity or s.identity
    host_urn = host if host.startswith("urn:") else f"urn:snipe:host:{host}"
    address = s.catalog.get(host_urn).value("daemon", now_ms())
    if not isinstance(address, str):
        raise NotFound(f"{host_urn} has no daemon in the catalog")
    with DaemonClient(address, ident) as d:
        reply, _ = d.call("drain", {"on": True})
        tasks = [t["urn"] for t in d.call("ps")[0]["tasks"] if t.get("state") == "running"] if migrate else []
    result: dict[str, Any] = {"host": host_urn, "draining": reply["draining"], "moved": [], "left": []}
    if not tasks:
        return result
    hosts = {u: e for u, e in s.catalog.query("urn:snipe:host:").items() if u != host_urn}
    placed: dict[str, list[int]] = {}
    plan: dict[str, str] = {}
    for urn in tasks:
        try:
            target = choose_host(hosts, [], now_ms(), placed)
        except NotFound as exc:
            result["left"].append({"urn": urn, "reason": f"no other host can take it: {exc}"})
            continue
        plan[urn] = target
        placed.setdefault(target, []).append(now_ms())
    # One connection, every request on it at once (the daemon runs the migrations side by side),
    # the answers matched to the requests by id.
    with DaemonClient(address, ident) as d:
        asked: dict[int, str] = {}
        for i, (urn, target) in enumerate(plan.items(), start=1):
            env = Envelope(PROTOCOL, VERSION, "migrate", 10_000 + i, {"urn": urn, "host": target, "timeout": timeout})
            d.link.sock.send_multipart(encode(env))
            asked[env.request_id] = urn
        deadline = time.monotonic() + timeout + 30
        while asked and time.monotonic() < deadline:
            if not d.link.sock.poll(500):
                continue
            env, _ = decode(d.link.sock.recv_multipart())
            urn = asked.pop(env.request_id, None)
            if urn is None:
                continue
            if env.kind == "error":
                result["left"].append({"urn": urn, "reason": f"left running on {host_urn}: {env.body.get('message')}"})
            else:
                result["moved"].append({"urn": urn, "to": plan[urn]})
        for urn in asked.values():
            result["left"].append({"urn": urn, "reason": f"left running on {host_urn}: no answer from its daemon "
                                                         f"within {timeout + 30:g} s"})
    return result


__all__ = ["drain"]
