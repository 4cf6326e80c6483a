"""Who may write what: ownership, delegation and admission, as pure functions.

Rules (replicas enforce them on every write; readers re-check them on every read):
- A URN belongs to its owner, named by an `_owner` assertion whose value is the owner's key id.
  A key claims a proc, group, code or file URN by signing `_owner` = its own key id; if several
  keys claim one URN, the earliest claim (lowest timestamp, then signature) wins everywhere.
  Host and user URNs are assigned by the cluster's admin key (an admin-signed `_owner`), and
  an admin-signed `_owner` overrides any claim.
- The owner (or the admin) may write any name. The owner delegates with
  `_delegate.<key id>` (or `_delegate.*` for every admitted key) whose value is a list of name
  prefixes the delegate may write ("" means every name); an empty list revokes.
- A key may write at all only if admitted: it is the admin key, or the admin made it the owner
  of a host or user URN, or a host key delegated to it on a proc URN it owns (a daemon vouching
  for the task it started).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from snipe.assertion import Assertion
from snipe.errors import NotAuthorized
from snipe.urn import parse_urn

OWNER = "_owner"
DELEGATE_PREFIX = "_delegate."
ANY_KEY = "*"
ADMIN_ASSIGNED_KINDS = ("host", "user")


def is_reserved(name: str) -> bool:
    return name.startswith("_")


def effective_owner(held: Iterable[Assertion], admin: bytes, now_ms: int) -> Assertion | None:
    """The `_owner` assertion that counts among those held for one URN."""
    assigned = None
    claimed = None
    for a in held:
        if a.name != OWNER or not a.is_live(now_ms) or not isinstance(a.value, str):
            continue
        if a.signer == admin:
            if assigned is None or a.rank > assigned.rank:
                assigned = a
        elif a.value == a.signer.hex() and (claimed is None or a.rank < claimed.rank):
            claimed = a
    return assigned or claimed


def delegated_prefixes(held: Iterable[Assertion], owner_key: bytes, writer: bytes, now_ms: int) -> list[str]:
    names = (DELEGATE_PREFIX + writer.hex(), DELEGATE_PREFIX + ANY_KEY)
    out: list[str] = []
    for a in held:
        if a.name in names and a.signer == owner_key and a.is_live(now_ms) and isinstance(a.value, list):
            out.extend(p for p in a.value if isinstance(p, str))
    return out


def check_admitted(a: Assertion, admin: bytes, is_admitted: Callable[[bytes], bool]) -> None:
    """Raise NotAuthorized unless the signer is the admin or an admitted key."""
    if a.signer != admin and not is_admitted(a.signer):
        raise NotAuthorized(
            f"{a.urn}: key {a.signer.hex()[:16]}… is not admitted to this cluster; an admin must assign it a "
            "host or user URN, or a daemon must vouch for it")


def check_write(
    a: Assertion,
    held: list[Assertion],
    admin: bytes,
    is_admitted: Callable[[bytes], bool],
    now_ms: int,
) -> None:
    """Raise NotAuthorized unless `a` may be written given what is `held` for its URN (of which
    only the reserved names count: ownership and delegation)."""
    signer = a.signer.hex()
    check_admitted(a, admin, is_admitted)
    if a.signer == admin:
        return
    kind = parse_urn(a.urn).kind
    others = [h for h in held if h.key != a.key]
    owner = effective_owner(others, admin, now_ms)
    if a.name == OWNER:
        if kind in ADMIN_ASSIGNED_KINDS:
            raise NotAuthorized(f"{a.urn}: {kind} URNs are assigned by the admin key, not claimed; ask an admin key")
        if not a.deleted and a.value != signer:
            raise NotAuthorized(f"{a.urn}: an _owner claim must name its own signer {signer[:16]}…")
        if owner is not None and owner.value != signer and (owner.signer == admin or owner.rank < a.rank):
            raise NotAuthorized(f"{a.urn} is owned by key {str(owner.value)[:16]}…; ask its owner or an admin key")
        return
    if owner is None:
        raise NotAuthorized(f"{a.urn} has no owner yet; claim it first by writing {OWNER} = your key id")
    if owner.value == signer:
        return
    if a.name.startswith(DELEGATE_PREFIX):
        raise NotAuthorized(f"{a.urn}: only its owner {str(owner.value)[:16]}… may delegate; ask its owner")
    owner_key = bytes.fromhex(str(owner.value))
    if any(a.name.startswith(p) for p in delegated_prefixes(held, owner_key, a.signer, now_ms)):
        return
    raise NotAuthorized(
        f"{a.urn} is owned by key {str(owner.value)[:16]}…, which has not delegated {a.name!r} to "
        f"key {signer[:16]}…; ask its owner or an admin key")


def admissions_granted(a: Assertion, held: list[Assertion], admin: bytes, is_host_key: Callable[[bytes], bool],
                       now_ms: int) -> list[bytes]:
    """The keys this live assertion admits (see the module rules)."""
    if not a.is_live(now_ms):
        return []
    kind = parse_urn(a.urn).kind
    if a.name == OWNER and a.signer == admin and kind in ADMIN_ASSIGNED_KINDS and isinstance(a.value, str):
        try:
            return [bytes.fromhex(a.value)]
        except ValueError:
            return []
    if (kind == "proc" and a.name.startswith(DELEGATE_PREFIX) and a.name != DELEGATE_PREFIX + ANY_KEY
            and isinstance(a.value, list) and any(isinstance(p, str) for p in a.value)):  # [] revokes
        owner = effective_owner(held, admin, now_ms)
        if owner is not None and owner.value == a.signer.hex() and (a.signer == admin or is_host_key(a.signer)):
            try:
                return [bytes.fromhex(a.name[len(DELEGATE_PREFIX):])]
            except ValueError:
                return []
    return []


def visible(held: list[Assertion], admin: bytes, now_ms: int) -> tuple[list[Assertion], list[tuple[Assertion, str]]]:
    """Split one URN's assertions into those a reader should believe and those to reject (with why).

    Readers cannot see admissions, so this checks ownership and delegation within the URN.
    """
    owner = effective_owner(held, admin, now_ms)
    good: list[Assertion] = []
    bad: list[tuple[Assertion, str]] = []
    for a in held:
        if a.signer == admin or a.name == OWNER:
            good.append(a)
            continue
        if owner is None:
            bad.append((a, "URN has no owner"))
            continue
        if owner.value == a.signer.hex():
            good.append(a)
            continue
        prefixes = delegated_prefixes(held, bytes.fromhex(str(owner.value)), a.signer, now_ms)
        if not a.name.startswith(DELEGATE_PREFIX) and any(a.name.startswith(p) for p in prefixes):
            good.append(a)
        else:
            bad.append((a, "signer is neither owner nor delegate"))
    return good, bad


def superseded(a: Assertion, held: Iterable[Assertion]) -> bool:
    """Whether `held` (one URN's records) shows how the signer of `a`, a record a reader does not
    believe, could once write it: its own `_owner` claim (it lost the race for the URN to a claim
    with an earlier timestamp that reached the replica later, or an admin took the URN over), a
    `_delegate.` record naming it, or a `_delegate.*` (granted by a claimant that lost the URN,
    or since revoked or narrowed). Replicas judge a write by the owner they hold when
    it arrives, so such records are genuine and stored everywhere: a reader drops them without
    counting them against the replica. That gives a tampered replica nothing it did not have:
    it could always leave a record out, which no reader can tell from never having had it.
    A record nothing in the URN's history explains still counts against its replica."""
    signer = a.signer
    own_delegation = DELEGATE_PREFIX + signer.hex()
    for h in held:
        if h is a:
            continue
        if h.name == OWNER and h.signer == signer:
            return True
        if h.name == own_delegation and h.signer != signer:     # a key cannot vouch for itself
            return True
        if h.name == DELEGATE_PREFIX + ANY_KEY and not is_reserved(a.name):
            return True         # a delegation to every key, since narrowed or revoked ([])
    return False
