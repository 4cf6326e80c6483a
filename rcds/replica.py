"""The replica core: accept, refuse and expire assertions. No I/O.

`ingest` is the one door through which assertions enter a replica, whether a client wrote them
or a peer pushed them. Each is decoded, checked against what is held (newer wins; an identical
one is a no-op), verified (Ed25519), authorized (snipe/authority.py) and, if it passes, stored
with its log entry, digest update, timers and admissions in one storage transaction.

Two doors, one rule set. A client's write is checked in full against this replica's current view:
signature, admission, ownership and delegation, clock skew. A record a peer replica pushes
was already checked in full by the replica its writer talked to, so here it needs a valid
signature by an admitted key, and no more: ownership and delegation depend on what a
replica happened to see first (two racing owner claims, a delegation revoked while a write
was in flight), and checking it again would leave replicas that saw events in different
orders holding different sets forever. Readers re-check ownership and delegation on every
read (snipe/authority.visible), so a record that lost a race is stored everywhere alike and believed nowhere.

Group commit: inside `with replica.batch():` every ingest joins one storage transaction, which
commits when the block ends; nothing in it is acknowledged before that.

Invariants:
- replicas that received the same records, in any order, hold the same records;
- nothing that fails a check is stored, and each refusal says which check failed;
- a write is never refused for being identical to what is held (retries are idempotent);
- a tombstone or an expired record is remembered for `gc_grace_ms` after it stops being live,
  so a replica that missed it cannot push the older value back; a tombstone of a reserved name
  (an ownership claim or a delegation, which prove admissions) is remembered for good;
- `recently_held(raw)` is true only for bytes a recent ingest accepted (stored, or found
  identical to what is held, or past its grace) that committed or belongs to the batch still
  open (whose fate any new ingest shares): ingesting them again would change nothing, so the
  replication core may skip them undecoded when a peer pushes them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from rcds.storage import EXPIRE, Storage, WriteTxn
from snipe import authority, hlc
from snipe.assertion import Assertion, check_name, decode_assertion
from snipe.errors import CodecError, NotAuthorized, SignatureError, SnipeError, StaleWrite, TooLarge

DEFAULT_GC_GRACE_MS = 24 * 3600 * 1000
DEFAULT_MAX_SKEW_MS = 30_000
RECENT_RECORDS = 8192          # how many recently held records `recently_held` remembers,
RECENT_MAX_BYTES = 4096        # of at most this size each (a bigger one is simply checked again)


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
        watched_urns: Collection[str] = (),
    ) -> None:
        self.storage = storage
        self.admin_key = admin_key
        self.gc_grace_ms = gc_grace_ms
        self.max_skew_ms = max_skew_ms
        # Which of `watched_urns` changed (a record stored, expired or forgotten); the shell clears it.
        self.watched_urns = frozenset(watched_urns)
        self.changed: set[str] = set()
        self._batch: ExitStack | None = None
        self._txn: WriteTxn | None = None
        self._uncommitted: set[bytes] = set()
        self._recent: OrderedDict[bytes, None] = OrderedDict()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Group commit: every `ingest` inside the block goes into one storage transaction, begun
        by the first of them (a block that ingests nothing costs no transaction)."""
        if self._batch is not None:
            yield
            return
        try:
            with ExitStack() as stack:
                self._batch = stack
                yield
        finally:
            self._batch = self._txn = None
            held, self._uncommitted = self._uncommitted, set()
        for raw in held:                  # reached only once the transaction committed
            if raw not in self._recent:
                self._recent[raw] = None
                if len(self._recent) > RECENT_RECORDS:
                    self._recent.popitem(last=False)

    def recently_held(self, raw: bytes) -> bool:
        """Whether these very bytes were accepted (or found held) by a recent ingest, committed
        or in the batch still open."""
        return raw in self._recent or raw in self._uncommitted

    def ingest(self, records: list[bytes | Assertion], now_ms: int, *, from_peer: bool = False) -> list[IngestResult]:
        if self._batch is None:           # not inside a batch: this ingest is one
            with self.batch():
                return self._ingest(records, now_ms, from_peer)
        return self._ingest(records, now_ms, from_peer)

    def _ingest(self, records: list[bytes | Assertion], now_ms: int, from_peer: bool) -> list[IngestResult]:
        decoded: list[Assertion | Refused] = []
        for r in records:
            try:
                decoded.append(r if isinstance(r, Assertion) else decode_assertion(r))
            except (CodecError, TooLarge) as exc:
                decoded.append(Refused(exc))
        txn = self._writing()
        results: list[IngestResult] = []
        for raw, item in zip(records, decoded, strict=True):
            result = item if isinstance(item, Refused) else self._ingest_one(txn, item, now_ms, from_peer)
            if isinstance(result, Accepted) and isinstance(raw, bytes) and len(raw) <= RECENT_MAX_BYTES:
                self._uncommitted.add(raw)
            results.append(result)
        return results

    def _writing(self) -> WriteTxn:
        """The open batch's storage transaction, begun on first use."""
        assert self._batch is not None
        if self._txn is None:
            self._txn = self._batch.enter_context(self.storage.write())
        return self._txn

    def _ingest_one(self, txn: WriteTxn, a: Assertion, now_ms: int, from_peer: bool) -> IngestResult:
        if not from_peer and (a.ts == 0 or hlc.physical_ms(a.ts) > now_ms + self.max_skew_ms):
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
        try:                              # new here: it must leave room for its timers' keys
            check_name(a.name, a.urn)
        except CodecError as exc:
            return Refused(exc, a)
        gc_at = self._gc_at(a)
        if gc_at is not None and gc_at <= now_ms:
            # Past its grace period: every replica forgets it, so storing it would only resurrect it.
            return Accepted(a, 0, new=False)
        try:
            a.verify()
        except SignatureError as exc:
            return Refused(SignatureError(f"{a.describe()}: {exc}"), a)
        # Ownership, delegation and admissions depend on the URN's reserved names alone.
        reserved = txn.reserved(a.urn) if not from_peer or authority.is_reserved(a.name) else []
        try:
            if from_peer:
                authority.check_admitted(a, self.admin_key, txn.is_admitted)
            else:
                authority.check_write(a, reserved, self.admin_key, txn.is_admitted, now_ms)
        except NotAuthorized as exc:
            return Refused(exc, a)
        rev = txn.store(a, held, a.expires_at_ms if not a.deleted else None, gc_at)
        if authority.is_reserved(a.name):
            after = [h for h in reserved if h.key != a.key] + [a]
            self._update_admissions(txn, a.urn, reserved, after, now_ms, now_ms)
        if a.urn in self.watched_urns:
            self.changed.add(a.urn)
        return Accepted(a, rev, new=True)

    def _gc_at(self, a: Assertion) -> int | None:
        if a.deleted:
            # A withdrawn claim, delegation or admission is remembered for good: once its
            # tombstone were forgotten, a replica that was down past the grace (or a tampered
            # one) could push the genuine, older grant back, and readers would believe it again.
            # There are few such deletes; ordinary names are forgotten after the grace.
            if authority.is_reserved(a.name):
                return None
            return hlc.physical_ms(a.ts) + self.gc_grace_ms
        exp = a.expires_at_ms
        return exp + self.gc_grace_ms if exp is not None else None

    def _update_admissions(self, txn: WriteTxn, urn: str, before: list[Assertion], after: list[Assertion],
                           before_ms: int, after_ms: int) -> None:
        """Recompute the keys this URN admits, as of before and after the change: an owner claim
        arriving after a delegation (in any order) must come out the same."""
        def grants(held: list[Assertion], at: int) -> set[bytes]:
            return {k for a in held for k in authority.admissions_granted(a, held, self.admin_key,
                                                                            txn.is_host_key, at)}
        old, new = grants(before, before_ms), grants(after, after_ms)
        for key in old - new:
            txn.unadmit(key, urn)
        for key in new - old:
            txn.admit(key, urn)

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
                    if a.expires_at_ms != when or a.deleted:
                        continue
                    txn.log_expiry(a)
                    if authority.is_reserved(a.name):
                        reserved = txn.reserved(a.urn)
                        self._update_admissions(txn, a.urn, reserved, reserved, when - 1, max(now_ms, when))
                elif self._gc_at(a) == when:
                    txn.forget(a)
                else:
                    continue
                if a.urn in self.watched_urns:
                    self.changed.add(a.urn)
        return len(due)
