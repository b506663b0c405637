"""Fuzz target: the daemon's whole request path without I/O, driven by hypothesis.

Bytes go through what the server does with a connection's bytes, minus the socket and
the model: the server's own :class:`~sam2_service.daemon.serving.dispatch.Dispatcher` and
:class:`~sam2_service.daemon.inference.worker.InferenceWorker` answer every frame, with
:class:`FuzzEngine` (no model; it checks what reaches it) in place of SAM2:

    FrameDecoder.feed / next_frame -> Dispatcher.respond: decode_message -> parse_request
        -> (requests carrying an image) decode_base64 -> decode_image(max_image_pixels)
        -> (segment requests) prompts.validate(request, image shape) -> engine
        -> the reply object, encoded as a frame

Inputs are random bytes, and structured frames built from valid requests (with small valid
PNG/JPEG images, and images of formats that must be refused) that are then mutated at every
layer: image bytes (flips, truncation, insertions, header fields, with PNG chunk CRCs
recomputed so that the mutation reaches the decoder), base64 text, request fields, JSON
text, length prefixes, and how the stream is cut into reads.

Properties checked on every example:
  * no exception but :class:`~sam2_service.wire.errors.ServiceError` reaches the dispatcher
    (anything else is an ``internal`` reply, a failure here): every error reply has a
    documented code, a non-empty message and the request's ``requestId``;
  * the frame decoder returns exactly the frames (or the ``frame_too_large`` point) of a
    reference parser, never a payload over the cap, and after draining never holds
    ``cap + 4`` bytes or more (plus at most one read while it fills);
  * an image reaching the engine is HxWx3 uint8, writable, with H*W <= max_image_pixels;
  * prompts reaching the engine are finite, inside the image, with labels 0/1 and SAM2's
    mask policy;
  * every reply the server would send (success or error) encodes as a frame.

Run: ``FUZZ_SECONDS=600 .venv/bin/python fuzz/fuzz_pipeline.py`` (``make fuzz``). It prints
the number of examples run and, on failure, hypothesis's shrunk example and the traceback,
and exits 1.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import os
import sys
import time
import traceback
import warnings
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import strategies as st
from PIL import Image

from sam2_service.daemon.config import ServiceConfig
from sam2_service.daemon.inference.engine import Embedding, EngineInfo, MaskSet
from sam2_service.daemon.inference.prompts import Prompts
from sam2_service.daemon.inference.worker import InferenceWorker
from sam2_service.daemon.serving.dispatch import Dispatcher
from sam2_service.wire.errors import ERROR_CODES, ServiceError
from sam2_service.wire.frames import HEADER_SIZE, FrameDecoder, decode_message, encode_message

READ_CHUNK = 1 << 18  # the server's read size (connection.READ_CHUNK)


# --- the pipeline under test ------------------------------------------------------------


@dataclass
class Stats:
    """What one fuzz run saw (to show that the mutations reach every stage)."""

    examples: int = 0
    frames: int = 0
    too_large: int = 0
    codes: dict[str, int] = field(default_factory=dict)
    images_decoded: int = 0
    prompts_validated: int = 0
    slowest_s: float = 0.0


def _check_service_error(exc: ServiceError) -> None:
    assert exc.code in ERROR_CODES, exc.code
    assert isinstance(exc.message, str) and exc.message, repr(exc.message)
    assert exc.field is None or isinstance(exc.field, str)


def _check_image(image: np.ndarray, max_pixels: int) -> None:
    assert isinstance(image, np.ndarray) and image.dtype == np.uint8, image.dtype
    assert image.ndim == 3 and image.shape[2] == 3, image.shape
    h, w = image.shape[:2]
    assert h >= 1 and w >= 1 and h * w <= max_pixels, (image.shape, max_pixels)
    assert image.flags.writeable


def _check_prompts(prompts: Prompts, h: int, w: int) -> None:
    if prompts.box is not None:
        x1, y1, x2, y2 = (float(v) for v in prompts.box)
        assert prompts.box.dtype == np.float32 and prompts.box.shape == (4,)
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h, (prompts.box, w, h)
    n = 0
    if prompts.point_coords is not None:
        n = len(prompts.point_coords)
        assert prompts.point_coords.shape == (n, 2) and prompts.point_labels.shape == (n,)
        assert np.isfinite(prompts.point_coords).all()
        assert set(prompts.point_labels.tolist()) <= {0, 1}
        assert ((prompts.point_coords >= 0) & (prompts.point_coords <= [w, h])).all()
    assert prompts.box is not None or n > 0
    assert prompts.multimask_output == (prompts.box is None and n == 1)


class FuzzEngine:
    """A :class:`~sam2_service.daemon.inference.engine.Engine` with no model: checks every image and
    every set of prompts that reaches it, counts them in :attr:`stats`, and predicts an
    empty mask."""

    model_id = ("fuzz", "none", "float32", "cpu")
    weights, device, precision, load_time_ms = "fake", "cpu", "float32", 0.0

    def __init__(self) -> None:
        self.stats = Stats()
        self.max_pixels = 1

    def embed(self, image: np.ndarray) -> Embedding:
        _check_image(image, self.max_pixels)
        self.stats.images_decoded += 1
        return Embedding({}, image.shape[:2], 0, self.model_id, 0.0)

    def predict_all(self, embedding: Embedding, prompts: Prompts) -> MaskSet:
        _check_prompts(prompts, *embedding.orig_hw)
        self.stats.prompts_validated += 1
        return MaskSet(np.zeros((1, *embedding.orig_hw), dtype=bool),
                       np.full(1, 0.5, np.float32), np.zeros((1, 256, 256), np.float32), 0.0)

    def is_out_of_memory(self, exc: BaseException) -> bool:
        return False

    def free_memory(self) -> None:
        pass

    def warmup(self) -> float:
        return 0.0

    def info(self) -> EngineInfo:
        return EngineInfo(model="fuzz", weights=self.weights, device=self.device,
                          precision=self.precision)


class Pipeline:
    """The server's dispatcher and worker on a private event loop (one per fuzz process;
    the embedding cache is off, so every image is decoded)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.engine = FuzzEngine()
        self.worker = InferenceWorker(self.engine, 1, cache_bytes=0, max_queue=1)
        self._configs: dict[int, ServiceConfig] = {}

    def respond(self, payload: bytes, max_pixels: int, max_points: int, stats: Stats) -> dict:
        """The reply the server would send for ``payload``."""
        cfg = self._configs.get(max_points)
        if cfg is None:
            cfg = self._configs[max_points] = ServiceConfig(max_points=max_points, cache_bytes=0)
        self.engine.stats, self.engine.max_pixels = stats, max_pixels
        self.worker.max_image_pixels = max_pixels
        return self.loop.run_until_complete(Dispatcher(cfg, self.worker).respond(payload, time.monotonic()))


