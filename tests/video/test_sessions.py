"""Video sessions on the daemon: limits, errors, cancel, hang-up, and interactive requests
answered between propagated frames."""

from __future__ import annotations

import json
import socket
import time

import numpy as np
import pytest

from sam2_service.client import Client, RequestFailed
from sam2_service.client.video import open_messages, prepare_video_source, prompt_message, propagate_message
from sam2_service.wire.frames import FrameDecoder, decode_message, encode_message
from tests.integration.conftest import connect_raw
from tests.video.conftest import CLIP_FRAMES, MAX_FRAMES, MAX_SESSIONS


def tiny_frames(n: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (n, 48, 64, 3), dtype=np.uint8)


def log_events(daemon) -> list[dict]:
    return [json.loads(line) for line in daemon.log_path.read_text().splitlines() if line.strip()]


def test_limits_and_errors_are_refused_with_their_codes(video_daemon) -> None:
    with Client(video_daemon.socket_path, timeout=120) as client:
        with pytest.raises(RequestFailed) as err:
            client.open_video(tiny_frames(MAX_FRAMES + 1))
        assert err.value.code == "video_too_large" and "--video-max-frames" in err.value.message
        sessions = []
        with pytest.raises(RequestFailed) as err:
            for _ in range(MAX_SESSIONS + 1):
                sessions.append(client.open_video(tiny_frames(2)))
        assert err.value.code == "too_many_sessions" and len(sessions) <= MAX_SESSIONS
        s = sessions.pop()
        assert (s.frame_count, s.width, s.height) == (2, 64, 48)
        for bad, field in (({"frame": 2, "object_id": 1, "points": [(1, 1, 1)]}, "frame"),
                           ({"frame": 0, "object_id": 1, "points": [(65, 1, 1)]}, "points[0]")):
            with pytest.raises(RequestFailed) as err:
                s.add_prompt(**bad)
            assert err.value.code == "invalid_request" and field in err.value.message
        with pytest.raises(RequestFailed) as err:
            list(s.propagate("forward"))
        assert err.value.code == "invalid_request" and "no prompts" in err.value.message
        with pytest.raises(ValueError, match="direction"):
            list(s.propagate("sideways"))
        s.close()
        with pytest.raises(RequestFailed) as err:
            s.reset()
        assert err.value.code == "unknown_video_session" and "is gone" in err.value.message
        again = client.open_video(tiny_frames(2))  # a closed session frees its place
        again.close()
        for other in sessions:
            other.close()
        assert client.ping()["ok"] is True


def test_cancel_midway_keeps_the_session_and_segment_runs_between_frames(video_daemon,
                                                                          clip_dir) -> None:
    image = np.zeros((64, 64, 3), np.uint8)
    with Client(video_daemon.socket_path, timeout=300) as client, \
            client.open_video(clip_dir) as session:
        session.add_prompt(0, 1, points=[(300, 150, 1)])
        stream = session.propagate("forward")
        frames = [next(stream)[0]]
        result = client.segment(image, bbox=(8, 8, 40, 40))  # answered while propagating
        assert result.mask.shape == (64, 64)
        frames.append(next(stream)[0])
        stream.close()  # cancels
        assert frames == [0, 1]
        session.reset()  # not video_busy: the propagation has ended
    events = log_events(video_daemon)
    sid = session.session_id
    progress = [i for i, e in enumerate(events) if e.get("msg") == "Video progress"
                and e.get("sessionId") == sid]
    segment = [i for i, e in enumerate(events) if e.get("msg") == "Inference complete"
               and e.get("width") == 64]
    done = [e for e in events if e.get("msg") == "Video propagation done"
            and e.get("sessionId") == sid]
    assert segment and progress[0] < segment[-1] < progress[-1]
    assert done and done[-1]["cancelled"] is True and done[-1]["frames"] < CLIP_FRAMES


def _exchange(sock: socket.socket, decoder: FrameDecoder, message: dict | None) -> dict:
    if message is not None:
        sock.sendall(encode_message(message))
    while (payload := decoder.next_frame()) is None:
        data = sock.recv(1 << 16)
        assert data, "daemon closed the connection"
        decoder.feed(data)
    return decode_message(payload)


def test_hang_up_midway_frees_the_session(video_daemon, clip_dir) -> None:
    sock, decoder = connect_raw(video_daemon.socket_path), FrameDecoder(1 << 26)
    first, _ = open_messages(prepare_video_source(clip_dir), None)
    sid = _exchange(sock, decoder, first)["sessionId"]
    assert "error" not in _exchange(sock, decoder, prompt_message(sid, 0, 1, [(300, 150, 1)]))
    frame = _exchange(sock, decoder, propagate_message(sid, "forward", None, None))
    assert frame["done"] is False and frame["frame"] == 0
    sock.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(
            e.get("msg") == "Video session closed" and e.get("sessionId") == sid
            for e in log_events(video_daemon)):
        time.sleep(0.2)
    with Client(video_daemon.socket_path, timeout=120) as client:
        reply = client.request({"op": "videoReset", "sessionId": sid})
        assert reply["code"] == "unknown_video_session"
        assert client.info()["limits"]["videoMaxSessions"] == MAX_SESSIONS
