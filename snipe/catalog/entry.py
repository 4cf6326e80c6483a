"""What a reader gets back: the verified assertions about one URN, and their live view."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from snipe import authority
from snipe.assertion import Assertion


@dataclass
class Entry:
    """Everything believed about one URN: verified, authorized and merged across replicas.

    `records` keeps tombstones and expired leases (needed to merge replies correctly);
    `live()` is what applications usually want.
    """

    urn: str
    records: list[Assertion] = field(default_factory=list)

    def live(self, now_ms: int) -> list[Assertion]:
        return [a for a in self.records if a.is_live(now_ms)]

    def owner(self, admin: bytes, now_ms: int) -> str | None:
        o = authority.effective_owner(self.records, admin, now_ms)
        return str(o.value) if o else None

    def values(self, name: str, now_ms: int) -> dict[str, Any]:
        """Every live value of `name`, by writer key id."""
        return {a.signer.hex(): a.value for a in self.live(now_ms) if a.name == name}

    def value(self, name: str, now_ms: int, default: Any = None) -> Any:
        """The newest live value of `name` by any (authorized) writer."""
        best = None
        for a in self.live(now_ms):
            if a.name == name and (best is None or a.rank > best.rank):
                best = a
        return best.value if best is not None else default

    def as_dict(self, now_ms: int) -> dict[str, Any]:
        """name -> newest live value; reserved names (ownership, delegation) left out."""
        out: dict[str, tuple[tuple[int, bytes], Any]] = {}
        for a in self.live(now_ms):
            if authority.is_reserved(a.name):
                continue
            if a.name not in out or a.rank > out[a.name][0]:
                out[a.name] = (a.rank, a.value)
        return {k: v for k, (_, v) in sorted(out.items())}

    def next_expiry(self, now_ms: int) -> int | None:
        """When the next of the leases live at `now_ms` runs out: what the entry says changes
        then. Leases that already ran out (a dead process's stays in the entry) say nothing
        about that."""
        return min((a.expires_at_ms for a in self.records
                    if a.expires_at_ms is not None and a.expires_at_ms > now_ms and not a.deleted), default=None)
