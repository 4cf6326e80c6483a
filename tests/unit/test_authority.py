"""Ownership, delegation and admission (snipe/authority.py): who may write what, as a replica
and as a reader see it. Every case is a list of held assertions in, a verdict out."""

from __future__ import annotations

import pytest

from snipe import authority, hlc
from snipe.assertion import Assertion, make_assertion
from snipe.authority import admissions_granted, check_write, effective_owner, visible
from snipe.errors import NotAuthorized
from snipe.identity import Identity

ADMIN, ALICE, BOB, CAROL, HOSTKEY, STRANGER = (Identity.from_seed(bytes([i]) * 32) for i in range(1, 7))
T0 = 1_700_000_000_000
NOW = T0 + 10_000
SHA = "sha256:" + "ab" * 32
PROC, GROUP, HOST, USER = "urn:snipe:proc:p1", "urn:snipe:group:g1", "urn:snipe:host:h1", "urn:snipe:user:u1"
CODE, FILE = f"urn:snipe:code:{SHA}", f"urn:snipe:file:{SHA}"
ADMITTED = {k.public_key for k in (ALICE, BOB, CAROL, HOSTKEY)}


def put(who: Identity, urn: str, name: str, value: object, at: int = 0, ttl_ms: int = 0, logical: int = 0) -> Assertion:
    return make_assertion(who, urn, name, value, hlc.pack(T0 + at, logical), ttl_ms)


def tomb(who: Identity, urn: str, name: str, at: int = 0) -> Assertion:
    return make_assertion(who, urn, name, None, hlc.pack(T0 + at), deleted=True)


def claim(who: Identity, urn: str = PROC, at: int = 0, logical: int = 0) -> Assertion:
    return put(who, urn, "_owner", who.key_id, at, logical=logical)


def assign(urn: str, to: Identity, at: int = 0) -> Assertion:
    return put(ADMIN, urn, "_owner", to.key_id, at)


def delegate(owner: Identity, urn: str, to: Identity | str, prefixes: list[str], at: int = 0,
             ttl_ms: int = 0) -> Assertion:
    who = to if isinstance(to, str) else to.key_id
    return put(owner, urn, f"_delegate.{who}", prefixes, at, ttl_ms)


def check(a: Assertion, held: list[Assertion], now: int = NOW) -> None:
    check_write(a, held, ADMIN.public_key, ADMITTED.__contains__, now)


def refusal(a: Assertion, held: list[Assertion], now: int = NOW) -> str:
    with pytest.raises(NotAuthorized) as info:
        check(a, held, now)
    return str(info.value)


def owner(held: list[Assertion], now: int = NOW) -> Assertion | None:
    return effective_owner(held, ADMIN.public_key, now)


# --- host and user URNs: assigned by the admin --------------------------------------------------
@pytest.mark.parametrize("urn", [HOST, USER])
def test_admin_assigns_host_and_user_owners(urn):
    a = assign(urn, ALICE)
    check(a, [])
    assert owner([a]) == a
    check(put(ALICE, urn, "cpus", 8, at=1), [a])


@pytest.mark.parametrize("urn", [HOST, USER])
def test_self_claim_of_host_or_user_is_refused(urn):
    message = refusal(claim(ALICE, urn), [])
    assert urn in message
    assert "ask an admin key" in message


def test_admin_assignments_newest_wins_over_any_claim():
    first, second = assign(HOST, ALICE, at=1), assign(HOST, BOB, at=2)
    assert owner([second, first]) == second
    assert owner([first, second]) == second


# --- proc, group, code and file URNs: claimed by their first writer ------------------------------
@pytest.mark.parametrize("urn", [PROC, GROUP, CODE, FILE])
def test_self_claim_of_proc_group_code_file(urn):
    c = claim(ALICE, urn)
    check(c, [])
    assert owner([c]) == c
    check(put(ALICE, urn, "state", "running", at=1), [c])


def test_claim_must_name_its_own_signer():
    forged = put(ALICE, PROC, "_owner", BOB.key_id)
    message = refusal(forged, [])
    assert PROC in message
    assert ALICE.key_id[:16] in message and "its own signer" in message
    assert owner([forged]) is None   # and a reader ignores it too


def test_second_claim_by_another_key_is_refused():
    first = claim(ALICE, at=1)
    message = refusal(claim(BOB, at=2), [first])
    assert message == f"{PROC} is owned by key {ALICE.key_id[:16]}…; ask its owner or an admin key"


