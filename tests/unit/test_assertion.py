"""Signed assertions: building, canonical signing, tamper detection, the codec, and merge."""

from __future__ import annotations

import dataclasses
import math

import msgpack
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from snipe import assertion as assertion_module
from snipe import hlc
from snipe.assertion import (
    MAX_ASSERTION_BYTES,
    MAX_TTL_MS,
    Assertion,
    canonical_value,
    decode_assertion,
    is_finite_number,
    make_assertion,
    merge,
    newer,
)
from snipe.errors import CodecError, SignatureError, TooLarge, UrnError, ValueTypeError
from snipe.identity import Identity

ALICE, BOB, CAROL = (Identity.from_seed(bytes([i]) * 32) for i in (1, 2, 3))
IDENTITIES = (ALICE, BOB, CAROL)
HOST = "urn:snipe:host:a"
URNS = (HOST, "urn:snipe:host:b", "urn:snipe:group:g")
NAMES = ("cpus", "load")
TS = hlc.pack(1_000_000, 0)


def signing_bytes(urn, name, value, ts, ttl_ms, deleted, signer) -> bytes:
    return msgpack.packb(["snipe-assertion/1", urn, name, value, ts, ttl_ms, deleted, signer], use_bin_type=True)


def depth(value) -> int:
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    return 0


def reordered(value, rnd):
    """The same value with every map's keys inserted in a shuffled order."""
    if isinstance(value, list):
        return [reordered(v, rnd) for v in value]
    if isinstance(value, dict):
        keys = list(value)
        rnd.shuffle(keys)
        return {k: reordered(value[k], rnd) for k in keys}
    return value


# --- strategies ------------------------------------------------------------------------------

scalars = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=10),
    st.binary(max_size=10),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=5), inner, max_size=4)),
    max_leaves=8,
)
small_values = st.one_of(st.integers(0, 3), st.sampled_from(["x", "y"]), st.lists(st.integers(0, 2), max_size=2))


@st.composite
def assertions(draw, value_strategy=values):
    deleted = draw(st.booleans())
    value = None if deleted else draw(value_strategy)
    assume(depth(value) <= 16)
    return make_assertion(
        draw(st.sampled_from(IDENTITIES)),
        draw(st.sampled_from(URNS)),
        draw(st.sampled_from(NAMES)),
        value,
        ts=draw(st.integers(0, 2**64 - 1)),
        ttl_ms=draw(st.sampled_from([0, 1, MAX_TTL_MS])),
        deleted=deleted,
    )


# small ts range and alphabets so that keys and timestamps collide
colliding = st.builds(
    lambda ident, urn, name, value, ts, deleted: make_assertion(
        ident, urn, name, None if deleted else value, ts=ts, deleted=deleted
    ),
    st.sampled_from(IDENTITIES),
    st.sampled_from(URNS[:2]),
    st.sampled_from(NAMES),
    small_values,
    st.integers(0, 3),
    st.booleans(),
)
assertion_sets = st.lists(colliding, max_size=12)


# --- building and signing --------------------------------------------------------------------


def test_make_assertion_signs_the_canonical_bytes():
    a = make_assertion(ALICE, HOST, "cpus", 8, ts=TS, ttl_ms=30_000)
    body = signing_bytes(HOST, "cpus", 8, TS, 30_000, False, ALICE.public_key)
    assert a == Assertion(HOST, "cpus", 8, TS, 30_000, False, ALICE.public_key, ALICE.sign(body))
    assert a.signing_bytes() == body
    assert a.key == (HOST, "cpus", ALICE.public_key)
    assert a.rank == (TS, a.signature)
    assert a.verify() is None


def test_make_assertion_normalises_the_urn_before_signing():
    a = make_assertion(ALICE, "URN:SNIPE:HOST:a", "cpus", 8, ts=TS)
    assert a.urn == HOST
    assert a == make_assertion(ALICE, HOST, "cpus", 8, ts=TS)


def test_a_tombstone_has_no_value():
    a = make_assertion(BOB, HOST, "cpus", None, ts=TS, deleted=True)
    assert (a.value, a.deleted) == (None, True)
    assert a.signing_bytes() == signing_bytes(HOST, "cpus", None, TS, 0, True, BOB.public_key)
    a.verify()


