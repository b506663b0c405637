"""Hostile input against the real daemon: broken framing, broken JSON, hostile images and
fields, hang-ups, pipelining floods and many clients at once.

Every bad request gets its exact reply checked (code, requestId echoed or made up, the empty
mask fields, nothing else), and the daemon must keep serving afterwards: the same connection
answers a ping where docs/protocol.md says it stays usable, and good segment requests still
produce the mask of a reference answer computed once at module start.

SAM2 image encodings triggered here (3-6 s each on the 2-core CPU): two, the reference and
the final check (which releases the cached embedding first). The good request inside a
pipelined burst reuses the cached embedding; a request whose client hangs up is dropped;
everything else fails before the model runs.
"""

from __future__ import annotations

import base64
import io
import re
import socket
import struct
import threading
import time
import zlib

import numpy as np
import orjson
import pytest
import skimage.data
from PIL import Image

from sam2_service.daemon.config import ServiceConfig

from .conftest import connect_raw, encode_image

pytestmark = pytest.mark.model

CAP = ServiceConfig().max_frame_bytes  # the daemon fixture runs with the default frame cap
MADE_UP_ID = re.compile(r"^srv-[0-9a-f]{16}$")
ERROR_KEYS = {"requestId", "error", "code", "maskWidth", "maskHeight", "maskBase64"}
W, H = 320, 213
BOX = {"x1": 60, "y1": 20, "x2": 250, "y2": 190}


# --- wire helpers (real protocol bytes, no project code) ---------------------------------


def frame(body: bytes) -> bytes:
    return struct.pack("<I", len(body)) + body


def jframe(obj) -> bytes:
    return frame(orjson.dumps(obj))


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        assert chunk, f"connection closed after {len(buf)} of {n} bytes"
        buf += chunk
    return bytes(buf)


def recv_frame(sock: socket.socket) -> dict:
    (n,) = struct.unpack("<I", recv_exact(sock, 4))
    return orjson.loads(recv_exact(sock, n))


def assert_closed(sock: socket.socket) -> None:
    """The daemon closed the connection: EOF, or ECONNRESET when it closed with our unread
    bytes still queued on its side (Linux reports that to the peer once it has read all)."""
    sock.settimeout(10)
    try:
        assert sock.recv(1) == b"", "the daemon should have closed the connection"
    except ConnectionResetError:
        pass


def assert_error(reply: dict, code: str, request_id: str | None = None, *words: str) -> None:
    """Exactly an error reply: the code, the id (echoed, or made up when None), empty mask
    fields, and a message containing ``words``."""
    assert set(reply) == ERROR_KEYS, reply
    assert reply["code"] == code, reply
    if request_id is None:
        assert MADE_UP_ID.match(reply["requestId"]), reply["requestId"]
    else:
        assert reply["requestId"] == request_id
    assert (reply["maskWidth"], reply["maskHeight"], reply["maskBase64"]) == (0, 0, "")
    assert isinstance(reply["error"], str) and reply["error"]
    for w in words:
        assert w in reply["error"], reply["error"]


def send_in_thread(sock: socket.socket, wire: bytes) -> tuple[threading.Thread, list]:
    """``sock.sendall(wire)`` on a thread, so that the caller can read replies meanwhile
    (a pipelining client that only reads after sending everything can deadlock with a
    daemon blocked writing replies nobody reads); the list gets "sent" or the OSError."""
    outcome: list = []

    def send() -> None:
        try:
            sock.sendall(wire)
            outcome.append("sent")
        except OSError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread, outcome


def ask(daemon, *frames: bytes) -> list[dict]:
    """Pipeline ``frames`` and a final ping on a fresh connection; return the replies to
    ``frames`` after checking that the ping is answered (the connection stayed usable)."""
    with connect_raw(daemon.socket_path) as sock:
        sender, outcome = send_in_thread(
            sock, b"".join(frames) + jframe({"op": "ping", "requestId": "alive"}))
        replies = [recv_frame(sock) for _ in frames]
        assert recv_frame(sock) == {"requestId": "alive", "ok": True}
        sender.join(timeout=60)
        assert outcome == ["sent"]
    return replies