def test_concurrent_claims_earliest_wins():
    early, late = claim(ALICE, at=1), claim(BOB, at=2)
    # A replica that saw the later claim first still takes the earlier one ...
    check(early, [late])
    # ... and every order of the held claims names the same owner.
    assert owner([early, late]) == early
    assert owner([late, early]) == early


def test_concurrent_claims_at_the_same_timestamp_break_ties_by_signature():
    a, b = claim(ALICE, at=1), claim(BOB, at=1)
    first = min(a, b, key=lambda x: x.rank)
    assert owner([a, b]) == owner([b, a]) == first


def test_owner_may_renew_its_claim_and_release_it():
    c = claim(ALICE, at=1)
    check(claim(ALICE, at=5), [c])
    check(tomb(ALICE, PROC, "_owner", at=6), [c])


def test_a_non_owner_cannot_tombstone_the_owners_claim():
    message = refusal(tomb(BOB, PROC, "_owner", at=6), [claim(ALICE, at=1)])
    assert PROC in message and "ask its owner or an admin key" in message


def test_expired_claim_leaves_the_urn_free():
    leased = put(ALICE, PROC, "_owner", ALICE.key_id, at=0, ttl_ms=1000)
    assert owner([leased], now=T0 + 999) == leased
    assert owner([leased], now=T0 + 1000) is None
    check(claim(BOB, at=2000), [leased], now=T0 + 2000)


def test_admin_override_beats_the_claim():
    c = claim(ALICE, at=1)
    override = put(ADMIN, PROC, "_owner", BOB.key_id, at=2)
    check(override, [c])
    held = [c, override]
    assert owner(held) == override
    check(put(BOB, PROC, "state", "moved", at=3), held)
    message = refusal(put(ALICE, PROC, "state", "mine", at=3), held)
    assert message.startswith(f"{PROC} is owned by key {BOB.key_id[:16]}…")
    assert message.endswith("ask its owner or an admin key")
    # Alice's renewed claim does not win it back: the admin assignment stands.
    assert refusal(claim(ALICE, at=4), held).endswith("ask its owner or an admin key")


def test_admin_writes_anything():
    check(put(ADMIN, PROC, "state", "killed", at=1), [claim(ALICE)])
    check(put(ADMIN, GROUP, "note", "no owner needed"), [])


def test_write_on_unowned_urn_is_refused():
    message = refusal(put(ALICE, PROC, "state", "running"), [])
    assert message == f"{PROC} has no owner yet; claim it first by writing _owner = your key id"


def test_non_owner_write_is_refused():
    message = refusal(put(BOB, PROC, "state", "x", at=1), [claim(ALICE)])
    assert message == (f"{PROC} is owned by key {ALICE.key_id[:16]}…, which has not delegated 'state' to key "
                       f"{BOB.key_id[:16]}…; ask its owner or an admin key")


# --- delegation ----------------------------------------------------------------------------------
def test_delegation_by_prefix():
    held = [claim(ALICE), delegate(ALICE, PROC, BOB, ["load.", "state"], at=1)]
    check(put(BOB, PROC, "load.1m", 0.5, at=2), held)
    check(put(BOB, PROC, "state", "up", at=2), held)
    check(put(BOB, PROC, "statement", "prefix, so allowed", at=2), held)
    message = refusal(put(BOB, PROC, "cpus", 4, at=2), held)
    assert PROC in message and "'cpus'" in message and "ask its owner or an admin key" in message
    # a delegation names one key: Carol got nothing
    assert "ask its owner" in refusal(put(CAROL, PROC, "load.1m", 1.0, at=2), held)


def test_delegation_to_every_key():
    held = [claim(ALICE), delegate(ALICE, PROC, "*", [""], at=1)]
    for who in (BOB, CAROL):
        check(put(who, PROC, "member", True, at=2), held)


def test_delegate_may_not_delegate_further():
    held = [claim(ALICE), delegate(ALICE, PROC, "*", [""], at=1)]
    message = refusal(delegate(BOB, PROC, CAROL, [""], at=2), held)
    assert PROC in message and ALICE.key_id[:16] in message and "ask" in message


def test_non_owner_delegation_is_refused():
    message = refusal(delegate(BOB, PROC, BOB, [""], at=1), [claim(ALICE)])
    assert PROC in message and "only its owner" in message and "ask" in message


