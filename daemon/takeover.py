"""The shell around snipe/replication/takeover.py: watch for orphaned tasks and claim them.

A thread with its own catalog client sweeps every SWEEP_S: the live hosts, and the tasks that
name this host `on_call` (restartable or standby-replicated tasks whose key was sealed to it,
tasks in mode "all" with a copy placed here): two catalog queries a sweep. The planner says which to claim; a
claim is an `_owner` claim on `<task>.takeover<n>`, read back after CLAIM_SETTLE_S (the
earliest claim wins at every replica). A won claim goes to the daemon's main thread (`won`),
which starts the task (daemon/server.py, `_take_over`). A host named a standby of a replicated
task is asked to hold its code (`stand_by`), so a promotion does not depend on the dead host;
a host named in the `copies` of a task in mode "all" is asked to run its copy (`run_copy`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from snipe.catalog.client import CatalogClient
from snipe.errors import NotAuthorized, SnipeError
from snipe.identity import Identity
from snipe.replication.takeover import Claim, TakeoverPlanner, Watched

log = logging.getLogger("snipe.daemon")

SWEEP_S = 1.0
CLAIM_SETTLE_S = 0.5
STAGGER_S = 1.5
COPY_ASK_AGAIN_S = 5.0


def watched_from(urn: str, values: dict[str, Any]) -> Watched | None:
    """A task the catalog lists with a restart policy, if it is one to watch."""
    keys = values.get("takeover_keys")
    host = values.get("host")
    if values.get("state") != "running" or not isinstance(keys, dict) or not isinstance(host, str):
        return None
    standbys = values.get("standbys")
    order = tuple(str(h) for h in standbys) if isinstance(standbys, list) else tuple(sorted(str(h) for h in keys))
    incarnation = values.get("incarnation", 0)
    return Watched(urn, host, incarnation if isinstance(incarnation, int) else 0,
                   tuple(h for h in order if h in keys), ordered=isinstance(standbys, list))


class TakeoverWatcher:
    def __init__(self, host_urn: str, identity: Identity, catalog: list[str], admin_key: bytes,
                 won: Callable[[Claim, dict[str, Any]], None], stand_by: Callable[[str], None],
                 run_copy: Callable[[dict[str, Any]], None]) -> None:
        self.host_urn, self.identity, self.catalog_addrs, self.admin_key = host_urn, identity, catalog, admin_key
        self.won = won
        self.stand_by = stand_by          # called once per code URN of a task we are a standby of
        self.held: set[str] = set()
        self.run_copy = run_copy          # called once per copy of a task in mode "all" placed on this host
        self.copies_asked: dict[str, float] = {}     # task -> when we last asked for our copy (asked again later)
        self.planner = TakeoverPlanner(host_urn, stagger=STAGGER_S)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="snipe-takeover", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        catalog = CatalogClient(self.catalog_addrs, self.identity, self.admin_key, timeout=5.0)
        try:
            while not self._stop.wait(SWEEP_S):
                try:
                    self._sweep(catalog)
                except SnipeError as exc:
                    log.warning("takeover sweep failed: %s", exc)
                except Exception:      # a bug here must not end the sweeps for good
                    log.exception("takeover sweep failed")
        finally:
            catalog.close()

    def _sweep(self, catalog: CatalogClient) -> None:
        now = int(time.time() * 1000)
        live = {u for u, e in catalog.query("urn:snipe:host:").items() if e.value("alive", now) is True}
        if self.host_urn not in live:
            return                      # we are cut off ourselves: leave it to the others
        tasks: dict[str, dict[str, Any]] = {}
        for urn, entry in catalog.query("urn:snipe:proc:", [("on_call", "contains", self.host_urn)]).items():
            values = entry.as_dict(now)
            if isinstance(values.get("takeover_keys"), dict) and self.host_urn in values["takeover_keys"]:
                tasks[urn] = values
            copies = values.get("copies")
            if (time.monotonic() - self.copies_asked.get(urn, -COPY_ASK_AGAIN_S) >= COPY_ASK_AGAIN_S
                    and isinstance(copies, list) and self.host_urn in copies[1:]
                    and values.get("state") == "running" and isinstance(values.get("copy_keys"), dict)):
                self.copies_asked[urn] = time.monotonic()       # the daemon skips a copy it started
                self.run_copy({**values, "urn": urn, "copy": copies.index(self.host_urn)})
        watched = [w for u, v in tasks.items() if (w := watched_from(u, v)) is not None]
        for values in tasks.values():
            code = values.get("code")
            if self.host_urn in (values.get("standbys") or []) and isinstance(code, str) and code not in self.held:
                self.held.add(code)
                self.stand_by(code)
        for claim in self.planner.observe(watched, live, time.monotonic()):
            if self._claim(catalog, claim):
                log.warning("%s takes over %s as incarnation %d", self.host_urn, claim.urn, claim.incarnation)
                self.won(claim, tasks[claim.urn])

    def _claim(self, catalog: CatalogClient, claim: Claim) -> bool:
        try:
            catalog.claim(claim.claim_urn)
        except NotAuthorized:
            return False                # another host claimed it first
        if self._stop.wait(CLAIM_SETTLE_S):
            return False
        try:
            entry = catalog.get(claim.claim_urn, r=len(self.catalog_addrs))   # every replica's view, if all answer
        except SnipeError:
            entry = catalog.get(claim.claim_urn)
        return entry.owner(self.admin_key, int(time.time() * 1000)) == self.identity.key_id
