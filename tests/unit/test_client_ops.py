"""The operations of client/ops.py, driven by hand without a socket: each is one generator of
steps that both transports carry out, so what is checked here holds for ``Client`` and
``AsyncClient`` alike."""

from __future__ import annotations

import asyncio
import socket

import numpy as np
import pytest

from sam2_service import cli
from sam2_service.client import (
    DEFAULT_TIMEOUT,
    AsyncClient,
    Client,
    ClientError,
    ImageMemo,
    ImageRef,
    RequestFailed,
    SegmentOptions,
    prepare_image,
)
from sam2_service.client.connection import exchange_failed
from sam2_service.client.ops import Operations, embed_steps, release_steps, segment_steps
from sam2_service.wire.codecs import encode_mask_as

from ..client_steps import drive

IMAGE = np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8)


def mask_reply(request: dict) -> dict:
    _, value = encode_mask_as(np.zeros((6, 8), bool), "raw")
    return {"requestId": request["requestId"], "maskWidth": 8, "maskHeight": 6,
            "maskBase64": value, "score": 0.5, "imageId": prepare_image(IMAGE).image_id,
            "cached": False, "inferenceTimeMs": 1.0}


def test_both_transports_share_each_operation():
    for name in ("ping", "info", "segment", "embed", "auto", "release"):
        assert getattr(Client, name) is getattr(Operations, name) is getattr(AsyncClient, name)


def test_a_known_image_goes_by_id_and_is_resent_when_the_daemon_forgot_it():
    memo = ImageMemo()
    memo.remember(prepare_image(IMAGE).image_id)
    unknown = {"requestId": "r", "error": "gone", "code": "unknown_image"}
    replies = iter([unknown, None])
    options = SegmentOptions(points=iter([(1, 2), (3, 4, 0)]), boxes=iter([(0, 0, 4, 4)]))
    result, sent = drive(segment_steps(memo, IMAGE, options, request_id="r"),
                         lambda m: next(replies) or mask_reply(m))
    assert "imageId" in sent[0] and "imageBase64" in sent[1]
    for msg in sent:  # the prompts, given as one-shot iterators, go with both requests
        assert msg["points"] == [{"x": 1.0, "y": 2.0, "label": 1}, {"x": 3.0, "y": 4.0, "label": 0}]
        assert msg["boxes"] == [{"x1": 0.0, "y1": 0.0, "x2": 4.0, "y2": 4.0}]
    assert result.mask.shape == (6, 8) and memo.known(result.image_id)


def test_an_image_ref_is_never_resent():
    ref = ImageRef("a" * 64, 8, 6)
    with pytest.raises(RequestFailed, match="unknown_image"):
        drive(segment_steps(ImageMemo(), ref, SegmentOptions()),
              lambda m: {"requestId": m["requestId"], "error": "gone", "code": "unknown_image"})


def test_embed_and_release_keep_the_memo():
    memo = ImageMemo()
    iid = prepare_image(IMAGE).image_id
    ref, sent = drive(embed_steps(memo, IMAGE, "e1"),
                      lambda m: {"requestId": m["requestId"], "imageId": iid, "width": 8,
                                 "height": 6, "cached": True})
    assert sent[0]["op"] == "embed" and ref == ImageRef(iid, 8, 6, True) and memo.known(iid)
    released, sent = drive(release_steps(memo, ref), lambda m: {"released": True})
    assert released is True and sent == [{"op": "release", "imageId": iid}]
    assert not memo.known(iid)


def test_an_unknown_segment_keyword_raises_at_the_call_on_both_transports():
    with pytest.raises(TypeError, match="bogus"):
        Client("/nonexistent.sock").segment(IMAGE, bogus=1)
    with pytest.raises(TypeError, match="bogus"):
        AsyncClient("/nonexistent.sock").segment(IMAGE, bogus=1)  # no coroutine to await


def test_async_operations_are_awaitable():
    async def run():
        async with AsyncClient("/nonexistent/x.sock", timeout=1) as client:
            with pytest.raises(ClientError, match="cannot connect"):
                await client.ping()

    asyncio.run(run())


def test_exchange_failures_become_client_errors():
    assert str(exchange_failed(socket.timeout(), 2.0)) == "no reply within 2.0 s"
    assert str(exchange_failed(asyncio.TimeoutError(), 2.0)) == "no reply within 2.0 s"
    assert str(exchange_failed(OSError("boom"), 2.0)) == "connection to daemon failed: boom"
    err = ClientError("daemon closed the connection before replying")
    assert exchange_failed(err, 2.0) is err


def test_the_cli_uses_the_client_default_timeout(monkeypatch):
    monkeypatch.delenv("SAM2_SERVICE_TIMEOUT", raising=False)
    assert DEFAULT_TIMEOUT == 300.0
    assert cli.parse_args(["ping"]).timeout == DEFAULT_TIMEOUT
    assert Client().timeout == AsyncClient().timeout == DEFAULT_TIMEOUT


def test_a_time_out_is_its_own_client_error():
    """A caller that retries failed requests (the gateway) tells a time-out by its type."""
    from sam2_service.client import ClientTimeout

    out = exchange_failed(socket.timeout(), 2.5)
    assert isinstance(out, ClientTimeout) and str(out) == "no reply within 2.5 s"
    assert type(exchange_failed(OSError("reset"), 2.5)) is ClientError