def test_revocation_with_empty_list():
    grant = delegate(ALICE, PROC, BOB, ["state"], at=1)
    revoke = delegate(ALICE, PROC, BOB, [], at=2)
    assert revoke.key == grant.key   # it replaces the grant under the merge rule
    check(revoke, [claim(ALICE), grant])
    message = refusal(put(BOB, PROC, "state", "up", at=3), [claim(ALICE), revoke])
    assert "has not delegated 'state'" in message


def test_expired_delegation_stops_counting():
    held = [claim(ALICE), delegate(ALICE, PROC, BOB, [""], at=0, ttl_ms=1000)]
    check(put(BOB, PROC, "state", "up", at=500), held, now=T0 + 500)
    assert "ask its owner" in refusal(put(BOB, PROC, "state", "up", at=1500), held, now=T0 + 1500)


def test_delegations_of_a_former_owner_lapse_on_override():
    held = [claim(ALICE), delegate(ALICE, PROC, BOB, [""], at=1), put(ADMIN, PROC, "_owner", CAROL.key_id, at=2)]
    assert "ask its owner" in refusal(put(BOB, PROC, "state", "x", at=3), held)


def test_delegation_values_of_the_wrong_type_grant_nothing():
    held = [claim(ALICE), put(ALICE, PROC, f"_delegate.{BOB.key_id}", "state", at=1),
            put(ALICE, PROC, "_delegate.*", [1, b"state"], at=1)]
    assert "ask its owner" in refusal(put(BOB, PROC, "state", "x", at=2), held)


# --- admission -----------------------------------------------------------------------------------
def test_unadmitted_key_is_refused_everywhere():
    for a in (claim(STRANGER), put(STRANGER, PROC, "state", "x")):
        message = refusal(a, [claim(ALICE)])
        assert PROC in message
        assert STRANGER.key_id[:16] in message and "is not admitted" in message
        assert "an admin must assign it a host or user URN, or a daemon must vouch for it" in message


def admits(a: Assertion, held: list[Assertion], hosts=frozenset({HOSTKEY.public_key}), now: int = NOW) -> list[bytes]:
    return admissions_granted(a, held, ADMIN.public_key, hosts.__contains__, now)


def test_admissions_granted():
    to_alice = assign(USER, ALICE)
    assert admits(to_alice, [to_alice]) == [ALICE.public_key]
    assert admits(assign(HOST, HOSTKEY), []) == [HOSTKEY.public_key]
    # only the admin's _owner on host and user URNs admits
    assert admits(put(ADMIN, PROC, "_owner", ALICE.key_id), []) == []
    assert admits(put(ALICE, USER, "_owner", ALICE.key_id), []) == []
    assert admits(put(ADMIN, USER, "owner", ALICE.key_id), []) == []
    assert admits(put(ADMIN, USER, "_owner", "not hex"), []) == []
    assert admits(tomb(ADMIN, USER, "_owner"), []) == []
    leased = put(ADMIN, USER, "_owner", ALICE.key_id, ttl_ms=1000)
    assert admits(leased, [], now=T0 + 999) == [ALICE.public_key]
    assert admits(leased, [], now=T0 + 1000) == []


def test_a_host_vouches_for_its_tasks():
    c = claim(HOSTKEY)
    vouch = delegate(HOSTKEY, PROC, STRANGER, [""], at=1)
    assert admits(vouch, [c, vouch]) == [STRANGER.public_key]
    # not a host key: no admission (the delegation itself still stands on the URN)
    alice_claim = claim(ALICE)
    assert admits(delegate(ALICE, PROC, STRANGER, [""], at=1), [alice_claim]) == []
    # not the owner, a wildcard, a non-proc URN, a malformed key id: no admission
    assert admits(vouch, [claim(ALICE, at=-1), c]) == []
    assert admits(delegate(HOSTKEY, PROC, "*", [""], at=1), [c]) == []
    assert admits(delegate(HOSTKEY, GROUP, STRANGER, [""], at=1), [claim(HOSTKEY, GROUP)]) == []
    assert admits(delegate(HOSTKEY, PROC, "zz", [""], at=1), [c]) == []
    # an empty list revokes the delegation, and with it the admission
    assert admits(delegate(HOSTKEY, PROC, STRANGER, [], at=2), [c]) == []
    assert admits(put(HOSTKEY, PROC, f"_delegate.{STRANGER.key_id}", "", at=2), [c]) == []


def test_admin_owned_proc_may_vouch():
    held = [put(ADMIN, PROC, "_owner", ADMIN.key_id)]
    assert admits(delegate(ADMIN, PROC, STRANGER, [""], at=1), held) == [STRANGER.public_key]