def test_dict_values_sign_the_same_whatever_the_insertion_order():
    one = make_assertion(ALICE, HOST, "cfg", {"b": 1, "a": {"y": [2, {"q": 1, "p": 0}], "x": 3}}, ts=TS)
    two = make_assertion(ALICE, HOST, "cfg", {"a": {"x": 3, "y": [2, {"p": 0, "q": 1}]}, "b": 1}, ts=TS)
    assert one.signature == two.signature
    assert one.encode() == two.encode()
    assert list(one.value) == ["a", "b"]
    assert list(one.value["a"]) == ["x", "y"]
    assert list(one.value["a"]["y"][1]) == ["p", "q"]


def test_tuples_become_lists():
    a = make_assertion(ALICE, HOST, "pair", (1, (2, "x")), ts=TS)
    assert a.value == [1, [2, "x"]]
    assert a.signature == make_assertion(ALICE, HOST, "pair", [1, [2, "x"]], ts=TS).signature


def test_canonical_value_passes_scalars_and_sorts_maps():
    assert canonical_value(b"raw") == b"raw"
    assert canonical_value(True) is True
    assert canonical_value(-(2**63)) == -(2**63)
    assert canonical_value(2**64 - 1) == 2**64 - 1
    assert canonical_value(1.5) == 1.5
    assert list(canonical_value({"z": 0, "a": 0, "m": 0})) == ["a", "m", "z"]


@settings(max_examples=100, deadline=None)
@given(value=values, rnd=st.randoms(use_true_random=False))
def test_any_value_signs_identically_regardless_of_key_insertion_order(value, rnd):
    assume(depth(value) <= 16)
    shuffled = reordered(value, rnd)
    assert make_assertion(ALICE, HOST, "v", shuffled, ts=TS).encode() == (
        make_assertion(ALICE, HOST, "v", value, ts=TS).encode()
    )


LONG = "n" * 257


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"urn": "urn:snipe:planet:x"}, UrnError, None),
        ({"name": ""}, CodecError, "assertion name '' must be 1 to 256 characters without NUL"),
        ({"name": "a\x00b"}, CodecError, "assertion name 'a\\x00b' must be 1 to 256 characters without NUL"),
        ({"name": LONG}, CodecError, f"assertion name {LONG[:40] + '…'!r} must be 1 to 256 characters without NUL"),
        ({"name": 5}, CodecError, "assertion name must be a string, not int"),
        # 256 characters, but 512 bytes: with the URN, more than a replica can key a record by
        ({"name": "é" * 256}, CodecError, f"assertion name {'é' * 40 + '…'!r} of {HOST}: the URN and the name "
                                          "take 528 bytes (UTF-8), more than the 466 a replica can key a record by"),
        (
            {"value": None},
            ValueTypeError,
            "values are bytes, str, int, float, bool, or lists and maps of those; got NoneType",
        ),
        (
            {"value": {1, 2}},
            ValueTypeError,
            "values are bytes, str, int, float, bool, or lists and maps of those; got set",
        ),
        (
            {"value": bytearray(b"x")},
            ValueTypeError,
            "values are bytes, str, int, float, bool, or lists and maps of those; got bytearray",
        ),
        ({"value": {1: "a"}}, ValueTypeError, "map keys in a value must be strings"),
        ({"value": 2**64}, ValueTypeError, "integer 18446744073709551616 does not fit in 64 bits"),
        ({"value": -(2**63) - 1}, ValueTypeError, "integer -9223372036854775809 does not fit in 64 bits"),
        ({"value": [[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]}, ValueTypeError, "value nests deeper than 16 levels"),
        ({"value": 1, "deleted": True}, ValueTypeError, "a tombstone carries no value"),
        ({"ttl_ms": -1}, ValueTypeError, f"ttl_ms must be an integer from 0 (no lease) to {MAX_TTL_MS}"),
        ({"ttl_ms": MAX_TTL_MS + 1}, ValueTypeError, f"ttl_ms must be an integer from 0 (no lease) to {MAX_TTL_MS}"),
        ({"ttl_ms": 1.0}, ValueTypeError, f"ttl_ms must be an integer from 0 (no lease) to {MAX_TTL_MS}"),
        ({"ttl_ms": True}, ValueTypeError, f"ttl_ms must be an integer from 0 (no lease) to {MAX_TTL_MS}"),
        ({"ts": -1}, ValueTypeError, "ts must be a 64-bit unsigned integer (a packed HLC timestamp), not -1"),
        (
            {"ts": 2**64},
            ValueTypeError,
            "ts must be a 64-bit unsigned integer (a packed HLC timestamp), not 18446744073709551616",
        ),
        ({"ts": True}, ValueTypeError, "ts must be a 64-bit unsigned integer (a packed HLC timestamp), not True"),
        ({"ts": 1.5}, ValueTypeError, "ts must be a 64-bit unsigned integer (a packed HLC timestamp), not 1.5"),
    ],
)
def test_make_assertion_refuses_bad_input(kwargs, error, message):
    args = {"urn": HOST, "name": "cpus", "value": 8, "ts": TS, **kwargs}
    with pytest.raises(error) as info:
        make_assertion(ALICE, **args)
    assert type(info.value) is error
    if message is not None:
        assert str(info.value) == message