_pipeline: Pipeline | None = None


def _request_id_sent(payload: bytes) -> str | None:
    """The readable ``requestId`` of ``payload``, which every reply to it must carry."""
    try:
        obj = decode_message(payload)
    except ServiceError:
        return None
    rid = obj.get("requestId") if isinstance(obj, dict) else None
    return rid if isinstance(rid, str) and rid else None


def handle_payload(payload: bytes, max_pixels: int, max_points: int, stats: Stats) -> dict:
    """Answer one frame's payload with the server's dispatcher, minus the model; return the
    reply object (already checked to encode as a frame). Raises AssertionError on a bug: an
    ``internal`` reply (an unexpected exception), an undocumented code, a wrong requestId."""
    global _pipeline
    _pipeline = _pipeline or Pipeline()
    reply = _pipeline.respond(payload, max_pixels, max_points, stats)
    code = reply.get("code", "ok")
    assert code != "internal", reply["error"]
    if code != "ok":
        assert code in ERROR_CODES and isinstance(reply["error"], str) and reply["error"], reply
    sent = _request_id_sent(payload)
    if sent is not None:
        assert reply["requestId"] == sent, (reply["requestId"], sent)
    else:  # made up, a fresh one each time
        assert reply["requestId"].startswith("srv-") and len(reply["requestId"]) == 20
    stats.codes[code] = stats.codes.get(code, 0) + 1
    encode_message(reply)  # what the server writes back must always encode
    return reply