# --- what a reader believes ----------------------------------------------------------------------
def test_visible_splits_good_and_bad_as_a_reader_would():
    alice_claim = claim(ALICE, at=1)
    bob_claim = claim(BOB, at=2)                          # loses: later
    grant = delegate(ALICE, PROC, BOB, ["load."], at=3)
    alice_state = put(ALICE, PROC, "state", "up", at=4)
    bob_load = put(BOB, PROC, "load.1m", 0.5, at=4)
    bob_cpus = put(BOB, PROC, "cpus", 64, at=4)             # not delegated
    bob_delegates = delegate(BOB, PROC, CAROL, [""], at=4)  # a claimant that lost may not delegate
    carol_state = put(CAROL, PROC, "state", "hijacked", at=4)
    admin_note = put(ADMIN, PROC, "note", "checked", at=5)
    held = [alice_claim, bob_claim, grant, alice_state, bob_load, bob_cpus, bob_delegates, carol_state, admin_note]
    good, bad = visible(held, ADMIN.public_key, NOW)
    assert good == [alice_claim, bob_claim, grant, alice_state, bob_load, admin_note]
    assert bad == [(bob_cpus, "signer is neither owner nor delegate"),
                   (bob_delegates, "signer is neither owner nor delegate"),
                   (carol_state, "signer is neither owner nor delegate")]


def test_visible_without_an_owner_believes_only_claims_and_the_admin():
    forged_claim = put(ALICE, PROC, "_owner", BOB.key_id)
    state = put(ALICE, PROC, "state", "up")
    note = put(ADMIN, PROC, "note", "x")
    good, bad = visible([forged_claim, state, note], ADMIN.public_key, NOW)
    assert good == [forged_claim, note]
    assert bad == [(state, "URN has no owner")]


def test_visible_agrees_with_check_write_on_delegates():
    held = [claim(ALICE), delegate(ALICE, PROC, "*", ["pub."], at=1)]
    ok, refused = put(CAROL, PROC, "pub.x", 1, at=2), put(CAROL, PROC, "priv.x", 1, at=2)
    check(ok, held)
    with pytest.raises(NotAuthorized):
        check(refused, held)
    good, bad = visible([*held, ok, refused], ADMIN.public_key, NOW)
    assert ok in good and [b for b, _ in bad] == [refused]


def test_superseded_explains_records_a_claim_race_or_a_revocation_left_behind():
    alice_claim, bob_claim = claim(ALICE, GROUP, at=2), claim(BOB, GROUP, at=1)   # bob's is earlier: he owns it
    alice_open = delegate(ALICE, GROUP, "*", ["member."], at=3)                 # stored while alice owned it
    dave = Identity.from_seed(b"\x09" * 32)
    dave_member = put(dave, GROUP, "member.dave", {}, at=4)                      # under alice's grant
    grant_carol = delegate(BOB, GROUP, CAROL, [], at=5)                          # revoked
    carol_note = put(CAROL, GROUP, "note", "hi", at=4)
    held = [alice_claim, bob_claim, alice_open, dave_member, grant_carol, carol_note]
    _, bad = visible(held, ADMIN.public_key, NOW)
    assert owner(held).signer == BOB.public_key
    assert [b for b, _ in bad] == [alice_open, dave_member, carol_note]
    assert all(authority.superseded(b, held) for b, _ in bad)
    # a delegation to every key, even one since revoked, explains any delegate's record
    revoked_open = delegate(BOB, GROUP, "*", [], at=6)
    assert authority.superseded(put(dave, GROUP, "note", "x", at=6), [bob_claim, revoked_open])
    # nothing in the URN's history explains a stranger's record, or a record of a delegate
    # whose grant is missing (a replica may be hiding it), or a reserved name by a non-owner
    stranger_note = put(STRANGER, GROUP, "note", "x", at=6)
    assert not authority.superseded(stranger_note, [bob_claim, grant_carol])
    assert not authority.superseded(carol_note, [bob_claim, carol_note])
    assert not authority.superseded(delegate(dave, GROUP, CAROL, [""], at=6), [bob_claim, alice_open])
    self_vouched = delegate(dave, GROUP, dave, [""], at=6)             # a key cannot vouch for itself
    assert not authority.superseded(self_vouched, [bob_claim, self_vouched])


def test_reserved_names():
    assert authority.is_reserved("_owner") and authority.is_reserved("_delegate.*")
    assert not authority.is_reserved("owner")