def ping_ok(daemon) -> None:
    assert daemon.process.poll() is None, "daemon died"
    assert ask(daemon) == []


# --- images and the reference answer -----------------------------------------------------


@pytest.fixture(scope="module")
def png() -> bytes:
    small = Image.fromarray(skimage.data.coffee()).resize((W, H), Image.BILINEAR)
    return encode_image(np.asarray(small), "PNG")


def good(png: bytes, **extra) -> dict:
    return {"requestId": "good", "width": W, "height": H,
            "imageBase64": base64.b64encode(png).decode(), "bbox": BOX, **extra}


@pytest.fixture(scope="module")
def reference(daemon, png) -> dict:
    """One good box request, answered before any hostile input (1 inference)."""
    with connect_raw(daemon.socket_path) as sock:
        sock.sendall(jframe(good(png)))
        reply = recv_frame(sock)
    assert "error" not in reply, reply
    assert (reply["maskWidth"], reply["maskHeight"]) == (W, H)
    assert len(base64.b64decode(reply["maskBase64"])) == W * H
    return reply


def png_file(width: int, height: int, idat: bytes) -> bytes:
    """A 1-bit greyscale PNG declaring width x height, with the given IDAT payload."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def bomb_png(side: int) -> bytes:
    """A complete, valid side x side all-black PNG: tiny compressed, side**2 pixels decoded."""
    row = bytes(1 + (side + 7) // 8)  # filter byte + packed 1-bit pixels
    z, step = zlib.compressobj(1), max(1, (1 << 20) // len(row))
    parts = [z.compress(row * min(step, side - i)) for i in range(0, side, step)]
    return png_file(side, side, b"".join(parts) + z.flush())


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def encoded(array: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


# --- framing -----------------------------------------------------------------------------


def test_reference_answer_is_a_mask_and_limits_are_the_defaults(daemon, reference):
    raw = np.frombuffer(base64.b64decode(reference["maskBase64"]), dtype=np.uint8)
    assert set(np.unique(raw)) <= {0, 255} and reference["requestId"] == "good"
    (info,) = ask(daemon, jframe({"op": "info"}))
    assert info["limits"]["maxFrameBytes"] == CAP and info["limits"]["maxPoints"] == 64


@pytest.mark.parametrize("prefix", [CAP + 1, 2**31, 2**32 - 1])
@pytest.mark.parametrize("tail", [b"", b"x" * 65536], ids=["prefix-only", "with-64KiB-body"])
def test_prefix_over_cap_is_frame_too_large_then_closed(daemon, prefix, tail):
    with connect_raw(daemon.socket_path) as sock:
        sock.sendall(struct.pack("<I", prefix) + tail)
        assert_error(recv_frame(sock), "frame_too_large", None, str(prefix), str(CAP))
        assert_closed(sock)
    ping_ok(daemon)


def test_frame_too_large_after_good_frames_answers_those_first(daemon):
    with connect_raw(daemon.socket_path) as sock:
        sock.sendall(jframe({"op": "ping", "requestId": "a"}) + b"\x00\x00\x00\x00"
                     + struct.pack("<I", CAP + 1) + jframe({"op": "ping", "requestId": "never"}))
        assert recv_frame(sock) == {"requestId": "a", "ok": True}
        assert_error(recv_frame(sock), "invalid_request", None, "empty")
        assert_error(recv_frame(sock), "frame_too_large", None)
        assert_closed(sock)  # the ping after the bad prefix is never read


def test_frame_exactly_at_cap_is_served(daemon):
    head = b'{"op":"ping","requestId":"at-cap","pad":"'
    body = head + b"x" * (CAP - len(head) - 2) + b'"}'
    assert len(body) == CAP
    assert ask(daemon, frame(body)) == [{"requestId": "at-cap", "ok": True}]


BAD_FRAMES = {
    "empty": (b"", "empty"),
    "invalid-utf8": (b'{"op": "ping", "requestId": "\xff\xfe"}', "UTF-8"),
    "lone-surrogate-escape": (b'{"op": "ping", "requestId": "\\ud800"}', "JSON"),
    "bom": (b'\xef\xbb\xbf{"op": "ping"}', "JSON"),
    "array": (b'[{"op": "ping"}]', "object"),
    "number": (b"42", "object"),
    "string": (b'"ping"', "object"),
    "null": (b"null", "object"),
    "true": (b"true", "object"),
    "nan": (b'{"op": "ping", "x": NaN}', "JSON"),
    "infinity": (b'{"op": "ping", "x": Infinity}', "JSON"),
    "minus-infinity": (b'{"op": "ping", "x": -Infinity}', "JSON"),
    "bbox-1e309": (b'{"requestId": "r", "width": 1, "height": 1, "imageBase64": "AA==", '
                   b'"bbox": {"x1": 0, "y1": 0, "x2": 1e309, "y2": 1}}', "infinity"),
    "deep-arrays": (b"[" * 100_000, "JSON"),
    "deep-objects": (b'{"a":' * 100_000, "JSON"),
    "deep-in-field": (b'{"op": "ping", "x": ' + b"[" * 2000 + b"]" * 2000 + b"}", "JSON"),
    "trailing-object": (b'{"op": "ping"} {"op": "info"}', "JSON"),
    "trailing-nul": (b'{"op": "ping"}\x00', "JSON"),
    "truncated-json": (b'{"op": "ping", "requestId": "r', "JSON"),
    "garbage": (bytes(range(256)) * 4, "JSON"),
}


@pytest.mark.parametrize("name", BAD_FRAMES)
def test_bad_frame_is_invalid_request_and_connection_stays_usable(daemon, name):
    body, word = BAD_FRAMES[name]
    t0 = time.perf_counter()
    (reply,) = ask(daemon, frame(body))
    assert_error(reply, "invalid_request", None, word)
    assert time.perf_counter() - t0 < 5.0


def test_duplicate_keys_last_one_wins(daemon):
    replies = ask(daemon, frame(b'{"op": "info", "op": "ping", "requestId": "a", "requestId": "b"}'),
                  frame(b'{"op": "ping", "op": "explode", "requestId": "c"}'))
    assert replies[0] == {"requestId": "b", "ok": True}
    assert_error(replies[1], "unknown_op", "c", "explode")


def test_huge_integers(daemon, png):
    image = b64(png).encode()
    base = b'{"requestId": "big", "height": 213, "imageBase64": "' + image + b'", '
    replies = ask(
        daemon,
        frame(base + b'"width": 18446744073709551616}'),  # 2**64: parsed as a float
        frame(base + b'"width": 18446744073709551615}'),  # 2**64 - 1: an int, not the image's
        frame(base + b'"width": 320, "bbox": {"x1": 1' + b"0" * 400 + b', "y1": 0, "x2": 1, "y2": 1}}'),
        frame(b'{"op": "ping", "requestId": "big-id", "n": ' + b"9" * 300 + b"}"),
        frame(b'{"op": "ping", "requestId": "big-id", "n": ' + b"9" * 5000 + b"}"),
    )
    assert_error(replies[0], "invalid_request", "big", "width", "integer")
    assert_error(replies[1], "invalid_request", "big", "width", "18446744073709551615")
    # orjson reads integers beyond 64 bits as floats: past ~1e308 that is infinity, and the
    # whole frame is refused as not JSON, even in a field the daemon would ignore
    assert_error(replies[2], "invalid_request", None, "JSON", "infinity")
    assert replies[3] == {"requestId": "big-id", "ok": True}  # unknown field: ignored
    assert_error(replies[4], "invalid_request", None, "JSON", "infinity")


@pytest.mark.parametrize("wire", [
    b"\x10\x00",  # half a length prefix
    struct.pack("<I", 100) + b'{"op": "ping"',  # a partial body
    struct.pack("<I", 50_000_000) + b"{" * 1000,  # a prefix promising far more than sent
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64),  # a TLS ClientHello: 33 MB prefix
], ids=["half-prefix", "partial-body", "lying-prefix", "tls-hello"])
def test_hang_up_mid_frame(daemon, wire):
    with connect_raw(daemon.socket_path) as sock:
        sock.sendall(wire)
        sock.settimeout(0.3)
        with pytest.raises(socket.timeout):  # no reply: the daemon waits for the rest
            sock.recv(1)
    ping_ok(daemon)


def test_http_request_is_refused_as_too_large(daemon):
    with connect_raw(daemon.socket_path) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")  # "GET " = 542393671 LE
        assert_error(recv_frame(sock), "frame_too_large", None, "542393671")
        assert_closed(sock)


def test_half_closed_client_still_gets_every_answer(daemon):
    with connect_raw(daemon.socket_path) as sock:
        sock.sendall(b"".join(jframe({"op": "ping", "requestId": f"h{i}"}) for i in range(3)))
        sock.shutdown(socket.SHUT_WR)
        assert [recv_frame(sock)["requestId"] for _ in range(3)] == ["h0", "h1", "h2"]
        assert_closed(sock)


def test_many_mixed_frames_in_one_write_answered_in_order(daemon):
    kinds = [  # (frame for request i, expected id, expected code; None = a ping's ok)
        (lambda i: jframe({"op": "ping", "requestId": f"m{i}"}), lambda i: f"m{i}", None),
        (lambda i: frame(b"[1, 2, 3]"), lambda i: None, "invalid_request"),
        (lambda i: jframe({"op": "nope", "requestId": f"m{i}"}), lambda i: f"m{i}", "unknown_op"),
        (lambda i: jframe({"requestId": f"m{i}", "width": 0, "height": 1, "imageBase64": "AA=="}),
         lambda i: f"m{i}", "invalid_request"),
    ]
    replies = ask(daemon, *(kinds[i % 4][0](i) for i in range(60)))
    for i, reply in enumerate(replies):
        _, rid, code = kinds[i % 4]
        if code is None:
            assert reply == {"requestId": rid(i), "ok": True}
        else:
            assert_error(reply, code, rid(i))


def test_thousand_pings_pipelined(daemon):
    wire = b"".join(jframe({"op": "ping", "requestId": f"p{i}"}) for i in range(1000))
    with connect_raw(daemon.socket_path) as sock:
        sender = threading.Thread(target=sock.sendall, args=(wire,))
        t0 = time.perf_counter()
        sender.start()
        replies = [recv_frame(sock) for _ in range(1000)]
        sender.join()
        elapsed = time.perf_counter() - t0
    assert replies == [{"requestId": f"p{i}", "ok": True} for i in range(1000)]
    assert elapsed < 10.0


def test_client_that_never_reads_does_not_stall_others(daemon):
    flood = b"".join(jframe({"op": "ping", "requestId": f"f{i:06d}"}) for i in range(50_000))
    hog = connect_raw(daemon.socket_path)
    sender, outcome = send_in_thread(hog, flood)
    try:
        time.sleep(0.5)  # the hog's replies fill the socket buffers; nobody reads them
        t0 = time.perf_counter()
        ping_ok(daemon)  # the daemon's task for the hog is stuck writing; others are served
        assert time.perf_counter() - t0 < 2.0
        hog.settimeout(10)
        first = recv_frame(hog)  # the hog's replies were produced, in order
        assert first == {"requestId": "f000000", "ok": True}
    finally:
        hog.shutdown(socket.SHUT_RDWR)  # wakes a sendall still blocked (EPIPE)
        sender.join(timeout=30)
        hog.close()  # frees what the daemon had queued to it: its pending write fails
    assert outcome, "the sender thread is still blocked"
    ping_ok(daemon)


def test_many_concurrent_clients(daemon):
    n_clients, errors, b64_codes = 20, [], {}
    barrier = threading.Barrier(n_clients)

    def client(k: int) -> None:
        try:
            barrier.wait(timeout=30)
            frames = [jframe({"op": "ping", "requestId": f"c{k}-{j}"}) for j in range(3)]
            frames.append(jframe({"requestId": f"c{k}-bad", "width": 0, "height": H,
                                  "imageBase64": "AA=="}))  # refused before the model queue
            frames.append(jframe({"requestId": f"c{k}-b64", "width": W, "height": H,
                                  "imageBase64": "not*base64!"}))  # decoded on the model's thread
            replies = ask(daemon, *frames)
            assert replies[:3] == [{"requestId": f"c{k}-{j}", "ok": True} for j in range(3)]
            assert_error(replies[3], "invalid_request", f"c{k}-bad", "width")
            # a full model queue (max_queue) answers busy, even for a request that would fail
            assert_error(replies[4], b64_codes.setdefault(k, replies[4]["code"]), f"c{k}-b64")
            assert replies[4]["code"] in ("image_decode", "busy")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(f"client {k}: {exc!r}")

    threads = [threading.Thread(target=client, args=(k,)) for k in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert len(b64_codes) == n_clients
    assert "image_decode" in b64_codes.values()


# --- images ------------------------------------------------------------------------------


@pytest.mark.parametrize("side", [20_000, 7_000], ids=["400MP-over-pillow-limit", "49MP-over-our-cap"])
def test_decompression_bomb_png_is_refused_from_its_header_fast(daemon, side):
    data = bomb_png(side)
    assert len(data) < 300_000  # tiny on the wire, side**2 pixels once decoded
    request = jframe({"requestId": "bomb", "width": side, "height": side, "imageBase64": b64(data)})
    with connect_raw(daemon.socket_path) as sock:
        t0 = time.perf_counter()
        sock.sendall(request)
        reply = recv_frame(sock)
        elapsed = time.perf_counter() - t0
    assert_error(reply, "image_too_large", "bomb", "imageBase64", str(ServiceConfig().max_image_pixels))
    assert elapsed < 1.0, f"refusing the bomb took {elapsed:.2f} s"


def _jpeg_claiming(width: int, height: int) -> bytes:
    data = bytearray(encoded(np.zeros((16, 16, 3), np.uint8), "JPEG"))
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _other(fmt: str) -> bytes:
    return encoded(np.zeros((H, W, 3), np.uint8), fmt)


IMAGE_CASES = {
    "png-header-2^31-square": (png_file(2**31 - 1, 2**31 - 1, zlib.compress(bytes(64))),
                               "image_too_large", ["40000000"]),
    "jpeg-header-65535-square": (_jpeg_claiming(65535, 65535), "image_too_large", ["40000000"]),
    "png-zero-width": (png_file(0, 10, zlib.compress(bytes(64))), "image_decode", ["PNG or JPEG"]),
    "gif": (_other("GIF"), "image_decode", ["PNG or JPEG"]),
    "bmp": (_other("BMP"), "image_decode", ["PNG or JPEG"]),
    "tiff": (_other("TIFF"), "image_decode", ["PNG or JPEG"]),
    "webp": (_other("WEBP"), "image_decode", ["PNG or JPEG"]),
    "empty-file": (b"\x00", "image_decode", []),
}


@pytest.mark.parametrize("name", IMAGE_CASES)
def test_hostile_image_files(daemon, name):
    data, code, words = IMAGE_CASES[name]
    (reply,) = ask(daemon, jframe({"requestId": name, "width": W, "height": H,
                                   "imageBase64": b64(data)}))
    assert_error(reply, code, name, "imageBase64", *words)


@pytest.mark.parametrize("fmt,keep", [("PNG", 0.5), ("PNG", 0.98), ("JPEG", 0.5), ("JPEG", 0.9)])
def test_truncated_image_is_image_decode(daemon, png, fmt, keep):
    data = png if fmt == "PNG" else encode_image(np.asarray(Image.open(io.BytesIO(png))), "JPEG")
    cut = data[:int(len(data) * keep)]
    (reply,) = ask(daemon, jframe(good(cut, requestId="cut")))
    assert_error(reply, "image_decode", "cut", "imageBase64")


@pytest.mark.parametrize("text,words", [
    ("not*base64!", ["base64"]),
    ("iVBORw0KGgo", ["base64"]),  # missing padding
    ("iVBO\nRw0KGgo=", ["base64"]),  # a line break
    ("iVBO-_w0KGgo=", ["base64"]),  # the URL-safe alphabet
    ("iVBORw0KGgoé", ["base64"]),  # not ASCII
    ("data:text/plain;base64,aGVsbG8=", ["data URL"]),
    ("data:image/png,iVBORw0KGgo=", ["data URL"]),  # not ;base64
    ("data:;base64,iVBORw0KGgo=", ["data URL"]),
    ("data:image/png;base64,aGVsbG8gd29ybGQ=", ["PNG or JPEG"]),  # valid base64, not an image
])
def test_bad_base64_or_data_url_is_image_decode(daemon, text, words):
    (reply,) = ask(daemon, jframe({"requestId": "b64", "width": W, "height": H, "imageBase64": text}))
    assert_error(reply, "image_decode", "b64", "imageBase64", *words)


# --- fields ------------------------------------------------------------------------------

DELETE = object()
FIELD_CASES = [
    # (name, overrides of the good request (DELETE removes the key), code, words in the error)
    ("bbox-strings", {"bbox": {"x1": "60", "y1": 20, "x2": 250, "y2": 190}}, "invalid_request", ["bbox.x1"]),
    ("bbox-bool", {"bbox": {"x1": True, "y1": 20, "x2": 250, "y2": 190}}, "invalid_request", ["bbox.x1"]),
    ("bbox-null-coord", {"bbox": {"x1": 0, "y1": None, "x2": 250, "y2": 190}}, "invalid_request", ["bbox.y1"]),
    ("bbox-missing-x2", {"bbox": {"x1": 0, "y1": 0, "y2": 190}}, "invalid_request", ["bbox.x2"]),
    ("bbox-list", {"bbox": [60, 20, 250, 190]}, "invalid_request", ["bbox"]),
    ("bbox-inverted", {"bbox": {"x1": 250, "y1": 20, "x2": 60, "y2": 190}}, "invalid_request", ["inverted"]),
    ("bbox-zero-area", {"bbox": {"x1": 60, "y1": 20, "x2": 60, "y2": 190}}, "invalid_request", ["bbox"]),
    ("bbox-outside", {"bbox": {"x1": 400, "y1": 0, "x2": 500, "y2": 100}}, "invalid_request", ["no area"]),
    ("bbox-negative", {"bbox": {"x1": -500, "y1": -500, "x2": -1, "y2": -1}}, "invalid_request", ["no area"]),
    ("bbox-huge", {"bbox": {"x1": 1e300, "y1": 1e300, "x2": 1.5e300, "y2": 2e300}}, "invalid_request", ["no area"]),
    ("bbox-denormal", {"bbox": {"x1": 0, "y1": 0, "x2": 5e-324, "y2": 100}}, "invalid_request", ["no area"]),
    ("point-left", {"bbox": DELETE, "points": [{"x": -0.5, "y": 10}]}, "invalid_request", ["points[0]", "outside"]),
    ("point-right", {"bbox": DELETE, "points": [{"x": 10, "y": 10}, {"x": W + 1, "y": 10}]},
     "invalid_request", ["points[1]", "outside"]),
    ("point-below", {"bbox": DELETE, "points": [{"x": 10, "y": H + 0.01}]}, "invalid_request", ["points[0]"]),
    ("label-2", {"points": [{"x": 1, "y": 1, "label": 2}]}, "invalid_request", ["points[0].label"]),
    ("label-true", {"points": [{"x": 1, "y": 1, "label": True}]}, "invalid_request", ["points[0].label"]),
    ("label-string", {"points": [{"x": 1, "y": 1, "label": "1"}]}, "invalid_request", ["points[0].label"]),
    ("label-null", {"points": [{"x": 1, "y": 1, "label": None}]}, "invalid_request", ["points[0].label"]),
    ("label-half", {"points": [{"x": 1, "y": 1, "label": 0.5}]}, "invalid_request", ["points[0].label"]),
    ("point-string-x", {"points": [{"x": "1", "y": 1}]}, "invalid_request", ["points[0].x"]),
    ("point-missing-y", {"points": [{"x": 1}]}, "invalid_request", ["points[0].y"]),
    ("point-list", {"points": [[1, 1]]}, "invalid_request", ["points[0]"]),
    ("points-object", {"points": {"x": 1, "y": 1}}, "invalid_request", ["points"]),
    ("points-65", {"points": [{"x": 1, "y": 1}] * 65}, "invalid_request", ["points", "65", "64"]),
    ("points-100000", {"points": [{"x": 1, "y": 1}] * 100_000}, "invalid_request", ["points", "64"]),
    ("width-wrong", {"width": W + 1}, "invalid_request", ["width", str(W + 1)]),
    ("height-wrong", {"height": H - 1}, "invalid_request", ["height"]),
    ("width-height-swapped", {"width": H, "height": W}, "invalid_request", ["width"]),
    ("width-zero", {"width": 0}, "invalid_request", ["width", "positive"]),
    ("height-negative", {"height": -213}, "invalid_request", ["height", "positive"]),
    ("width-float", {"width": 320.0}, "invalid_request", ["width", "integer"]),
    ("width-fraction", {"width": 320.5}, "invalid_request", ["width", "integer"]),
    ("width-bool", {"width": True}, "invalid_request", ["width", "integer"]),
    ("height-string", {"height": "213"}, "invalid_request", ["height", "integer"]),
    ("width-missing", {"width": DELETE}, "invalid_request", ["width"]),
    ("image-missing", {"imageBase64": DELETE}, "invalid_request", ["imageBase64"]),
    ("image-empty", {"imageBase64": ""}, "invalid_request", ["imageBase64"]),
    ("image-number", {"imageBase64": 42}, "invalid_request", ["imageBase64"]),
    ("op-unknown", {"op": "explode"}, "unknown_op", ["explode"]),
    ("op-case", {"op": "PING"}, "unknown_op", ["PING"]),
    ("op-empty", {"op": ""}, "unknown_op", []),
    ("op-number", {"op": 1}, "invalid_request", ["op"]),
    ("op-null", {"op": None}, "invalid_request", ["op"]),
    ("op-list", {"op": ["ping"]}, "invalid_request", ["op"]),
]


@pytest.mark.parametrize("case", FIELD_CASES, ids=[c[0] for c in FIELD_CASES])
def test_bad_field(daemon, png, case):
    name, overrides, code, words = case
    request = good(png, requestId=name)
    for key, value in overrides.items():
        if value is DELETE:
            del request[key]
        else:
            request[key] = value
    (reply,) = ask(daemon, jframe(request))
    assert_error(reply, code, name, *words)


def test_unknown_op_message_is_bounded(daemon):
    (reply,) = ask(daemon, jframe({"requestId": "long-op", "op": "x" * 1_000_000}))
    assert_error(reply, "unknown_op", "long-op")
    assert len(reply["error"]) < 10_000


@pytest.mark.parametrize("rid", [7, 1.5, True, None, {"id": "x"}, ["x"]], ids=str)
def test_request_id_not_a_string_gets_made_up_id(daemon, rid):
    (reply,) = ask(daemon, jframe({"op": "ping", "requestId": rid}))  # null is present: refused
    assert_error(reply, "invalid_request", None, "requestId")


@pytest.mark.parametrize("rid", ["x" * 256, "é\n\t\u2028\"\\ \U0001f600", " "], ids=["longest", "unicode", "space"])
def test_string_request_id_echoed_exactly(daemon, rid):
    replies = ask(daemon, jframe({"op": "ping", "requestId": rid}),
                  jframe({"op": "explode", "requestId": rid}))
    assert replies[0] == {"requestId": rid, "ok": True}
    assert_error(replies[1], "unknown_op", rid)


@pytest.mark.parametrize("op", ["ping", "segment", "explode"])
def test_over_long_request_id_is_refused_not_echoed_nor_logged(daemon, op):
    """An 8 MB requestId was echoed and logged whole (8.4 MB a log line): now invalid_request
    under a made-up id, and the log keeps no trace of the id's text."""
    marker = "q7Zlong" * 1_200_000  # 8.4 MB
    before = daemon.log_path.stat().st_size
    replies = ask(daemon, jframe({"op": op, "requestId": marker, "width": W, "height": H}))
    assert_error(replies[0], "invalid_request", None, "requestId", "more than the limit of 256")
    assert len(orjson.dumps(replies[0])) < 1000
    with open(daemon.log_path, "rb") as log:
        log.seek(before)
        written = log.read()
    assert written and b"q7Zlong" not in written


