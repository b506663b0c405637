"""Total bounds over all connections (issue 15.5), on a real socket with the fake engine:
request bytes held at once (--max-buffered-mb), clients that do not read their replies
(--write-timeout), and frames with more JSON values than a request can use (refused before
parsing, over --json-thread-kb)."""

from __future__ import annotations

import base64
import logging
import struct
import time

import numpy as np
import orjson

from sam2_service.wire.codecs import encode_png
from tests.fake_engine import FakeEngine

from .test_server_faults import ServerThread, frame, read_frame, wait_until

MiB = 2**20


def test_frames_beyond_the_buffered_budget_get_busy_and_memory_is_given_back():
    srv = ServerThread(FakeEngine(), max_frame_bytes=MiB, max_buffered_bytes=2 * MiB)
    budget = srv.server._budget
    try:
        stalled = []
        for _ in range(2):  # each announces 1 MiB and sends 10 bytes of it
            s = srv.connect()
            s.sendall(struct.pack("<I", MiB) + b"x" * 10)
            stalled.append(s)
        wait_until(lambda: budget.used == 2 * MiB)
        third = srv.connect()
        third.sendall(frame({"op": "ping", "requestId": "third"}))
        reply = read_frame(third)
        assert reply["code"] == "busy" and "--max-buffered-mb" in reply["error"]
        assert read_frame(third) is None  # then closed
        third.close()
        stalled.pop().close()
        wait_until(lambda: budget.used == MiB)
        fourth = srv.connect()
        fourth.sendall(frame({"op": "ping", "requestId": "fourth"}))
        assert read_frame(fourth) == {"requestId": "fourth", "ok": True}
        fourth.close()
        stalled.pop().close()
        wait_until(lambda: budget.used == 0)  # nothing leaks
    finally:
        srv.stop()


def test_pipelined_frames_count_and_whole_requests_still_pass():
    srv = ServerThread(FakeEngine(), max_frame_bytes=MiB, max_buffered_bytes=MiB)
    try:
        s = srv.connect()
        pings = b"".join(frame({"op": "ping", "requestId": f"p{i}"}) for i in range(50))
        s.sendall(pings)
        assert [read_frame(s)["requestId"] for _ in range(50)] == [f"p{i}" for i in range(50)]
        s.close()
        wait_until(lambda: srv.server._budget.used == 0)
    finally:
        srv.stop()


def big_segment(rid: str, side: int = 1500) -> dict:
    """A segment request whose reply carries a side x side mask (3 MB of base64 at 1500)."""
    img = np.full((side, side, 3), 200, dtype=np.uint8)
    return {"requestId": rid, "width": side, "height": side,
            "imageBase64": base64.b64encode(encode_png(img)).decode(),
            "bbox": {"x1": 0, "y1": 0, "x2": side, "y2": side}}


def test_a_client_not_reading_its_reply_is_closed_and_does_not_hold_up_shutdown(caplog):
    caplog.set_level(logging.WARNING, "sam2_service")
    srv = ServerThread(FakeEngine(), write_timeout=0.5, shutdown_timeout=30)
    sleepers = []
    try:
        for i in range(3):
            s = srv.connect()
            s.sendall(frame(big_segment(f"sleeper{i}")))
            sleepers.append(s)
        wait_until(lambda: sum("write timeout" in r.getMessage() for r in caplog.records) == 3,
                   timeout=10)
        got = b""
        try:  # what the client can still read is the start of the reply, then the end
            while chunk := sleepers[0].recv(1 << 20):
                got += chunk
        except ConnectionResetError:
            pass
        assert len(got) < 4 + 3_000_000
        reader = srv.connect()  # a client that reads gets the whole reply
        reader.sendall(frame(big_segment("reader")))
        reply = read_frame(reader)
        assert reply["requestId"] == "reader" and len(reply["maskBase64"]) == 3_000_000
        reader.close()
        # shutdown with a fresh non-reader: bounded by the write timeout, not the 30 s
        late = srv.connect()
        late.sendall(frame(big_segment("late")))
        wait_until(lambda: srv.server._conns and any(c.busy for c in srv.server._conns.values()))
        t0 = time.monotonic()
        srv.stop()
        assert time.monotonic() - t0 < 5
        late.close()
    finally:
        for s in sleepers:
            s.close()
        if srv.thread.is_alive():
            srv.stop()


def test_a_large_frame_with_too_many_values_is_refused_before_parsing():
    srv = ServerThread(FakeEngine(), json_thread_bytes=1024)
    try:
        s = srv.connect()
        points = [{"x": 1, "y": 1, "label": 1}] * 10_000
        body = orjson.dumps({"requestId": "many", "width": 8, "height": 6,
                             "imageBase64": "AAAA", "points": points})
        s.sendall(struct.pack("<I", len(body)) + body)
        reply = read_frame(s)
        assert reply["requestId"] == "many" and reply["code"] == "invalid_request"
        assert "commas" in reply["error"] and "--json-thread-kb" in reply["error"]
        # a large frame within the count is parsed (on a thread) and answered
        img = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
        ok = {"requestId": "big-ok", "width": 80, "height": 60,
              "imageBase64": base64.b64encode(encode_png(img)).decode(),
              "points": [{"x": 5, "y": 5, "label": 1}] * 64,
              "bbox": {"x1": 0, "y1": 0, "x2": 80, "y2": 60}}
        s.sendall(frame(ok))
        reply = read_frame(s)
        assert reply["requestId"] == "big-ok" and "error" not in reply, reply
        s.close()
    finally:
        srv.stop()
