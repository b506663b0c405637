"""The dispatcher (sam2_service/daemon/serving/dispatch.py) with the fake engine, no socket: its
routing table covers every op of the schema, each op reaches its handler, and every
failure becomes an error response carrying the request's requestId."""

from __future__ import annotations

import asyncio
import base64
import time

import numpy as np
import orjson
import pytest

from sam2_service.daemon.config import ServiceConfig
from sam2_service.daemon.inference.engine import Engine, Sam2Engine
from sam2_service.daemon.inference.worker import InferenceWorker
from sam2_service.daemon.serving import dispatch as dispatch_module
from sam2_service.daemon.serving.dispatch import Dispatcher
from sam2_service.wire.codecs import decode_mask, encode_png
from sam2_service.wire.errors import ERROR_CODES
from sam2_service.wire.schema import OPS, REQUEST_TYPES
from tests.fake_engine import FakeEngine, FakeOOM


def png(seed: int = 0, w: int = 8, h: int = 6) -> tuple[np.ndarray, str]:
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return img, base64.b64encode(encode_png(img)).decode()


def answer(objs: list, engine: FakeEngine | None = None, **settings) -> list[dict]:
    """Each of ``objs`` (dicts are JSON-encoded, bytes sent as they are) through one
    dispatcher, in order; returns the replies."""
    engine = engine or FakeEngine()

    async def main():
        cfg = ServiceConfig(warmup=False, **settings)
        worker = InferenceWorker(engine, cfg.max_image_pixels, cache_bytes=10**6)
        d = Dispatcher(cfg, worker)
        try:
            return [await d.respond(o if isinstance(o, bytes) else orjson.dumps(o),
                                    time.monotonic()) for o in objs]
        finally:
            worker.close()

    return asyncio.run(main())


def test_the_table_routes_exactly_the_schema_ops():
    d = Dispatcher(ServiceConfig(), InferenceWorker(FakeEngine(), 100))
    try:
        assert set(REQUEST_TYPES) == set(OPS)
        assert set(d.handlers) == set(REQUEST_TYPES.values())
    finally:
        d.pool.close()


def test_engines_satisfy_the_engine_protocol():
    assert isinstance(FakeEngine(), Engine)
    for name in ("embed", "predict_all", "is_out_of_memory", "free_memory", "warmup", "info"):
        assert callable(getattr(Sam2Engine, name))
    # the attributes a Sam2Engine sets in __init__ (it cannot be built without a model here)
    engine = Sam2Engine.__new__(Sam2Engine)
    engine.model_id, engine.weights, engine.device = ("m",), "dummy", "cpu"
    engine.precision, engine.load_time_ms = "float32", 1.0
    assert isinstance(engine, Engine)
    assert not isinstance(object(), Engine)


def test_each_op_reaches_its_handler():
    img, text = png(1)
    seg = {"requestId": "s", "width": 8, "height": 6, "imageBase64": text,
           "bbox": {"x1": 0, "y1": 0, "x2": 8, "y2": 6}}
    ping, info, segment, embed, release, again = answer([
        {"op": "ping", "requestId": "p"},
        {"op": "info", "requestId": "i"},
        seg,
        {"op": "embed", "requestId": "e", "imageBase64": text},
        {"op": "release", "requestId": "r", "imageId": "0" * 64},
        {"op": "segment", **seg, "requestId": "s2"},
    ])
    assert ping == {"requestId": "p", "ok": True}
    assert info["requestId"] == "i" and info["model"] == "fake" and info["limits"]["maxPoints"] == 64
    cfg = ServiceConfig()
    assert info["limits"]["maxConnections"] == cfg.max_connections
    assert info["limits"]["maxBufferedBytes"] == cfg.max_buffered_bytes
    assert info["limits"]["writeTimeout"] == cfg.write_timeout
    assert segment["requestId"] == "s" and segment["cached"] is False
    mask = decode_mask(segment["maskBase64"], 8, 6)
    assert np.array_equal(mask, np.where(img[..., 0] > 127, 255, 0))
    assert {"decode", "encode", "predict", "mask", "queue", "total"} <= segment["timingsMs"].keys()
    assert embed["requestId"] == "e" and embed["imageId"] == segment["imageId"] and embed["cached"]
    assert release == {"requestId": "r", "ok": True, "imageId": "0" * 64, "released": False}
    assert again["requestId"] == "s2" and again["cached"]