def reference_frames(wire: bytes, cap: int) -> tuple[list[bytes], bool]:
    """The frames of ``wire`` read the simple way, and whether a prefix over ``cap`` stops it."""
    frames, i = [], 0
    while len(wire) - i >= HEADER_SIZE:
        n = int.from_bytes(wire[i:i + HEADER_SIZE], "little")
        if n > cap:
            return frames, True
        if len(wire) - i - HEADER_SIZE < n:
            break
        frames.append(wire[i + HEADER_SIZE:i + HEADER_SIZE + n])
        i += HEADER_SIZE + n
    return frames, False


def run_stream(chunks: list[bytes], cap: int, max_pixels: int, max_points: int,
               stats: Stats) -> None:
    """Feed ``chunks`` (the reads of one connection) to a FrameDecoder as the server's loop
    does, answer every frame, and check the decoder against :func:`reference_frames`."""
    decoder = FrameDecoder(cap)
    got: list[bytes] = []
    too_large = False
    for chunk in chunks:
        before = decoder.buffered
        decoder.feed(chunk)
        assert decoder.buffered == before + len(chunk)
        while True:
            try:
                payload = decoder.next_frame()
            except ServiceError as exc:
                _check_service_error(exc)
                assert exc.code == "frame_too_large"
                too_large = True
                break
            if payload is None:
                break
            assert len(payload) <= cap
            got.append(payload)
            handle_payload(payload, max_pixels, max_points, stats)
        if too_large:
            break  # the server answers frame_too_large and closes the connection
        assert decoder.buffered < cap + HEADER_SIZE, (decoder.buffered, cap)
    expected, expected_too_large = reference_frames(b"".join(chunks), cap)
    assert got == expected, (len(got), len(expected))
    assert too_large == expected_too_large
    stats.frames += len(got)
    stats.too_large += too_large


# --- strategies -------------------------------------------------------------------------

OK_FORMATS = ("PNG", "JPEG")
OTHER_FORMATS = ("GIF", "BMP", "TIFF", "WEBP", "PPM", "ICO")
MODES = ("RGB", "L", "RGBA", "P", "1", "LA", "I;16", "CMYK")
SAVE_MODES = {"PNG": ("RGB", "L", "RGBA", "P", "1", "LA", "I;16"), "JPEG": ("RGB", "L", "CMYK"),
              "TIFF": ("RGB", "L", "RGBA", "P", "1", "CMYK", "I;16")}


def _png_fix_crcs(data: bytes) -> bytes:
    """Recompute every PNG chunk's CRC that can be walked to (mutations then reach the
    chunk parsers and zlib instead of stopping at a CRC check)."""
    out, i = bytearray(data[:8]), 8
    while i + 12 <= len(data):
        n = int.from_bytes(data[i:i + 4], "big")
        end = i + 8 + n
        if end + 4 > len(data):
            break
        body = data[i + 4:end]
        out += data[i:end] + (zlib.crc32(body) & 0xFFFFFFFF).to_bytes(4, "big")
        i = end + 4
    return bytes(out + data[i:])


@st.composite
def image_files(draw, formats: tuple[str, ...] = OK_FORMATS * 9 + OTHER_FORMATS
                ) -> tuple[bytes, int, int, str]:
    """A small image file: (bytes, width, height, format), PNG/JPEG mostly."""
    fmt = draw(st.sampled_from(formats))
    w, h = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    mode = draw(st.sampled_from(MODES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if mode == "I;16":
        im = Image.fromarray(rng.integers(0, 2**16, (h, w), dtype=np.uint16))
    else:
        im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)
    if im.mode not in SAVE_MODES.get(fmt, ("RGB",)):
        im = im.convert("RGB")
    kwargs: dict[str, Any] = {}
    if fmt == "JPEG":
        kwargs = {"quality": draw(st.integers(1, 95)), "progressive": draw(st.booleans())}
    elif fmt == "PNG" and draw(st.booleans()):
        kwargs = {"compress_level": draw(st.integers(0, 9))}
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kwargs)
    return buf.getvalue(), w, h, fmt


