"""The wire envelope: codec, version checks, error replies, body fields."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snipe import errors
from snipe.errors import CodecError, NotFound, ProtocolVersionError, SnipeError, TooLarge
from snipe.wire import (
    ERROR,
    MAX_ENVELOPE_BYTES,
    OK,
    Envelope,
    check_version,
    decode,
    decode_envelope,
    encode,
    encode_envelope,
    field_of,
)

GET = Envelope("rcds", 1, "get", 17, {"urn": "urn:snipe:host:a", "names": ["cpus"]})


def all_error_classes() -> list[type[SnipeError]]:
    found, todo = [], [SnipeError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


# --- codec -----------------------------------------------------------------------------------


def test_envelope_encodes_as_a_five_element_msgpack_array():
    assert msgpack.unpackb(encode_envelope(GET)) == [
        "rcds",
        1,
        "get",
        17,
        {"urn": "urn:snipe:host:a", "names": ["cpus"]},
    ]


def test_envelope_round_trips():
    assert decode_envelope(encode_envelope(GET)) == GET
    assert decode_envelope(encode_envelope(Envelope("msg", 2, "ping"))) == Envelope("msg", 2, "ping", 0, {})


def test_multipart_round_trip_carries_payload_frames_untouched():
    frames = [b"\x00\xffraw", b"", b"x" * 1000]
    parts = encode(GET, frames)
    assert parts[1:] == frames
    assert decode(parts) == (GET, frames)
    assert decode([memoryview(p) for p in parts]) == (GET, frames)


def test_decode_of_no_parts_is_a_codec_error():
    with pytest.raises(CodecError) as info:
        decode([])
    assert str(info.value) == "empty multipart message"


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({"a": 1}, "envelope must be a 5-element array [protocol, version, kind, request_id, body]"),
        (["rcds", 1, "get", 0], "envelope must be a 5-element array [protocol, version, kind, request_id, body]"),
        ([b"rcds", 1, "get", 0, {}], "envelope protocol and kind must be strings"),
        (["rcds", 1, 3, 0, {}], "envelope protocol and kind must be strings"),
        (["rcds", "1", "get", 0, {}], "envelope version and request id must be integers"),
        (["rcds", True, "get", 0, {}], "envelope version and request id must be integers"),
        (["rcds", 1, "get", 0.0, {}], "envelope version and request id must be integers"),
        (["rcds", 1, "get", 0, []], "envelope body must be a map"),
    ],
)
def test_decode_envelope_names_what_is_wrong(obj, message):
    with pytest.raises(CodecError) as info:
        decode_envelope(msgpack.packb(obj, use_bin_type=True))
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "envelope is not valid msgpack: ValueError"),
        (b"\x92\x01", "envelope is not valid msgpack: ValueError"),
        (b"\xc1", "envelope is not valid msgpack: FormatError"),
        (msgpack.packb([1]) + b"\x00", "envelope is not valid msgpack: ExtraData"),
        (msgpack.packb({1: 2}), "envelope is not valid msgpack: ValueError"),
        (b"\xa2\xff\xfe", "envelope is not valid msgpack: UnicodeDecodeError"),
    ],
)
def test_decode_envelope_of_non_msgpack_is_a_codec_error(data, message):
    with pytest.raises(CodecError) as info:
        decode_envelope(data)
    assert type(info.value) is CodecError
    assert str(info.value) == message


def test_an_oversized_envelope_is_refused_before_decoding():
    data = b"\x00" * (MAX_ENVELOPE_BYTES + 1)
    with pytest.raises(TooLarge) as info:
        decode_envelope(data)
    assert str(info.value) == (
        f"envelope of {MAX_ENVELOPE_BYTES + 1} bytes exceeds the {MAX_ENVELOPE_BYTES}-byte limit"
    )


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_decode_envelope_of_arbitrary_bytes_raises_only_codec_error(data):
    try:
        env = decode_envelope(data)
    except CodecError as exc:
        assert type(exc) is CodecError
    else:
        assert isinstance(env, Envelope)


msgpack_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(),
    st.text(max_size=8),
    st.binary(max_size=8),
)
msgpack_values = st.recursive(
    msgpack_leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=4), st.integers(0, 3)), inner, max_size=4),
    ),
    max_leaves=10,
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(["rcds", 1, 0, {}]), msgpack_values), min_size=4, max_size=6))
def test_decode_envelope_of_near_miss_arrays_raises_only_codec_error(items):
    data = msgpack.packb(items, use_bin_type=True)
    try:
        env = decode_envelope(data)
    except CodecError as exc:
        assert type(exc) is CodecError
    else:
        assert (type(env.protocol), type(env.version), type(env.kind), type(env.request_id), type(env.body)) == (
            str,
            int,
            str,
            int,
            dict,
        )


# --- versions --------------------------------------------------------------------------------


def test_check_version_accepts_a_version_on_offer():
    assert check_version(GET, "rcds", [1, 2]) is None


def test_check_version_names_the_versions_on_offer():
    with pytest.raises(ProtocolVersionError) as info:
        check_version(Envelope("rcds", 3, "get"), "rcds", [1, 2])
    assert str(info.value) == "rcds version 3 is not served here; versions on offer: 1, 2"
    assert info.value.code == "bad-version"


def test_check_version_names_the_protocol_spoken_when_another_is_asked_for():
    with pytest.raises(ProtocolVersionError) as info:
        check_version(Envelope("daemon", 1, "spawn"), "rcds", [1, 2])
    assert str(info.value) == "this service speaks rcds/1,2, not 'daemon'"


# --- replies and errors ----------------------------------------------------------------------


def test_reply_keeps_protocol_version_and_request_id():
    assert GET.reply(value=3) == Envelope("rcds", 1, OK, 17, {"value": 3})
    assert GET.reply("stored", n=2) == Envelope("rcds", 1, "stored", 17, {"n": 2})
    assert GET.reply().raise_if_error() == Envelope("rcds", 1, OK, 17, {})


def test_error_reply_carries_code_and_message():
    reply = GET.error_reply(NotFound("urn:snipe:host:a has no live 'cpus'"))
    assert reply == Envelope(
        "rcds", 1, ERROR, 17, {"code": "not-found", "message": "urn:snipe:host:a has no live 'cpus'"}
    )


def test_error_codes_are_unique():
    codes = [cls.code for cls in all_error_classes()]
    assert len(codes) == len(set(codes))
    assert {"malformed", "bad-signature", "not-authorized", "bad-version", "not-found"} <= set(codes)


@pytest.mark.parametrize("cls", all_error_classes(), ids=lambda c: c.__name__)
def test_error_reply_round_trips_the_error_class_through_the_wire(cls):
    reply = GET.error_reply(cls("the thing; the fix"))
    received = decode_envelope(encode_envelope(reply))
    with pytest.raises(SnipeError) as info:
        received.raise_if_error()
    assert type(info.value) is cls
    assert str(info.value) == "the thing; the fix"
    assert info.value.code == cls.code


def test_an_unknown_error_code_becomes_a_plain_snipe_error_keeping_the_code():
    reply = Envelope("rcds", 2, ERROR, 5, {"code": "from-the-future", "message": "new failure"})
    with pytest.raises(SnipeError) as info:
        reply.raise_if_error()
    assert type(info.value) is SnipeError
    assert (info.value.code, str(info.value)) == ("from-the-future", "new failure")
    assert SnipeError.code == "error"  # the class attribute is untouched


def test_an_error_reply_without_fields_is_a_plain_snipe_error():
    with pytest.raises(SnipeError) as info:
        Envelope("rcds", 1, ERROR).raise_if_error()
    assert (type(info.value), info.value.code, str(info.value)) == (SnipeError, "error", "")


def test_error_from_code_rebuilds_subclasses_of_subclasses():
    err = errors.error_from_code("no-quorum", "2 of 3 replicas needed, 1 answered")
    assert type(err) is errors.QuorumError
    assert isinstance(err, errors.Unreachable)


# --- body fields -----------------------------------------------------------------------------


def test_field_of_returns_a_field_of_the_expected_type():
    env = Envelope("rcds", 1, "put", 1, {"n": 3, "urn": "urn:snipe:host:a", "x": 1.5})
    assert field_of(env, "n", int) == 3
    assert field_of(env, "urn", str) == "urn:snipe:host:a"
    assert field_of(env, "x", (int, float)) == 1.5
    assert field_of(env, "missing", int, default=7) == 7
    assert field_of(env, "missing", str, default=None) is None


@pytest.mark.parametrize(
    ("body", "name", "kind", "message"),
    [
        ({}, "urn", str, "rcds 'put' request lacks field 'urn'"),
        ({"n": "3"}, "n", int, "field 'n' of 'put' has type str"),
        ({"n": True}, "n", int, "field 'n' must be int, not bool"),
        ({"urn": None}, "urn", str, "field 'urn' of 'put' has type NoneType"),
        ({"names": {"a": 1}}, "names", list, "field 'names' of 'put' has type dict"),
    ],
)
def test_field_of_names_the_missing_or_mistyped_field(body, name, kind, message):
    with pytest.raises(CodecError) as info:
        field_of(Envelope("rcds", 1, "put", 1, body), name, kind)
    assert str(info.value) == message