def test_large_masks_are_encoded_off_the_event_loop(monkeypatch):
    """A mask over MASK_THREAD_PIXELS is base64-encoded on another thread."""
    import threading

    threads = []
    real = dispatch_module.encode_mask

    def spy(mask):
        threads.append(threading.current_thread() is threading.main_thread())
        return real(mask)

    monkeypatch.setattr(dispatch_module, "encode_mask", spy)
    monkeypatch.setattr(dispatch_module, "MASK_THREAD_PIXELS", 40)
    _, small = png(2, 6, 6)
    _, big = png(3, 8, 6)
    box = {"x1": 0, "y1": 0, "x2": 6, "y2": 6}
    replies = answer([{"width": 6, "height": 6, "imageBase64": small, "bbox": box},
                      {"width": 8, "height": 6, "imageBase64": big, "bbox": box}])
    assert all("error" not in r for r in replies)
    assert threads == [True, False]


@pytest.mark.parametrize("payload, code", [
    (b"not json", "invalid_request"),
    (b"", "invalid_request"),
    ({"op": "explode", "requestId": "x"}, "unknown_op"),
    ({"requestId": "x", "width": 8, "height": 6}, "invalid_request"),
    ({"op": "release", "requestId": "x", "imageId": "zz"}, "invalid_request"),
    ({"requestId": "x", "width": 8, "height": 6, "imageBase64": "!!", "bbox":
      {"x1": 0, "y1": 0, "x2": 1, "y2": 1}}, "image_decode"),
    ({"requestId": "x", "width": 8, "height": 6, "imageId": "a" * 64, "bbox":
      {"x1": 0, "y1": 0, "x2": 1, "y2": 1}}, "unknown_image"),
])
def test_service_errors_become_error_responses_with_the_request_id(payload, code):
    (reply,) = answer([payload])
    assert reply["code"] == code and code in ERROR_CODES and reply["error"]
    if isinstance(payload, dict):
        assert reply["requestId"] == "x"
    else:
        assert reply["requestId"].startswith("srv-")


def test_prompt_errors_name_the_field_and_keep_the_request_id():
    _, text = png(4)
    (reply,) = answer([{"requestId": "q", "width": 9, "height": 6, "imageBase64": text,
                        "bbox": {"x1": 0, "y1": 0, "x2": 1, "y2": 1}}])
    assert reply["requestId"] == "q" and reply["code"] == "invalid_request"
    assert "width" in reply["error"]


def test_engine_failures_become_internal_or_oom_and_the_dispatcher_keeps_serving():
    engine = FakeEngine()
    _, text = png(5)
    seg = {"width": 8, "height": 6, "imageBase64": text,
           "bbox": {"x1": 0, "y1": 0, "x2": 8, "y2": 6}}

    engine.fail_with = KeyError("boom")
    (internal,) = answer([{**seg, "requestId": "k"}], engine)
    assert internal["requestId"] == "k" and internal["code"] == "internal"
    assert "KeyError" in internal["error"]

    engine.fail_with = FakeOOM("CUDA out of memory")
    oom, ping = answer([{**seg, "requestId": "o"}, {"op": "ping", "requestId": "p"}], engine)
    assert oom["requestId"] == "o" and oom["code"] == "out_of_memory" and engine.freed == 1
    assert ping == {"requestId": "p", "ok": True}


def test_a_bug_in_a_handler_is_internal_with_the_request_id(monkeypatch):
    async def broken(self, request, arrived):
        raise ZeroDivisionError("bug")

    monkeypatch.setattr(Dispatcher, "_ping", broken)
    (reply,) = answer([{"op": "ping", "requestId": "z"}])
    assert reply["requestId"] == "z" and reply["code"] == "internal"
    assert "ZeroDivisionError: bug" in reply["error"]