def test_sixteen_levels_of_nesting_are_allowed():
    value = [[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]
    assert depth(value) == 16
    assert make_assertion(ALICE, HOST, "deep", value, ts=TS).value == value


def test_an_assertion_over_the_size_limit_is_too_large():
    with pytest.raises(TooLarge) as info:
        make_assertion(ALICE, HOST, "blob", b"x" * MAX_ASSERTION_BYTES, ts=TS)
    assert str(info.value).startswith(f"assertion {HOST} blob is ")
    assert str(info.value).endswith(f" bytes; the limit is {MAX_ASSERTION_BYTES}")


# --- tamper detection ------------------------------------------------------------------------

ORIGINAL = make_assertion(ALICE, HOST, "cpus", {"n": 8, "arch": "x86_64"}, ts=TS, ttl_ms=30_000)
OTHER_SIGNATURE = make_assertion(ALICE, HOST, "cpus", 9, ts=TS).signature


@pytest.mark.parametrize(
    "changes",
    [
        {"value": {"n": 9, "arch": "x86_64"}},
        {"value": {"n": 8.0, "arch": "x86_64"}},
        {"value": {"n": True, "arch": "x86_64"}},
        {"name": "load"},
        {"urn": "urn:snipe:host:b"},
        {"ts": TS + 1},
        {"ttl_ms": 0},
        {"ttl_ms": 30_001},
        {"deleted": True, "value": None},
        {"signer": BOB.public_key},
        {"signer": b"\xff" * 32},
        {"signer": ALICE.public_key[:31]},
        {"signature": OTHER_SIGNATURE},
        {"signature": bytes(64)},
    ],
    ids=lambda c: ",".join(c),
)
def test_a_tampered_assertion_fails_even_after_the_original_was_verified(changes):
    ORIGINAL.verify()  # now in the verified-signature cache
    ORIGINAL.verify()  # and served from it
    tampered = dataclasses.replace(ORIGINAL, **changes)
    with pytest.raises(SignatureError):
        tampered.verify()
    with pytest.raises(SignatureError):  # a failure is not cached as a success either
        tampered.verify()
    ORIGINAL.verify()


def test_a_record_signed_by_one_key_but_naming_another_fails():
    forged = make_assertion(BOB, HOST, "cpus", 8, ts=TS)
    with pytest.raises(SignatureError) as info:
        dataclasses.replace(forged, signer=ALICE.public_key).verify()
    assert str(info.value) == f"signature does not verify for key {ALICE.key_id[:16]}…"


def test_the_verified_cache_is_bounded_and_only_holds_successes(monkeypatch):
    monkeypatch.setattr(assertion_module, "_VERIFIED_CACHE_SIZE", 2)
    monkeypatch.setattr(assertion_module, "_verified", type(assertion_module._verified)())
    cache = assertion_module._verified
    a, b, c = (make_assertion(ALICE, HOST, "n", i, ts=TS) for i in range(3))
    assert len(cache) == 2                       # signatures made here are known good, up to the bound
    cache.clear()
    with pytest.raises(SignatureError):
        dataclasses.replace(a, value=99).verify()
    assert len(cache) == 0
    a.verify()
    b.verify()
    c.verify()
    assert len(cache) == 2
    a.verify()  # evicted, so checked again, and still good
    assert len(cache) == 2


tampers = st.one_of(
    st.builds(lambda v: {"value": v}, small_values),
    st.builds(lambda n: {"name": n}, st.sampled_from(NAMES)),
    st.builds(lambda u: {"urn": u}, st.sampled_from(URNS)),
    st.builds(lambda t: {"ts": t}, st.integers(0, 2**64 - 1)),
    st.builds(lambda t: {"ttl_ms": t}, st.sampled_from([0, 1, MAX_TTL_MS])),
    st.builds(lambda d: {"deleted": d}, st.booleans()),
    st.builds(lambda i: {"signer": i.public_key}, st.sampled_from(IDENTITIES)),
)


@settings(max_examples=150, deadline=None)
@given(original=assertions(small_values), changes=tampers)
def test_any_change_to_a_signed_field_invalidates_the_signature(original, changes):
    tampered = dataclasses.replace(original, **changes)
    assume(tampered.signing_bytes() != original.signing_bytes())
    original.verify()
    with pytest.raises(SignatureError):
        tampered.verify()


# --- codec -----------------------------------------------------------------------------------


def test_encode_is_the_msgpack_array_of_the_fields():
    assert msgpack.unpackb(ORIGINAL.encode()) == [
        HOST,
        "cpus",
        {"arch": "x86_64", "n": 8},
        TS,
        30_000,
        False,
        ALICE.public_key,
        ORIGINAL.signature,
    ]


def test_decode_round_trips_and_still_verifies():
    decoded = decode_assertion(ORIGINAL.encode())
    assert decoded == ORIGINAL
    decoded.verify()


@settings(max_examples=150, deadline=None)
@given(assertions())
def test_round_trip_preserves_equality_and_verification(a):
    decoded = decode_assertion(a.encode())
    assert decoded == a
    assert decoded.encode() == a.encode()
    decoded.verify()


def test_a_nan_value_round_trips_byte_for_byte():
    a = make_assertion(ALICE, HOST, "x", [math.nan], ts=TS)
    decoded = decode_assertion(a.encode())
    assert math.isnan(decoded.value[0])
    assert decoded.encode() == a.encode()
    decoded.verify()


SIG = ORIGINAL.signature
PK = ALICE.public_key


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"a": 1}, "assertion must be an 8-element array"),
        ([HOST, "n", 1, TS, 0, False, PK], "assertion must be an 8-element array"),
        (
            ["urn:snipe:x:y", "n", 1, TS, 0, False, PK, SIG],
            "assertion has a bad URN: 'urn:snipe:x:y' has kind 'x'; the kinds are host, proc, group, code, file, user",
        ),
        ([7, "n", 1, TS, 0, False, PK, SIG], "assertion has a bad URN: a URN must be a string, not int"),
        ([HOST, "", 1, TS, 0, False, PK, SIG], "assertion name '' must be 1 to 256 characters without NUL"),
        ([HOST, b"n", 1, TS, 0, False, PK, SIG], "assertion name must be a string, not bytes"),
        (
            ["urn:snipe:proc:" + "p" * 241, "n" * 256, 1, TS, 0, False, PK, SIG],
            f"assertion name {'n' * 40 + '…'!r} of urn:snipe:proc:{'p' * 241}: the URN and the name take 512 bytes "
            "(UTF-8), more than the 466 a replica can key a record by",
        ),
        ([HOST, "n", 1, -1, 0, False, PK, SIG], "assertion timestamp must be a 64-bit unsigned integer"),
        ([HOST, "n", 1, 1.0, 0, False, PK, SIG], "assertion timestamp must be a 64-bit unsigned integer"),
        ([HOST, "n", 1, True, 0, False, PK, SIG], "assertion timestamp must be a 64-bit unsigned integer"),
        ([HOST, "n", 1, TS, -1, False, PK, SIG], f"assertion ttl_ms must be an integer in [0, {MAX_TTL_MS}]"),
        (
            [HOST, "n", 1, TS, MAX_TTL_MS + 1, False, PK, SIG],
            f"assertion ttl_ms must be an integer in [0, {MAX_TTL_MS}]",
        ),
        ([HOST, "n", 1, TS, 0, 0, PK, SIG], "assertion deleted flag must be a boolean"),
        ([HOST, "n", 1, TS, 0, False, PK[:31], SIG], "assertion signer must be a 32-byte Ed25519 public key"),
        ([HOST, "n", 1, TS, 0, False, PK.hex(), SIG], "assertion signer must be a 32-byte Ed25519 public key"),
        ([HOST, "n", 1, TS, 0, False, PK, SIG + b"\x00"], "assertion signature must be 64 bytes"),
        ([HOST, "n", 1, TS, 0, True, PK, SIG], "a tombstone must carry no value"),
        (
            [HOST, "n", None, TS, 0, False, PK, SIG],
            "assertion value: values are bytes, str, int, float, bool, or lists and maps of those; got NoneType",
        ),
        (
            [HOST, "n", msgpack.ExtType(5, b"x"), TS, 0, False, PK, SIG],
            "assertion value: values are bytes, str, int, float, bool, or lists and maps of those; got ExtType",
        ),
        (
            [HOST, "n", [[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]], TS, 0, False, PK, SIG],
            "assertion value: value nests deeper than 16 levels",
        ),
    ],
)
def test_decode_assertion_names_what_is_malformed(fields, message):
    with pytest.raises(CodecError) as info:
        decode_assertion(msgpack.packb(fields, use_bin_type=True))
    assert type(info.value) is CodecError
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "assertion is not valid msgpack (ValueError)"),
        (b"\xc1", "assertion is not valid msgpack (FormatError)"),
        (msgpack.packb([1]) + b"\x00", "assertion is not valid msgpack (ExtraData)"),
        (msgpack.packb([{1: 2}]), "assertion is not valid msgpack (ValueError)"),
    ],
)
def test_decode_assertion_of_non_msgpack(data, message):
    with pytest.raises(CodecError) as info:
        decode_assertion(data)
    assert type(info.value) is CodecError
    assert str(info.value) == message


