"""Who may connect to a server of ours: a key the cluster admitted, checked through the catalog.

CurveZMQ tells a server only the client's X25519 key. `CatalogAdmission` maps it back to the
Ed25519 key it derives from (a replica keeps that index for admitted keys) and then verifies the
admission itself (snipe/catalog/client.py `is_admitted`), caching answers briefly. Its methods
run in the ZAP handler's thread, so it keeps a catalog client of its own there.
"""

from __future__ import annotations

import logging
import threading
import time

from snipe.catalog.client import CatalogClient
from snipe.errors import SnipeError
from snipe.identity import Identity

log = logging.getLogger("snipe.admission")


class CatalogAdmission:
    def __init__(self, catalog: list[str], identity: Identity, admin_key: bytes, *, always: tuple[bytes, ...] = (),
                 ok_ttl: float = 30.0, no_ttl: float = 2.0) -> None:
        self.catalog, self.identity, self.admin_key = catalog, identity, admin_key
        self.always = {admin_key, identity.public_key, *always}
        self.ok_ttl, self.no_ttl = ok_ttl, no_ttl
        self._cache: dict[bytes, tuple[bool, float]] = {}
        self._local = threading.local()
        self._clients: list[CatalogClient] = []

    def _client(self) -> CatalogClient:
        client = getattr(self._local, "client", None)
        if client is None:
            client = CatalogClient(self.catalog, self.identity, self.admin_key, timeout=3.0)
            self._local.client = client
            self._clients.append(client)
        return client

    def resolve(self, curve: bytes) -> bytes | None:
        try:
            return self._client().key_of_curve(curve)
        except SnipeError as exc:
            log.warning("cannot resolve a client's key: %s", exc)
            return None

    def admit(self, key: bytes) -> bool:
        if key in self.always:
            return True
        hit = self._cache.get(key)
        now = time.monotonic()
        if hit is not None and hit[1] > now:
            return hit[0]
        try:
            ok = self._client().is_admitted(key)
        except SnipeError as exc:
            log.warning("cannot check admission of %s…: %s", key.hex()[:16], exc)
            return False
        self._cache[key] = (ok, now + (self.ok_ttl if ok else self.no_ttl))
        return ok

    def close(self) -> None:
        for c in self._clients:
            c.close()
        self._clients.clear()
