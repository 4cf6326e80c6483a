"""The MCAST_DATA codec (wire form 2: a fixed struct header, then the names, then the body):
round trips, the bounded name caches, and a CodecError, nothing else, for any malformed payload."""

from __future__ import annotations

import struct

import msgpack
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from snipe.errors import CodecError
from snipe.multicast import core
from snipe.multicast.core import DATA_FORM, Header, pack, unpack

names = st.text(max_size=40)
int64 = st.integers(-(1 << 63), (1 << 63) - 1)
headers = st.builds(Header, names, names, int64, int64, st.lists(names, max_size=5).map(tuple))


@given(headers, st.binary(max_size=200))
def test_a_header_and_body_round_trip(h, body):
    for payload in (pack(h, body), pack(h, memoryview(body))):
        assert unpack(payload) == (h, body)
        assert unpack(memoryview(payload)) == (h, body)          # ZeroMQ's buffer for a large one


@given(st.binary(max_size=300))
@example(b"")
@example(b"\x02")
@example(struct.pack(">BqqHHH", DATA_FORM, 1, 0, 3, 0, 0) + b"\xff\xfe\xfd")       # not UTF-8
@example(struct.pack(">BqqHHH", DATA_FORM, 1, 0, 0, 0, 3) + b"\x00\x05a")          # a seen name runs past its list
@example(struct.pack(">BqqHHH", DATA_FORM, 1, 0, 0, 0, 1) + b"\x00")               # a seen length cut short
@example(struct.pack(">BqqHHH", DATA_FORM, 1, 0, 9, 0, 0) + b"short")              # names past the payload
def test_any_bytes_decode_or_give_a_codec_error_only(payload):
    try:
        h, body = unpack(payload)
    except CodecError:
        return
    assert type(h.group) is str and type(h.origin) is str and type(h.seq) is int and type(h.tag) is int
    assert type(h.seen) is tuple and all(type(r) is str for r in h.seen) and type(body) is bytes
    assert pack(h, body) == payload                               # one encoding for each header


@given(headers, st.binary(max_size=50), st.data())
def test_a_cut_or_corrupted_payload_is_a_codec_error_or_decodes_to_what_it_says(h, body, data):
    payload = bytearray(pack(h, body))
    cut = data.draw(st.integers(0, len(payload)))
    try:
        assert unpack(bytes(payload[:cut])) == (h, body[:cut - (len(payload) - len(body))])   # cut in the body
    except CodecError:
        assert cut < len(payload) - len(body)
    at = data.draw(st.integers(0, len(payload) - 1))
    payload[at] ^= data.draw(st.integers(1, 255))
    try:
        got, rest = unpack(bytes(payload))
    except CodecError:
        return
    assert pack(got, rest) == bytes(payload)


def test_the_earlier_msgpack_form_is_refused_naming_both_forms():
    head = msgpack.packb(["urn:snipe:group:g", "urn:snipe:proc:s#1", 1, 0, []], use_bin_type=True)
    with pytest.raises(CodecError, match=r"wire form 0; this release reads form 2"):
        unpack(len(head).to_bytes(4, "big") + head + b"body")


@pytest.mark.parametrize("h", [
    Header("g", "o", 1 << 63, 0, ()),                 # seq past signed 64 bits
    Header("g", "o", 1, -(1 << 63) - 1, ()),          # tag below it
    Header("g" * 70_000, "o", 1, 0, ()),              # a name past 65535 bytes
    Header("g", "\ud800", 1, 0, ()),                  # a lone surrogate: no UTF-8 for it
    Header("g", "o", 1, 0, (["r"],)),                 # type: ignore[arg-type]  # a seen entry not a str
])
def test_a_header_that_does_not_fit_the_form_is_a_codec_error_at_pack(h):
    with pytest.raises(CodecError):
        pack(h, b"")


def test_decoded_names_are_shared_and_the_caches_stay_bounded(monkeypatch):
    monkeypatch.setattr(core, "NAMES_CACHE_ENTRIES", 8)
    monkeypatch.setattr(core, "_names_encoded", {})
    monkeypatch.setattr(core, "_names_decoded", {})
    a, _ = unpack(pack(Header("urn:snipe:group:g", "urn:snipe:proc:s#1", 1, 0, ("r1",)), b""))
    b, _ = unpack(pack(Header("urn:snipe:group:g", "urn:snipe:proc:s#1", 2, 0, ("r1",)), b""))
    assert a.group is b.group and a.origin is b.origin and a.seen is b.seen
    for i in range(50):
        assert unpack(pack(Header("g", f"o{i}", i, 0, ()), b"x"))[0].origin == f"o{i}"
    assert len(core._names_encoded) <= 8 and len(core._names_decoded) <= 8
    big = Header("g", "o" * (core.NAMES_CACHE_BYTES + 1), 1, 0, ())
    assert unpack(pack(big, b""))[0] == big                     # too big to cache, still coded
    assert all(len(k) <= core.NAMES_CACHE_BYTES for k in core._names_decoded)