def test_empty_string_request_id_gets_a_made_up_one(daemon):
    """docs/protocol.md: a non-empty string requestId is echoed; "" counts as absent."""
    (reply,) = ask(daemon, jframe({"op": "ping", "requestId": ""}))
    assert reply["ok"] is True and re.fullmatch(r"srv-[0-9a-f]{16}", reply["requestId"])


# --- still serving -----------------------------------------------------------------------


def test_hang_up_right_after_a_segment_request(daemon, png, reference):
    with connect_raw(daemon.socket_path) as sock:
        sock.sendall(jframe(good(png, requestId="abandoned", bbox={"x1": 0, "y1": 0, "x2": 99, "y2": 99})))
    time.sleep(0.2)  # the daemon drops the request, or runs it and discards the reply
    t0 = time.perf_counter()
    ping_ok(daemon)  # answered on the event loop, not queued behind the model
    assert time.perf_counter() - t0 < 1.0


def test_good_request_between_bad_ones_matches_reference(daemon, png, reference):
    replies = ask(daemon, frame(b"[]"), jframe(good(png, requestId="bad", width=1)),
                  jframe(good(png)), jframe({"requestId": "bad2", "op": 3}))
    assert_error(replies[0], "invalid_request", None)
    assert_error(replies[1], "invalid_request", "bad", "width")
    assert replies[2]["maskBase64"] == reference["maskBase64"]
    assert replies[2]["score"] == pytest.approx(reference["score"], abs=1e-6)
    assert_error(replies[3], "invalid_request", "bad2", "op")


def test_zz_after_everything_the_daemon_still_answers_like_the_reference(daemon, png, reference):
    release, final = ask(daemon, jframe({"op": "release", "imageId": reference["imageId"]}),
                         jframe(good(png, requestId="final")))
    assert release["ok"] is True and release["released"] is True
    assert final["requestId"] == "final" and final["cached"] is False  # encoded afresh
    assert (final["maskWidth"], final["maskHeight"]) == (W, H)
    assert final["maskBase64"] == reference["maskBase64"]
    assert daemon.process.poll() is None
