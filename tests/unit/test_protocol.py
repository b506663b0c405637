"""FrameDecoder, encode_frame and decode_message: bytes only, no sockets."""

from __future__ import annotations

import struct

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sam2_service.wire.errors import FrameTooLarge, InvalidRequest, ServiceError
from sam2_service.wire.frames import (
    HEADER_SIZE,
    FrameDecoder,
    decode_message,
    encode_frame,
    encode_message,
)


def drain(decoder: FrameDecoder) -> list[bytes]:
    out = []
    while (frame := decoder.next_frame()) is not None:
        out.append(frame)
    return out


# --- encode_frame / encode_message ------------------------------------------------------


def test_encode_frame_is_little_endian_exact_bytes():
    assert encode_frame(b"abc") == b"\x03\x00\x00\x00abc"


def test_encode_frame_multibyte_length_is_little_endian():
    payload = b"x" * 0x0102
    frame = encode_frame(payload)
    assert frame[:4] == b"\x02\x01\x00\x00"
    assert frame[4:] == payload


def test_encode_frame_empty_payload():
    assert encode_frame(b"") == b"\x00\x00\x00\x00"


def test_encode_message_is_compact_utf8_json_frame():
    frame = encode_message({"a": 1, "b": "é"})
    body = '{"a":1,"b":"é"}'.encode("utf-8")
    assert frame == struct.pack("<I", len(body)) + body


def test_encode_message_parts_join_to_the_same_frame():
    from sam2_service.wire.frames import encode_message_parts

    obj = {"requestId": "r", "maskBase64": "A" * 100_000, "score": 0.5}
    header, payload = encode_message_parts(obj)
    assert len(header) == 4 and header + payload == encode_message(obj)


# --- FrameDecoder ------------------------------------------------------------------------


def test_decoder_rejects_non_positive_cap():
    with pytest.raises(ValueError):
        FrameDecoder(0)
    with pytest.raises(ValueError):
        FrameDecoder(-1)


def test_one_frame():
    d = FrameDecoder(1024)
    d.feed(encode_frame(b"hello"))
    assert d.next_frame() == b"hello"
    assert d.next_frame() is None
    assert d.buffered == 0
    assert not d.in_frame


def test_empty_decoder_returns_none():
    d = FrameDecoder(1024)
    assert d.next_frame() is None
    assert not d.in_frame


@pytest.mark.parametrize("split", range(0, len(encode_frame(b"hello world")) + 1))
def test_frame_split_at_every_byte_boundary(split):
    wire = encode_frame(b"hello world")
    d = FrameDecoder(1024)
    d.feed(wire[:split])
    if split < len(wire):
        assert d.next_frame() is None
        assert d.in_frame == (split > 0)
    d.feed(wire[split:])
    assert d.next_frame() == b"hello world"
    assert d.next_frame() is None
    assert not d.in_frame


def test_frame_fed_one_byte_at_a_time():
    payloads = [b"a", b"", b"bcdef", b"\x00\xff" * 10]
    wire = b"".join(encode_frame(p) for p in payloads)
    d = FrameDecoder(1024)
    got = []
    for i in range(len(wire)):
        d.feed(wire[i:i + 1])
        got.extend(drain(d))
    assert got == payloads
    assert d.buffered == 0


def test_many_frames_in_one_feed():
    payloads = [f"frame-{i}".encode() * (i + 1) for i in range(50)]
    d = FrameDecoder(10_000)
    d.feed(b"".join(encode_frame(p) for p in payloads))
    assert drain(d) == payloads
    assert d.buffered == 0


def test_partial_trailing_frame_is_kept():
    d = FrameDecoder(1024)
    d.feed(encode_frame(b"one") + encode_frame(b"two")[:5])
    assert d.next_frame() == b"one"
    assert d.next_frame() is None
    assert d.in_frame
    d.feed(encode_frame(b"two")[5:])
    assert d.next_frame() == b"two"


def test_zero_length_frame_returned_as_empty_bytes():
    d = FrameDecoder(1024)
    d.feed(b"\x00\x00\x00\x00")
    frame = d.next_frame()
    assert frame == b""
    assert frame is not None
    with pytest.raises(InvalidRequest) as info:
        decode_message(frame)
    assert info.value.code == "invalid_request"


def test_cap_checked_from_header_alone():
    d = FrameDecoder(100)
    d.feed(struct.pack("<I", 101))  # header only, no body at all
    with pytest.raises(FrameTooLarge) as info:
        d.next_frame()
    assert info.value.code == "frame_too_large"
    assert "101" in info.value.message


def test_cap_checked_for_huge_prefix():
    d = FrameDecoder(64 * 2**20)
    d.feed(b"\xff\xff\xff\xff")
    with pytest.raises(FrameTooLarge):
        d.next_frame()