def test_decode_assertion_refuses_an_oversized_record_before_decoding():
    size = MAX_ASSERTION_BYTES + 513
    with pytest.raises(TooLarge) as info:
        decode_assertion(b"\x00" * size)
    assert str(info.value) == f"assertion record of {size} bytes exceeds the limit of {MAX_ASSERTION_BYTES}"


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_decode_assertion_of_arbitrary_bytes_raises_only_codec_error(data):
    try:
        decode_assertion(data)
    except CodecError as exc:
        assert type(exc) is CodecError


field_candidates = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(),
    st.text(max_size=6),
    st.binary(max_size=6),
    st.sampled_from([HOST, "cpus", TS, 0, False, True, PK, SIG, b"\x00" * 32, b"\x00" * 64]),
    st.lists(st.integers(-5, 5), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(-5, 5), max_size=3),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(field_candidates, min_size=7, max_size=9))
def test_decode_assertion_of_near_miss_records_raises_only_codec_error(fields):
    try:
        decoded = decode_assertion(msgpack.packb(fields, use_bin_type=True))
    except CodecError as exc:
        assert type(exc) is CodecError
    else:
        assert isinstance(decoded, Assertion)


@settings(max_examples=300, deadline=None)
@given(
    original=assertions(small_values),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=3),
)
def test_a_corrupted_record_fails_to_decode_or_fails_to_verify(original, edits):
    data = bytearray(original.encode())
    for position, byte in edits:
        data[position % len(data)] = byte
    try:
        decoded = decode_assertion(bytes(data))
    except CodecError as exc:
        assert type(exc) is CodecError
        return
    if decoded.signing_bytes() == original.signing_bytes() and decoded.signature == original.signature:
        decoded.verify()  # the corruption was undone by normalisation (e.g. URN case)
    else:
        with pytest.raises(SignatureError):
            decoded.verify()


