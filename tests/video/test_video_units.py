"""Video pieces without a daemon: the wire's checks, the frame store against SAM2's loader,
the session table's limits and idle time-out, the client's sources, and the pruning rule."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam2_service.client import video as cv
from sam2_service.daemon.inference import sam2_compat
from sam2_service.daemon.video import sessions as vs
from sam2_service.daemon.video.frames import Frame, FrameStore, image_frames
from sam2_service.wire.errors import InvalidRequest, TooManySessions, UnknownVideoSession, VideoTooLarge
from sam2_service.wire.schema import parse_request


def parse(obj: dict):
    return parse_request(obj, max_points=4, request_id="r")


@pytest.mark.parametrize("obj, field", [
    ({"op": "videoOpen"}, "frames"),
    ({"op": "videoOpen", "frames": [], }, "frames"),
    ({"op": "videoOpen", "frames": ["x"], "video": "y"}, "frames"),
    ({"op": "videoPrompt", "sessionId": "v1", "frame": 0, "objectId": 1}, "points"),
    ({"op": "videoPrompt", "sessionId": "v1", "frame": -1, "objectId": 1,
      "points": [{"x": 1, "y": 1}]}, "frame"),
    ({"op": "videoPrompt", "sessionId": "v1", "frame": 0, "objectId": 1,
      "bbox": {"x1": 5, "y1": 1, "x2": 2, "y2": 3}}, "bbox"),
    ({"op": "videoPrompt", "sessionId": "v1", "frame": 0, "objectId": 1,
      "points": [{"x": 1, "y": 1}], "mask": {"maskPng": ""}}, "mask"),
    ({"op": "videoPrompt", "sessionId": "v1", "frame": 0, "objectId": 1,
      "points": [{"x": 1, "y": 1}] * 5}, "points"),
    ({"op": "videoPropagate", "sessionId": "v1", "direction": "up"}, "direction"),
    ({"op": "videoPropagate", "sessionId": "v1", "start": 5, "end": 2}, "start"),
    ({"op": "videoReset"}, "sessionId"),
])
def test_bad_video_requests_name_their_field(obj: dict, field: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        parse(obj)
    assert err.value.field == field


def test_good_video_requests_parse() -> None:
    req = parse({"op": "videoPrompt", "sessionId": "v1", "frame": 3, "objectId": 7,
                 "points": [{"x": 1.5, "y": 2, "label": 0}],
                 "bbox": {"x1": 0, "y1": 0, "x2": 4, "y2": 4}, "maskEncoding": "rle"})
    assert (req.frame, req.object_id, req.points, req.box, req.mask_encoding) == \
        (3, 7, ((1.5, 2.0, 0),), (0.0, 0.0, 4.0, 4.0), "rle")
    prop = parse({"op": "videoPropagate", "sessionId": "v1"})
    assert (prop.direction, prop.start, prop.end) == ("both", None, None)


def test_frame_store_equals_sam2s_jpeg_loader(clip_dir: Path) -> None:
    import torch
    from sam2.utils.misc import load_video_frames

    images, h, w = load_video_frames(str(clip_dir), 1024, offload_video_to_cpu=True,
                                     compute_device=torch.device("cpu"))
    files = [p.read_bytes() for p in sorted(clip_dir.iterdir())]
    frames, fw, fh = image_frames(files, 100, 10**9)
    store = FrameStore(frames, fw, fh, 1024, 10**8)
    assert (fw, fh, len(store)) == (w, h, len(images))
    for i in (0, len(store) - 1):
        assert torch.equal(store[i], images[i])


def test_frame_limits_and_sizes() -> None:
    def png(w: int, h: int) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", (w, h)).save(buf, format="PNG")
        return buf.getvalue()

    with pytest.raises(VideoTooLarge, match="--video-max-mb"):
        image_frames([png(8, 8)] * 3, 10, 2 * len(png(8, 8)))
    with pytest.raises(VideoTooLarge, match="--video-max-frames"):
        image_frames([png(8, 8)] * 3, 2, 10**9)
    with pytest.raises(InvalidRequest, match="frames\\[1\\] is 9x8"):
        image_frames([png(8, 8), png(9, 8)], 10, 10**9)


def test_session_table_limit_and_idle_timeout(monkeypatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(vs.time, "monotonic", lambda: now[0])
    table = vs.SessionTable(max_sessions=1, idle_timeout=10)
    owner = vs.VideoOwner()
    store = FrameStore([Frame(b"x", None)], 1, 1, 1024, 1)
    table.reserve()
    table.add(vs.VideoSession("v1", None, None, store, {}, owner))
    with pytest.raises(TooManySessions):
        table.reserve()
    now[0] += 9
    assert table.get("v1").session_id == "v1"  # used: the clock starts again
    now[0] += 11
    with pytest.raises(UnknownVideoSession, match="is gone"):
        table.get("v1")
    assert owner.sessions == set()
    table.reserve()  # its place is free


def test_client_sources(tmp_path: Path) -> None:
    stack = np.linspace(-1.0, 3.0, 2 * 4 * 5).reshape(2, 4, 5)
    src = cv.prepare_video_source(stack)
    first = np.asarray(Image.open(io.BytesIO(src.frames[0])))
    last = np.asarray(Image.open(io.BytesIO(src.frames[1])))
    assert first.dtype == np.uint8 and first.min() == 0 and last.max() == 255  # whole-array scale
    for name in ("b.png", "a.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(name.encode())
    assert cv.prepare_video_source(tmp_path).frames == (b"a.jpg", b"b.png")  # by name, as sent
    with pytest.raises(ValueError, match=r"\(T, H, W\)"):
        cv.prepare_video_source(np.zeros((4, 5)))
    chunks = list(cv._chunks([b"x" * 10] * (cv.CHUNK_FRAMES + 1)))
    assert [len(c) for c in chunks] == [cv.CHUNK_FRAMES, 1]


def test_pruning_keeps_what_sam2s_memory_reads() -> None:
    import torch

    def out() -> dict:
        return {"maskmem_features": torch.zeros(1), "maskmem_pos_enc": None,
                "pred_masks": torch.zeros(1), "obj_ptr": torch.zeros(1),
                "object_score_logits": torch.zeros(1)}

    non_cond = {f: out() for f in range(1, 60)}
    state = {"output_dict_per_obj": {0: {"cond_frame_outputs": {0: out()},
                                         "non_cond_frame_outputs": non_cond}}}
    sam2_compat.prune_video_outputs(state, 59, False, num_maskmem=7, max_obj_ptrs=16)
    full = {f for f, o in non_cond.items() if o["maskmem_features"] is not None}
    thin = {f for f, o in non_cond.items() if o["maskmem_features"] is None}
    assert full == set(range(1, 17)) | set(range(52, 60))  # near the prompt, and the last 7
    assert thin == set(range(43, 52))  # object pointers of the last 16
    assert all(non_cond[f]["obj_ptr"] is not None for f in thin)


def test_track_without_prompts_exits_2_before_reading_the_video(tmp_path, capsys):
    """No daemon and no video file exist: the missing prompts are named first."""
    from sam2_service.cli import main

    for extra in ([], ["--frame", "3"], ["--point", "5,5"]):
        code = main(["track", str(tmp_path / "missing.mp4"), "--output", str(tmp_path / "o"),
                     "--socket", str(tmp_path / "none.sock"), *extra])
        assert code == 2
        assert "give --frame N and at least one --point or --box" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
