"""The replica core: accept, refuse and expire assertions. No I/O.

`ingest` is the one door through which assertions enter a replica, whether a client wrote them
or a peer pushed them. Each is decoded, checked against what is held (newer wins; an identical
one is a no-op), verified (Ed25519), authorized (snipe/authority.py) and, if it passes, stored
with its log entry, digest update, timers and admissions in one storage transaction.

Invariants:
- nothing that fails any check is stored, and each refusal says which check failed;
- a write is never refused for being identical to what is held (retries are idempotent);
- a tombstone or an expired record is remembered for `gc_grace_ms` after it stops being live,
  so a replica that missed it cannot push the older value back.
"""

from __future__ import annotations

from dataclasses import dataclass

from rcds.storage import EXPIRE, Storage, WriteTxn
from snipe import authority, hlc
from snipe.assertion import Assertion, decode_assertion
from snipe.errors import CodecError, NotAuthorized, SignatureError, SnipeError, StaleWrite, TooLarge

DEFAULT_GC_GRACE_MS = 24 * 3600 * 1000
DEFAULT_MAX_SKEW_MS = 30_000


@dataclass(frozen=True, slots=True)
class Accepted:
    record: Assertion
    rev: int
    new: bool            # False: an identical record was already held


@dataclass(frozen=True, slots=True)
class Refused:
    error: SnipeError
    record: Assertion | None = None


IngestResult = Accepted | Refused


class Replica:
    def __init__(
        self,
        storage: Storage,
        admin_key: bytes,
        *,
        gc_grace_ms: int = DEFAULT_GC_GRACE_MS,
        max_skew_ms: int = DEFAULT_MAX_SKEW_MS,
    ) -> None:
        self.storage = storage
        self.admin_key = admin_key
        self.gc_grace_ms = gc_grace_ms
        self.max_skew_ms = max_skew_ms

    def ingest(self, records: list[bytes | Assertion], now_ms: int) -> list[IngestResult]:
        decoded: list[Assertion | Refused] = []
        for r in records:
            try:
                decoded.append(r if isinstance(r, Assertion) else decode_assertion(r))
            except (CodecError, TooLarge) as exc:
                decoded.append(Refused(exc))
        results: list[IngestResult] = []
        with self.storage.write() as txn:
            for item in decoded:
                results.append(item if isinstance(item, Refused) else self._ingest_one(txn, item, now_ms))
        return results

    def _ingest_one(self, txn: WriteTxn, a: Assertion, now_ms: int) -> IngestResult:
        if a.ts == 0 or hlc.physical_ms(a.ts) > now_ms + self.max_skew_ms:
            return Refused(StaleWrite(
                f"{a.describe()}: timestamp is {hlc.physical_ms(a.ts) - now_ms} ms in the future "
                f"(more than the {self.max_skew_ms} ms allowed); check the writer's clock"), a)
        held = txn.current(a)
        if held is not None:
            if held.rank == a.rank:
                return Accepted(held, 0, new=False)
            if held.rank > a.rank:
                return Refused(StaleWrite(
                    f"{a.describe()} is older than the held one at {held.ts}; re-read and write again"), a)
        gc_at = self._gc_at(a)
        if gc_at is not None and gc_at <= now_ms:
            # Past its grace period: every replica forgets it, so storing it would only resurrect it.
            return Accepted(a, 0, new=False)
        try:
            a.verify()
        except SignatureError as exc:
            return Refused(SignatureError(f"{a.describe()}: {exc}"), a)
        urn_held = txn.held(a.urn)
        try:
            authority.check_write(a, urn_held, self.admin_key, txn.is_admitted, now_ms)
        except NotAuthorized as exc:
            return Refused(exc, a)
        rev = txn.store(a, held, a.expires_at_ms if not a.deleted else None, gc_at)
        self._update_admissions(txn, a, held, urn_held, now_ms)
        return Accepted(a, rev, new=True)

    def _gc_at(self, a: Assertion) -> int | None:
        if a.deleted:
            return hlc.physical_ms(a.ts) + self.gc_grace_ms
        exp = a.expires_at_ms
        return exp + self.gc_grace_ms if exp is not None else None

    def _update_admissions(self, txn: WriteTxn, a: Assertion, previous: Assertion | None,
                           urn_held: list[Assertion], now_ms: int) -> None:
        others = [h for h in urn_held if h.key != a.key]
        if previous is not None:
            for key in authority.admissions_granted(previous, others, self.admin_key, txn.is_host_key, now_ms):
                txn.unadmit(key, a.urn)
        for key in authority.admissions_granted(a, [*others, a], self.admin_key, txn.is_host_key, now_ms):
            txn.admit(key, a.urn)

    def tick(self, now_ms: int, limit: int = 1000) -> int:
        """Fire due timers: log lease expiries (for watchers), forget what is past its grace.

        Returns how many timers fired; call again while it returns `limit`.
        """
        with self.storage.write() as txn:
            due = txn.due_timers(now_ms, limit)
            for when, what, key in due:
                txn.drop_timer(when, what, key)
                a = txn.record_by_key(key)
                if a is None:
                    continue
                if what == EXPIRE:
                    if a.expires_at_ms == when and not a.deleted:
                        txn.log_expiry(a)
                        for k in authority.admissions_granted(a, txn.held(a.urn), self.admin_key,
                                                              txn.is_host_key, when - 1):
                            txn.unadmit(k, a.urn)
                elif self._gc_at(a) == when:
                    txn.forget(a)
        return len(due)