# --- leases ----------------------------------------------------------------------------------


def test_a_lease_expires_ttl_after_the_physical_time_of_its_timestamp():
    a = make_assertion(ALICE, HOST, "alive", True, ts=hlc.pack(1000, 5), ttl_ms=500)
    assert a.expires_at_ms == 1500
    assert [a.is_live(now) for now in (0, 1499, 1500, 9999)] == [True, True, False, False]


def test_without_a_ttl_an_assertion_never_expires_and_a_tombstone_is_never_live():
    forever = make_assertion(ALICE, HOST, "x", 1, ts=hlc.pack(1000))
    tomb = make_assertion(ALICE, HOST, "x", None, ts=hlc.pack(1000), deleted=True)
    assert forever.expires_at_ms is None
    assert forever.is_live(10**15) is True
    assert tomb.is_live(0) is False


def test_describe():
    a = make_assertion(ALICE, HOST, "cpus", 8, ts=42)
    tomb = make_assertion(ALICE, HOST, "cpus", None, ts=43, deleted=True)
    assert a.describe() == f"{HOST} cpus=8 by {ALICE.public_key.hex()[:12]}… at 42"
    assert tomb.describe() == f"{HOST} tombstone by {ALICE.public_key.hex()[:12]}… at 43"


def test_is_finite_number():
    cases = [1, -2, 1.5, math.inf, math.nan, True, "1", None]
    assert [is_finite_number(v) for v in cases] == [True, True, True, True, False, False, False, False]