def test_large_frames_with_too_many_commas_are_refused_unparsed(monkeypatch):
    parsed = []
    real = dispatch_module.decode_message
    monkeypatch.setattr(dispatch_module, "decode_message", lambda p: parsed.append(p) or real(p))
    _, text = png(6)
    points = [{"x": 1, "y": 1, "label": 1}] * 65  # 3 commas each: within 4 * 64 + 4 * 64 + 64
    within = {"requestId": "w", "width": 8, "height": 6, "imageBase64": text, "points": points,
              "bbox": {"x1": 0, "y1": 0, "x2": 8, "y2": 6}, "pad": "-" * 2000}
    # 600 commas: over 4 * 64 (--max-points) + 4 * 64 (--max-boxes) + 64
    over = {**within, "requestId": "o", "points": [{"x": 1, "y": 1, "label": 1}] * 200}
    small = {"requestId": "s", "width": 8, "height": 6, "imageBase64": text, "points": [1] * 400}
    assert len(orjson.dumps(small)) < 2048 and orjson.dumps(small).count(b",") > 320
    a, b, c = answer([within, over, small], json_thread_bytes=2048)
    assert a["requestId"] == "w" and a["code"] == "invalid_request" and "65" in a["error"]
    assert b["requestId"] == "o" and "commas" in b["error"] and "not parsed" in b["error"]
    assert c["requestId"] == "s" and "commas" not in c["error"]  # small frames: parsed
    assert len(parsed) == 2  # "within" and "small" only


def test_peek_request_id():
    peek = dispatch_module._peek_request_id
    assert peek(b'{"points": [], "requestId" : "a\\"b"}') == 'a"b'
    assert peek(b'{"requestId": 7}') is None
    assert peek(b'{"requestId": ""}') is None
    assert peek(b"no id") is None


def test_a_request_without_an_id_goes_by_one_made_up_id_in_its_reply_and_logs(caplog):
    """The made-up ``requestId`` is made once: the reply and every log line of the request
    name the same one, on success and on failure."""
    _, text = png(7)
    seg = {"width": 8, "height": 6, "imageBase64": text,
           "bbox": {"x1": 0, "y1": 0, "x2": 8, "y2": 6}}
    caplog.set_level("INFO", logger="sam2_service")
    ok, failed = answer([seg, {**seg, "width": 9}])
    assert "error" not in ok and failed["code"] == "invalid_request"
    ids = {ok["requestId"], failed["requestId"]}
    assert len(ids) == 2 and all(rid.startswith("srv-") for rid in ids)
    by_id: dict[str, list[str]] = {}
    for record in caplog.records:
        rid = getattr(record, "fields", {}).get("requestId")
        if rid is not None:
            by_id.setdefault(rid, []).append(record.getMessage())
    assert set(by_id) == ids
    assert by_id[ok["requestId"]] == ["Received request", "Inference complete"]
    assert by_id[failed["requestId"]] == ["Received request", "Request failed"]


def test_a_plain_reply_copies_no_logits_and_an_extended_one_only_what_it_keeps(monkeypatch):
    """One segment path: a plain request leaves SAM2's logits where they are; an extended
    one copies only the logits it keeps for ``maskInput`` (one per listed mask, plus the
    top-level one when it is not among them)."""
    from sam2_service.daemon.inference.engine import MaskSet

    copied = []
    real = MaskSet.host_logits
    monkeypatch.setattr(MaskSet, "host_logits",
                        lambda self, index=None: copied.append(index) or real(self, index))
    _, text = png(8)
    box = {"x1": 0, "y1": 0, "x2": 8, "y2": 6}
    seg = {"width": 8, "height": 6, "imageBase64": text}
    plain, rle, multi, boxes = answer([
        {**seg, "bbox": box},
        {**seg, "bbox": box, "maskEncoding": "rle"},
        {**seg, "bbox": box, "multimask": True},
        {**seg, "boxes": [box, {"x1": 0, "y1": 0, "x2": 4, "y2": 3}]},
    ])
    assert "maskId" not in plain and all("maskId" in r for r in (rle, multi, boxes))
    # rle: its one mask; multimask: the fake's scores 0.5, 0.9, 0.7 best first; boxes: each,
    # then their union (the element-wise maximum)
    assert copied == [0, 1, 2, 0, 0, 1, None]