@st.composite
def mutated_bytes(draw, data: bytes, fmt: str) -> bytes:
    """``data`` with 0 to 3 byte-level mutations (flip, truncate, insert, splice a big
    number), PNG CRCs recomputed afterwards or not."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(("flip", "truncate", "insert", "u32", "u16")))
        pos = draw(st.integers(0, max(len(buf) - 1, 0)))
        if kind == "flip" and buf:
            buf[pos] ^= draw(st.integers(1, 255))
        elif kind == "truncate":
            del buf[pos:]
        elif kind == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        else:
            size = 4 if kind == "u32" else 2
            value = draw(st.one_of(st.integers(0, 2**(8 * size) - 1),
                                   st.sampled_from([0, 1, 2**(8 * size) - 1, 2**(8 * size - 1)])))
            buf[pos:pos + size] = value.to_bytes(size, "big")
    if fmt == "PNG" and draw(st.booleans()):
        return _png_fix_crcs(bytes(buf))
    return bytes(buf)


@st.composite
def png_with_header(draw) -> tuple[bytes, int, int]:
    """A PNG whose IHDR declares an arbitrary size (often huge) over a tiny IDAT."""
    w = draw(st.one_of(st.integers(1, 64), st.integers(1, 2**31 - 1)))
    h = draw(st.one_of(st.integers(1, 64), st.integers(1, 2**31 - 1)))
    depth, ctype = draw(st.sampled_from([(1, 0), (8, 0), (8, 2), (16, 0), (8, 6), (8, 3)]))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (len(body).to_bytes(4, "big") + kind + body
                + (zlib.crc32(kind + body) & 0xFFFFFFFF).to_bytes(4, "big"))

    ihdr = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([depth, ctype, 0, 0, 0])
    plte = chunk(b"PLTE", bytes(range(12))) if ctype == 3 else b""
    idat = zlib.compress(b"\x00" * draw(st.integers(0, 2048)))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + plte + chunk(b"IDAT", idat)
            + chunk(b"IEND", b"")), w, h


@st.composite
def image_text(draw, pristine: bool = False) -> tuple[str, int, int]:
    """``imageBase64`` text for an image (valid or mutated; with ``pristine`` a valid PNG or
    JPEG as plain base64), and its true width/height."""
    if pristine:
        data, w, h, fmt = draw(image_files(OK_FORMATS))
        return base64.b64encode(data).decode("ascii"), w, h
    if draw(st.integers(0, 9)) == 0:
        data, w, h = draw(png_with_header())
    else:
        data, w, h, fmt = draw(image_files())
        if draw(st.integers(0, 2)) == 0:
            data = draw(mutated_bytes(data, fmt))
    text = base64.b64encode(data).decode("ascii")
    wrap = draw(st.sampled_from(("plain",) * 6 + ("data-png", "data-jpeg", "data-text",
                                                 "data-weird", "broken")))
    if wrap == "data-png":
        text = "data:image/png;base64," + text
    elif wrap == "data-jpeg":
        text = "data:image/jpeg;base64," + text
    elif wrap == "data-text":
        text = "data:text/plain;base64," + text
    elif wrap == "data-weird":
        text = draw(st.sampled_from(("data:image/;base64,", "data:image/png,", "data:;base64,",
                                     "DATA:image/png;base64,", "data:image/png;base64,,"))) + text
    elif wrap == "broken" and text:
        pos = draw(st.integers(0, len(text)))
        junk = draw(st.sampled_from(("=", "==", "\n", " ", "-", "_", "*", "é", "\x00", "A")))
        text = text[:pos] + junk + text[pos + draw(st.integers(0, 2)):]
    return text, w, h


JSON_SCALARS = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
                | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda c: st.lists(c, max_size=4)
                           | st.dictionaries(st.text(max_size=6), c, max_size=4), max_leaves=10)
EDGE_NUMBERS = st.sampled_from([0, -1, 1, 0.5, -0.0, 1e-320, 1e308, -1e308, 2**63, 2**64,
                                2**70, True, False, "1", None, [], {}])


def coordinate(limit: int) -> st.SearchStrategy:
    return st.one_of(st.integers(-2 * limit - 2, 2 * limit + 2),
                     st.floats(-2.0 * limit - 2, 2.0 * limit + 2, allow_nan=False), EDGE_NUMBERS)


@st.composite
def boxes(draw, w: int, h: int) -> dict:
    """A bbox object: inside the image and ordered (half the time), else anything."""
    if draw(st.booleans()):
        x1, x2 = sorted(draw(st.lists(st.floats(0, w), min_size=2, max_size=2)))
        y1, y2 = sorted(draw(st.lists(st.floats(0, h), min_size=2, max_size=2)))
        return {"x1": x1, "y1": y1, "x2": x2, "y2": y2}
    return {k: draw(coordinate(w if k[0] == "x" else h)) for k in ("x1", "y1", "x2", "y2")}


@st.composite
def points(draw, w: int, h: int) -> dict:
    """A point object: inside the image with label 0/1/absent (mostly), else anything."""
    if draw(st.integers(0, 2)):
        point = {"x": draw(st.floats(0, w)), "y": draw(st.integers(0, h))}
    else:
        point = {"x": draw(coordinate(w)), "y": draw(coordinate(h))}
    label = draw(st.sampled_from([0, 1, 1, 2, -1, True, "1", 1.0, None, "absent", "absent"]))
    return point if label == "absent" else {**point, "label": label}


@st.composite
def requests(draw) -> dict:
    """A request object: a segment (or embed) request on a real image, then 0-3 field
    mutations; sometimes ping/info/release or another op. A third are pristine: a valid
    segment request on a valid image, only the prompts' geometry drawn freely."""
    pristine = draw(st.integers(0, 2)) == 0
    op = None if pristine else draw(st.sampled_from(
        [None] * 6 + ["segment", "ping", "info", "embed", "release", "explode", 7]))
    obj: dict[str, Any] = {} if op is None else {"op": op}
    if draw(st.booleans()):
        use_text = pristine or draw(st.integers(0, 7))
        obj["requestId"] = draw(st.text(max_size=20) if use_text else JSON_VALUES)
    text, w, h = draw(image_text(pristine))
    if op in (None, "segment", "embed"):
        obj.update(width=w, height=h, imageBase64=text)
        if draw(st.booleans()):
            obj["bbox"] = draw(boxes(w, h))
        if draw(st.booleans()):
            n = draw(st.integers(0, 3) if draw(st.integers(0, 7)) else st.integers(60, 70))
            obj["points"] = [draw(points(w, h)) for _ in range(n)]
    if pristine:
        return obj
    if op in ("release", None, "segment") and draw(st.integers(0, 9)) == 0:
        obj["imageId"] = draw(st.one_of(st.just("ab" * 32), st.text(max_size=70), JSON_VALUES))
    for _ in range(draw(st.sampled_from([0, 0, 0, 0, 1, 1, 2, 3]))):
        keys = sorted(obj) + ["width", "height", "bbox", "points", "imageBase64", "requestId"]
        key = draw(st.sampled_from(keys))
        action = draw(st.sampled_from(("delete", "value", "edge", "off_by_one")))
        if action == "delete":
            obj.pop(key, None)
        elif action == "value":
            obj[key] = draw(JSON_VALUES)
        elif action == "edge":
            obj[key] = draw(EDGE_NUMBERS)
        elif isinstance(obj.get(key), int) and not isinstance(obj.get(key), bool):
            obj[key] += draw(st.sampled_from([-1, 1]))
    return obj