# --- merge -----------------------------------------------------------------------------------


def test_merge_keeps_the_newest_per_urn_name_and_writer():
    old = make_assertion(ALICE, HOST, "cpus", 4, ts=1)
    new = make_assertion(ALICE, HOST, "cpus", 8, ts=2)
    bobs = make_assertion(BOB, HOST, "cpus", 2, ts=1)
    other_name = make_assertion(ALICE, HOST, "load", 0.5, ts=1)
    assert merge([new, bobs], [old, other_name]) == {
        (HOST, "cpus", ALICE.public_key): new,
        (HOST, "cpus", BOB.public_key): bobs,
        (HOST, "load", ALICE.public_key): other_name,
    }


def test_a_newer_tombstone_wins_and_an_older_one_loses():
    value = make_assertion(ALICE, HOST, "cpus", 8, ts=5)
    newer_tomb = make_assertion(ALICE, HOST, "cpus", None, ts=6, deleted=True)
    older_tomb = make_assertion(ALICE, HOST, "cpus", None, ts=4, deleted=True)
    assert merge([value], [newer_tomb]) == {value.key: newer_tomb}
    assert merge([older_tomb], [value]) == {value.key: value}


def test_equal_timestamps_are_broken_by_signature():
    a = make_assertion(ALICE, HOST, "cpus", 1, ts=7)
    b = make_assertion(ALICE, HOST, "cpus", 2, ts=7)
    winner = max(a, b, key=lambda x: x.signature)
    assert merge([a, b]) == merge([b, a]) == {a.key: winner}
    assert newer(winner, None) is True
    assert newer(winner, winner) is False


def test_merge_of_nothing_is_empty():
    assert merge() == {}
    assert merge([], []) == {}


@settings(max_examples=150, deadline=None)
@given(assertion_sets, assertion_sets)
def test_merge_is_commutative(a, b):
    assert merge(a, b) == merge(b, a)


@settings(max_examples=150, deadline=None)
@given(assertion_sets, assertion_sets, assertion_sets)
def test_merge_is_associative(a, b, c):
    left = merge(merge(a, b).values(), c)
    right = merge(a, merge(b, c).values())
    assert left == right == merge(a, b, c)


@settings(max_examples=150, deadline=None)
@given(assertion_sets, assertion_sets)
def test_merge_is_idempotent(a, b):
    once = merge(a, b)
    assert merge(a, a) == merge(a)
    assert merge(once.values(), once.values()) == once
    assert merge(once.values(), a) == once  # re-delivering what was merged changes nothing


@settings(max_examples=200, deadline=None)
@given(st.lists(colliding, max_size=20), st.randoms(use_true_random=False))
def test_merge_holds_the_greatest_rank_per_key_in_any_delivery_order(items, rnd):
    shuffled = list(items)
    rnd.shuffle(shuffled)
    expected = {}
    for a in items:
        expected[a.key] = max(expected.get(a.key, a), a, key=lambda x: x.rank)
    assert merge(shuffled) == merge(items) == expected


def test_forget_verified_makes_records_signed_here_verified_again(monkeypatch):
    """What the catalog benchmark's ceiling relies on to time verification: a record this
    process signed counts as verified until `forget_verified`."""
    checked: list[bytes] = []
    real = assertion_module.verify_detached

    def counting(key: bytes, body: bytes, signature: bytes) -> None:
        checked.append(signature)
        real(key, body, signature)
    monkeypatch.setattr(assertion_module, "verify_detached", counting)
    a = make_assertion(ALICE, HOST, "n", 1, ts=TS)
    a.verify()
    assert checked == []                          # made here: known good
    assertion_module.forget_verified()
    a.verify()
    a.verify()
    assert checked == [a.signature]               # verified once more, then known good again
