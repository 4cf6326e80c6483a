"""Attribute predicates (snipe/query.py): parsing the console's text forms and the wire form, and
matching them against live assertions without confusing types."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from snipe import hlc
from snipe.assertion import Assertion, make_assertion
from snipe.errors import CodecError
from snipe.identity import Identity
from snipe.query import OPS, matches, parse_predicate_text, parse_predicates

WRITER = Identity.from_seed(bytes([9]) * 32)
HOST = "urn:snipe:host:h1"


def held(**values: object) -> list[Assertion]:
    return [make_assertion(WRITER, HOST, name, value, hlc.pack(1_000, i)) for i, (name, value) in
            enumerate(values.items())]


# --- text forms ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "predicate"), [
    ("arch=x86_64", ("arch", "=", "x86_64")),
    ("memory>=8589934592", ("memory", ">=", 8589934592)),
    ("load<=0.5", ("load", "<=", 0.5)),
    ("load>1.5", ("load", ">", 1.5)),
    ("cpus<4", ("cpus", "<", 4)),
    ("temp>=-5", ("temp", ">=", -5)),
    ("state!=dead", ("state", "!=", "dead")),
    ("name^=web-", ("name", "prefix", "web-")),
    ("tags~=gpu", ("tags", "contains", "gpu")),
    ("gpu?", ("gpu", "exists", None)),
    ("up=true", ("up", "=", True)),
    ("up=false", ("up", "=", False)),
    ("ratio=1e3", ("ratio", "=", 1000.0)),
    ("note=", ("note", "=", "")),
    ("expr=a=b", ("expr", "=", "a=b")),          # the first operator splits; the rest is the value
    ("cmp>=a<b", ("cmp", ">=", "a<b")),
])
def test_parse_predicate_text(text, predicate):
    got = parse_predicate_text(text)
    assert got == predicate
    assert type(got[2]) is type(predicate[2])     # 8 is an int, 0.5 a float, true a bool


@pytest.mark.parametrize("text", ["", "arch", "=x86_64", "==1"])
def test_unreadable_predicate_text_names_the_forms(text):
    with pytest.raises(CodecError) as info:
        parse_predicate_text(text)
    assert repr(text) in str(info.value)
    assert "name=value" in str(info.value) and "name?" in str(info.value)


def test_parse_predicates_wire_form():
    assert parse_predicates(None) == []
    assert parse_predicates([["arch", "=", "x86_64"], ("cpus", ">=", 4)]) == [("arch", "=", "x86_64"),
                                                                             ("cpus", ">=", 4)]
    for bad in ("arch=x", [["arch", "=="]], [["arch", "~", 1]], [[1, "=", 1]], [["a", "=", 1, 2]], ["a=b"]):
        with pytest.raises(CodecError):
            parse_predicates(bad)


def test_every_op_is_readable_from_the_wire():
    assert [op for _, op, _ in parse_predicates([["n", op, 0] for op in OPS])] == list(OPS)


# --- matching --------------------------------------------------------------------------------------
LIVE = held(arch="x86_64", cpus=8, load=0.25, up=True, tags=["gpu", "ssd"], name="web-01",
            blob=b"\x00\x01", info={"rack": "r1"}, flags=[1, 2], ratio=math.nan)


@pytest.mark.parametrize(("predicate", "expected"), [
    (("arch", "=", "x86_64"), True),
    (("arch", "=", "arm64"), False),
    (("arch", "!=", "arm64"), True),
    (("arch", "!=", "x86_64"), False),
    (("cpus", "=", 8), True),
    (("cpus", "=", 8.0), True),                   # numbers compare as numbers
    (("cpus", ">=", 8), True),
    (("cpus", ">=", 9), False),
    (("cpus", "<", 9), True),
    (("cpus", "<", 8), False),
    (("cpus", "<=", 8), True),
    (("cpus", ">", 7.5), True),
    (("load", "<", 0.5), True),
    (("load", ">", 0.5), False),
    (("name", "prefix", "web-"), True),
    (("name", "prefix", "db-"), False),
    (("name", "prefix", b"web"), False),          # bytes prefix of a str: no match
    (("blob", "prefix", b"\x00"), True),
    (("blob", "prefix", "\x00"), False),
    (("tags", "contains", "gpu"), True),
    (("tags", "contains", "tpu"), False),
    (("name", "contains", "b-0"), True),
    (("info", "contains", "rack"), True),
    (("info", "contains", "row"), False),
    (("cpus", "contains", 8), False),             # an int contains nothing
    (("gpu", "exists", None), False),
    (("arch", "exists", None), True),
    (("ratio", "=", math.nan), False),            # NaN equals nothing
    (("ratio", ">=", 0), False),
])
def test_matches_one_predicate(predicate, expected):
    assert matches(LIVE, [predicate]) is expected


@pytest.mark.parametrize(("predicate", "expected"), [
    (("up", "=", True), True),
    (("up", "=", 1), False),                      # a bool is not an int ...
    (("cpus", "=", True), False),
    (("up", "!=", 1), True),
    (("up", "!=", True), False),
    (("flags", "=", [1, 2]), True),
    (("flags", "=", [True, 2]), False),           # ... not inside a list either
    (("flags", "contains", 1), True),
    (("flags", "contains", True), False),
    (("tags", "contains", True), False),
    (("up", ">=", 0), False),                     # bools have no order
    (("cpus", ">=", False), False),
])
def test_bool_and_int_are_not_confused(predicate, expected):
    assert matches(LIVE, [predicate]) is expected


@pytest.mark.parametrize("predicate", [
    ("cpus", "=", "8"),
    ("arch", ">=", 1),
    ("cpus", "<", "9"),
    ("name", "prefix", 1),
    ("cpus", "prefix", 8),
    ("name", "contains", 5),                      # once a TypeError out of the server
    ("info", "contains", ["rack"]),               # once "unhashable type"
    ("tags", "contains", ["gpu"]),
    ("tags", ">", 1),
    ("info", "<", {"rack": "r2"}),
    ("blob", ">=", "a"),
])
def test_type_mismatch_is_no_match(predicate):
    assert matches(LIVE, [predicate]) is False


def test_every_predicate_must_hold_and_any_value_may_satisfy_it():
    other = make_assertion(Identity.from_seed(bytes([8]) * 32), HOST, "arch", "arm64", hlc.pack(1_000))
    two = [*held(arch="x86_64"), other]
    assert matches(two, [("arch", "=", "arm64"), ("arch", "=", "x86_64")])
    assert matches(LIVE, [("arch", "=", "x86_64"), ("cpus", ">=", 4), ("tags", "contains", "gpu")])
    assert not matches(LIVE, [("arch", "=", "x86_64"), ("cpus", ">=", 16)])
    assert matches(LIVE, [])
    assert matches([], [])
    assert not matches([], [("arch", "exists", None)])


values = st.recursive(
    st.booleans() | st.integers(-(2**63), 2**63) | st.floats() | st.text(max_size=5)
    | st.binary(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=6)


@given(value=values, op=st.sampled_from(OPS), target=st.none() | values)
def test_matching_never_raises(value, op, target):
    a = make_assertion(WRITER, HOST, "n", value, hlc.pack(1_000))
    assert matches([a], [("n", op, target)]) in (True, False)