def test_cap_checked_for_second_frame_header():
    d = FrameDecoder(10)
    d.feed(encode_frame(b"ok") + struct.pack("<I", 11))
    assert d.next_frame() == b"ok"
    with pytest.raises(FrameTooLarge):
        d.next_frame()


def test_exactly_at_cap_accepted():
    d = FrameDecoder(100)
    d.feed(encode_frame(b"z" * 100))
    assert d.next_frame() == b"z" * 100


def test_header_under_four_bytes_waits():
    d = FrameDecoder(10)
    d.feed(b"\xff\xff\xff")  # would be too large, but the header is incomplete
    assert d.next_frame() is None
    assert d.buffered == 3


def test_buffered_counts_body_bytes_after_header():
    d = FrameDecoder(100)
    d.feed(encode_frame(b"abcdef")[:7])
    assert d.next_frame() is None
    assert d.buffered == 7 - HEADER_SIZE
    assert d.in_frame


# --- decode_message ---------------------------------------------------------------------


def test_decode_message_object():
    assert decode_message(b'{"op": "ping", "n": [1, 2]}') == {"op": "ping", "n": [1, 2]}


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xff\xfe{}",
        b'{"a": "\xc3\x28"}',  # invalid UTF-8 inside a string
        b"{",
        b"not json",
        b'{"a": 1,}',
        b'{"a": NaN}',
        b'{"a": Infinity}',
        b'{"a": -Infinity}',
        b"NaN",
        b"[1, 2]",
        b"[]",
        b"42",
        b"3.5",
        b'"a string"',
        b"null",
        b"true",
        b"[" * 5000 + b"]" * 5000,
        b'{"a": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    ],
    ids=lambda p: repr(p[:20]),
)
def test_decode_message_rejects(payload):
    with pytest.raises(InvalidRequest) as info:
        decode_message(payload)
    assert info.value.code == "invalid_request"
    assert info.value.message


def test_decode_message_roundtrips_encode_message():
    obj = {"requestId": "r1", "width": 3, "bbox": {"x1": 0.5}, "points": [], "u": "ü✓"}
    frame = encode_message(obj)
    d = FrameDecoder(1024)
    d.feed(frame)
    assert decode_message(d.next_frame()) == obj


# --- properties -------------------------------------------------------------------------


@st.composite
def payloads_and_chunking(draw):
    payloads = draw(st.lists(st.binary(max_size=64), max_size=12))
    wire = b"".join(encode_frame(p) for p in payloads)
    cuts = sorted(draw(st.lists(st.integers(0, len(wire)), max_size=20)))
    bounds = [0, *cuts, len(wire)]
    chunks = [wire[a:b] for a, b in zip(bounds, bounds[1:])]
    return payloads, chunks


@settings(max_examples=200, deadline=None)
@given(payloads_and_chunking())
def test_property_any_chunking_roundtrips(data):
    payloads, chunks = data
    d = FrameDecoder(64)
    got = []
    for chunk in chunks:
        d.feed(chunk)
        got.extend(drain(d))
    assert got == payloads
    assert d.buffered == 0
    assert not d.in_frame


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=10), st.integers(1, 2**16))
def test_property_arbitrary_bytes_only_frame_too_large(chunks, cap):
    d = FrameDecoder(cap)
    try:
        for chunk in chunks:
            d.feed(chunk)
            for frame in drain(d):
                assert isinstance(frame, bytes)
                assert len(frame) <= cap
    except FrameTooLarge as exc:
        assert exc.code == "frame_too_large"


@settings(max_examples=200, deadline=None)
@given(st.one_of(
    st.binary(max_size=200),
    st.text(max_size=100).map(lambda s: s.encode("utf-8")),
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
        | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=10),
        lambda children: st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=5), children, max_size=4),
        max_leaves=20,
    ).map(orjson.dumps),
))
def test_property_decode_message_dict_or_invalid_request(payload):
    try:
        obj = decode_message(payload)
    except InvalidRequest as exc:
        assert exc.code == "invalid_request"
        assert type(exc) is InvalidRequest
    except ServiceError as exc:  # pragma: no cover - would be a bug
        pytest.fail(f"unexpected {type(exc).__name__}: {exc}")
    else:
        assert isinstance(obj, dict)


def test_pending_length_peeks_the_next_prefix_without_consuming():
    from sam2_service.wire.frames import FrameDecoder

    d = FrameDecoder(10)
    assert d.pending_length is None
    d.feed(b"\x05\x00\x00")
    assert d.pending_length is None
    d.feed(b"\x00ab")
    assert d.pending_length == 5 and d.buffered == 6
    assert d.next_frame() is None and d.pending_length == 5
    d.feed(b"cde" + b"\xff\x00\x00\x00")
    assert d.next_frame() == b"abcde"
    assert d.pending_length == 255  # over the cap: reported; next_frame raises