@st.composite
def payloads(draw) -> bytes:
    """One frame's payload: a (mutated) request as JSON text, or hostile JSON/bytes."""
    kind = draw(st.integers(0, 15))
    if kind <= 11:
        text = json.dumps(draw(requests()), allow_nan=True)  # NaN/Infinity/big ints on purpose
        if draw(st.integers(0, 9)) == 0:  # textual damage
            pos = draw(st.integers(0, len(text)))
            text = text[:pos] + draw(st.text(max_size=4)) + text[pos + draw(st.integers(0, 3)):]
        return text.encode("utf-8", "surrogatepass")
    if kind == 12:
        n = draw(st.integers(1, 5000))
        return draw(st.sampled_from([b"[" * n, b"[" * n + b"]" * n, b'{"a":' * n + b"1" + b"}" * n,
                                     b'{"a":' + b"[" * n + b"]" * n + b"}"]))
    if kind == 13:
        return draw(st.sampled_from([b"", b"null", b"[]", b"1", b'"s"', b"NaN", b"{}", b"\xef\xbb\xbf{}",
                                     b'{"op":"ping","op":"info"}', b'{"requestId":"\\ud800"}',
                                     b'{"op":"ping"} {}', b'{"op":"ping"}\x00', b"\xff\xfe\xfd"]))
    return draw(st.binary(max_size=64))


