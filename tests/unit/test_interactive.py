"""sam2_service.client.interactive: latest-wins tickets, image handles that embed again after
``unknown_image``, the protocol's point rule (checked against the daemon's own), content keys,
PNG mask replies and error text. No daemon: the calls are fakes that record what they get."""

from __future__ import annotations

import asyncio
import math
import threading

import numpy as np
import pytest

from sam2_service.client import ClientError, ImageRef, RequestFailed, prepare_image
from sam2_service.client.interactive import (
    ImageHandle,
    ImageHandles,
    PngMask,
    Tickets,
    array_key,
    error_text,
    image_lost,
    pixel_inside,
    png_segment_request,
    point_inside,
    read_png_reply,
)

W, H = 40, 30  # non-square: (x, y) / (row, col) mix-ups show

# --- tickets ------------------------------------------------------------------------------


def test_only_the_latest_ticket_is_latest() -> None:
    t = Tickets()
    assert t.latest == 0
    first = t.take()
    assert t.is_latest(first)
    second = t.take()
    assert second > first and t.latest == second
    assert not t.is_latest(first) and t.is_latest(second)
    t.take()  # e.g. the prompts were cleared: every outstanding reply is stale
    assert not t.is_latest(second)


def test_tickets_taken_from_threads_are_all_different() -> None:
    t, taken = Tickets(), []
    lock = threading.Lock()

    def take_many() -> None:
        mine = [t.take() for _ in range(2000)]
        with lock:
            taken.extend(mine)

    threads = [threading.Thread(target=take_many) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(taken) == list(range(1, 8001)) and t.latest == 8000


# --- the point rule -----------------------------------------------------------------------


@pytest.mark.parametrize("x, y, inside", [
    (0, 0, True), (W, H, True), (W, 0, True), (0, H, True), (W / 2, H / 2, True),
    (W + 1e-9, 0, False), (0, H + 1e-9, False), (-1e-9, 0, False), (0, -0.5, False),
    (H + 1, W - 1, False),  # (row, col) order by mistake: y = W - 1 > H
    (math.nan, 1, False), (1, math.inf, False),
])
def test_point_inside_is_the_protocols_rule(x: float, y: float, inside: bool) -> None:
    assert point_inside(x, y, W, H) is inside


@pytest.mark.parametrize("x, y", [(0, 0), (W, H), (W + 0.5, 1), (1, -0.25), (W - 0.5, H - 0.5),
                                  (H + 1, W - 1)])
def test_point_inside_agrees_with_the_daemons_check(x: float, y: float) -> None:
    """The daemon's prompt check (its own code, not a copy) accepts exactly these points."""
    from sam2_service.daemon.inference.prompts import validate
    from sam2_service.wire.errors import InvalidRequest
    from sam2_service.wire.schema import Point, SegmentRequest

    request = SegmentRequest("r1", W, H, "AAAA", None, (Point(x, y, 1),))
    try:
        validate(request, (H, W))
        accepted = True
    except InvalidRequest:
        accepted = False
    assert point_inside(x, y, W, H) is accepted


@pytest.mark.parametrize("x, y, inside", [
    (0, 0, True), (W - 1, H - 1, True), (W - 0.5, 0, True),
    (W, 0, False), (0, H, False), (-1, 0, False), (math.nan, 0, False),
])
def test_pixel_inside_excludes_the_right_and_bottom_edges(x: float, y: float, inside: bool) -> None:
    assert pixel_inside(x, y, W, H) is inside
    if inside:
        assert point_inside(x, y, W, H)  # every pixel index is a point the daemon takes


# --- content keys -------------------------------------------------------------------------


def test_array_key_follows_content_shape_and_dtype() -> None:
    a = np.arange(H * W, dtype=np.uint8).reshape(H, W)
    assert array_key(a) == array_key(a.copy())
    edited = a.copy()
    edited[3, 4] ^= 1
    assert array_key(edited) != array_key(a)
    assert array_key(a.reshape(W, H)) != array_key(a)  # same bytes, another shape
    assert array_key(a.astype(np.int8)) != array_key(a)  # same bytes, another dtype
    view = np.arange(2 * H * W, dtype=np.uint8).reshape(H, 2 * W)[:, ::2]
    assert array_key(view) == array_key(np.ascontiguousarray(view))


# --- image handles ------------------------------------------------------------------------


def test_handles_are_found_by_content_and_the_oldest_dropped() -> None:
    handles = ImageHandles(entries=2)
    a = np.zeros((H, W), np.uint8)
    first = handles.for_array(a)
    assert handles.for_array(a.copy()) is first  # same pixels, another array: same handle
    edited = a.copy()
    edited[0, 0] = 1
    assert handles.for_array(edited) is not first and len(handles) == 2
    handles.for_array(np.ones((H, W), np.uint8))  # a third: the least recently used goes
    assert len(handles) == 2 and handles.for_array(a) is not first
    handles.clear()
    assert len(handles) == 0



class Daemon:
    """Fake calls: ``embed`` gives a ref and counts; ``call`` fails with the queued errors."""

    def __init__(self, *failures: Exception) -> None:
        self.failures = list(failures)
        self.embedded: list[object] = []
        self.called: list[ImageRef] = []

    def embed(self, source: object) -> ImageRef:
        self.embedded.append(source)
        return ImageRef("ab" * 32, W, H)

    def call(self, ref: ImageRef) -> str:
        self.called.append(ref)
        if self.failures:
            raise self.failures.pop(0)
        return "mask"


LOST = RequestFailed("unknown_image", "imageId ab... is not cached", "r1")


def test_a_handle_embeds_once_and_then_sends_its_ref() -> None:
    d, data = Daemon(), b"png bytes"
    handle = ImageHandle(data)
    assert handle.image_id is None
    assert handle.run(d.call, d.embed) == "mask"
    assert handle.run(d.call, d.embed) == "mask"
    assert d.embedded == [data] and handle.image_id == "ab" * 32
    assert d.called == [ImageRef("ab" * 32, W, H)] * 2


def test_a_handle_with_a_ref_does_not_embed_until_the_image_is_lost() -> None:
    d = Daemon(LOST)
    handle = ImageHandle(b"png", ImageRef("cd" * 32, W, H))
    assert handle.run(d.call, d.embed) == "mask"
    assert d.embedded == [b"png"]  # embedded again once, after unknown_image
    assert [r.image_id for r in d.called] == ["cd" * 32, "ab" * 32]


def test_a_second_unknown_image_is_raised_and_other_failures_are_not_retried() -> None:
    d = Daemon(LOST, LOST)
    with pytest.raises(RequestFailed, match="unknown_image"):
        ImageHandle(b"png", ImageRef("cd" * 32, W, H)).run(d.call, d.embed)
    assert len(d.embedded) == 1 and len(d.called) == 2
    busy = Daemon(RequestFailed("busy", "queue full", "r2"))
    with pytest.raises(RequestFailed, match="busy"):
        ImageHandle(b"png", ImageRef("cd" * 32, W, H)).run(busy.call, busy.embed)
    assert busy.embedded == [] and len(busy.called) == 1
    gone = Daemon(ClientError("daemon closed the connection"))
    with pytest.raises(ClientError):
        ImageHandle(b"png", ImageRef("cd" * 32, W, H)).run(gone.call, gone.embed)
    assert gone.embedded == []


def test_arun_embeds_again_after_unknown_image() -> None:
    d = Daemon(LOST)

    async def call(ref: ImageRef) -> str:
        return d.call(ref)

    async def embed(source: object) -> ImageRef:
        return d.embed(source)

    handle = ImageHandle(b"png")
    assert asyncio.run(handle.arun(call, embed)) == "mask"
    assert d.embedded == [b"png", b"png"] and len(d.called) == 2
    assert image_lost(LOST) and not image_lost(RequestFailed("busy", "", "")) \
        and not image_lost(ValueError("unknown_image"))


# --- PNG replies --------------------------------------------------------------------------


def test_png_segment_request_goes_by_image_id_and_asks_for_png() -> None:
    ref = prepare_image(np.zeros((H, W), np.uint8)).ref
    msg = png_segment_request(ref, [(3, 4, 0), (5.5, 6)], request_id="r9")
    assert msg["imageId"] == ref.image_id and "imageBase64" not in msg
    assert (msg["width"], msg["height"], msg["maskEncoding"], msg["requestId"]) == (W, H, "png", "r9")
    assert msg["points"] == [{"x": 3.0, "y": 4.0, "label": 0}, {"x": 5.5, "y": 6.0, "label": 1}]


def test_read_png_reply_keeps_the_png_as_sent() -> None:
    reply = {"requestId": "r1", "maskWidth": W, "maskHeight": H, "maskBase64": "", "score": 0.5,
             "inferenceTimeMs": 12.0, "imageId": "ab" * 32, "cached": True,
             "maskEncoding": "png", "maskPng": "iVBORw0KGgo=", "maskId": "m1"}
    assert read_png_reply(reply) == PngMask("iVBORw0KGgo=", W, H, 0.5, 12.0, "ab" * 32, "m1")
    with pytest.raises(RequestFailed, match="busy"):
        read_png_reply({"requestId": "r1", "error": "queue full", "code": "busy"})
    raw = dict(reply, maskEncoding="raw", maskPng=None)
    with pytest.raises(ClientError, match="no maskPng"):
        read_png_reply(raw)
    with pytest.raises(ClientError, match="malformed"):
        read_png_reply({k: v for k, v in reply.items() if k != "maskWidth"})


# --- error text ---------------------------------------------------------------------------


@pytest.mark.parametrize("exc, words", [
    (RequestFailed("busy", "queue full (8 waiting)", "r"), "the daemon is busy"),
    (RequestFailed("invalid_request", "points[0] (50, 1) lies outside", "r"),
     "the daemon refused the request (invalid_request): points[0] (50, 1) lies outside"),
    (RequestFailed("untrusted_server", "the server at /s runs as uid 7", ""),
     "the server at /s runs as uid 7"),
    (RequestFailed("shutting_down", "stopping", "r"), "shutting down"),
    (ClientError("cannot connect to /x.sock: No such file"),
     "cannot reach the daemon: cannot connect to /x.sock"),
    (FileNotFoundError(2, "No such file or directory"), "cannot reach the daemon"),
    (ValueError("bad array"), "unexpected error: ValueError: bad array"),
])
def test_error_text_is_short_and_says_what_happened(exc: Exception, words: str) -> None:
    text = error_text(exc)
    assert words in text and "Traceback" not in text and "\n" not in text