@st.composite
def streams(draw) -> tuple[list[bytes], int, int, int]:
    """(reads of one connection, frame cap, max image pixels, max points)."""
    frames = []
    for payload in draw(st.lists(payloads(), min_size=1, max_size=4)):
        prefix = len(payload)
        lie = draw(st.integers(0, 23))
        if lie == 0:
            prefix = draw(st.integers(0, 2**32 - 1))
        elif lie == 1:
            prefix = max(0, prefix + draw(st.integers(-8, 8)))
        frames.append(prefix.to_bytes(4, "little") + payload)
    if draw(st.integers(0, 15)) == 0:
        frames.append(draw(st.binary(max_size=32)))  # trailing garbage / a partial frame
    wire = b"".join(frames)
    cuts = sorted(draw(st.lists(st.integers(0, len(wire)), max_size=6)))
    chunks = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)])]
    longest = max((len(f) for f in frames), default=1)
    cap = draw(st.sampled_from([64 * 2**20] * 6 + [0, 1]))
    cap = cap or draw(st.integers(1, max(longest, 1)))
    cap = cap if cap > 1 else draw(st.integers(1, 64))
    max_pixels = draw(st.sampled_from([1, 64, 400, 4096, 40_000_000, 40_000_000]))
    max_points = draw(st.sampled_from([1, 3, 64, 64, 64]))
    return [c for c in chunks if c] or [b""], cap, max_pixels, max_points


# --- the driver -------------------------------------------------------------------------


@dataclass
class FuzzResult:
    """The outcome of :func:`fuzz`: examples run, the stats, and the failure (None if none)."""

    examples: int
    stats: Stats
    failure: str | None
    seconds: float


def fuzz(seconds: float, batch: int = 500, verbose: bool = True) -> FuzzResult:
    """Run the target for about ``seconds``, in hypothesis runs of ``batch`` examples
    (each run a fresh random seed), stopping at the first failure, which hypothesis
    shrinks and prints. Returns the examples run and the failure's text."""
    stats = Stats()
    logging.getLogger("sam2_service").addHandler(logging.NullHandler())  # no lastResort spam

    def one(stream: tuple[list[bytes], int, int, int]) -> None:
        """The property: one connection's bytes through the whole pipeline."""
        t0 = time.perf_counter()
        stats.examples += 1
        run_stream(*stream, stats)
        stats.slowest_s = max(stats.slowest_s, time.perf_counter() - t0)

    # derandomize=False: hypothesis loads its "ci" profile (derandomize=True) wherever a CI
    # variable is set, which would replay the same `batch` examples every run
    cfg = settings(max_examples=batch, deadline=None, database=None, print_blob=True,
                   derandomize=False,
                   suppress_health_check=list(HealthCheck), phases=(Phase.generate, Phase.shrink),
                   verbosity=Verbosity.normal if verbose else Verbosity.quiet)
    test = cfg(given(streams())(one))
    start = time.monotonic()
    failure = None
    runs = 0
    while time.monotonic() - start < seconds:
        runs += 1
        try:
            with warnings.catch_warnings():  # headers over 89 MP warn before our cap refuses them
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                test()
        except Exception:  # the shrunk failure, re-raised by hypothesis
            failure = traceback.format_exc()
            break
        if verbose and runs % 10 == 0:
            print(f"[fuzz] {time.monotonic() - start:7.1f} s  {stats.examples} examples",
                  flush=True)
    return FuzzResult(stats.examples, stats, failure, time.monotonic() - start)


def main() -> int:
    """Entry point: ``FUZZ_SECONDS`` (default 600) of fuzzing; exit 1 on a failure."""
    seconds = float(os.environ.get("FUZZ_SECONDS", "600"))
    print(f"[fuzz] fuzzing the request pipeline for {seconds:g} s", flush=True)
    result = fuzz(seconds)
    s = result.stats
    print(f"[fuzz] examples run: {result.examples} in {result.seconds:.1f} s; frames {s.frames}, "
          f"frame_too_large {s.too_large}, images decoded {s.images_decoded}, prompts validated "
          f"{s.prompts_validated}, slowest example {s.slowest_s * 1000:.1f} ms")
    print(f"[fuzz] replies by code: {dict(sorted(s.codes.items()))}")
    if result.failure:
        print("[fuzz] FAILURE (hypothesis's shrunk example is printed above):\n" + result.failure)
        return 1
    print("[fuzz] failures: 0")
    return 0


if __name__ == "__main__":
    sys.exit(main())
