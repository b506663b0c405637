"""Video sessions against SAM2's own SAM2VideoPredictor: the same masks on every frame.

One clip, two objects prompted on its middle frame (one by a point, one by a box),
propagated both ways; then a third object, prompted with a mask (an earlier result from the
next frame), added on the middle frame after that first propagation, and everything
propagated forward again. SAM2's side: the
same calls on ``SAM2VideoPredictor`` (``init_state`` on the same JPEG folder,
``add_new_points_or_box``, ``add_new_mask``, ``propagate_in_video`` forward then
``reverse=True``). Each frame's mask of each object must match with IoU >= 0.99.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sam2_service.client import Client
from tests.video.conftest import CLIP_FRAMES

MID = CLIP_FRAMES // 2
POINT = (300.0, 150.0, 1)
BOX = (100.0, 80.0, 260.0, 250.0)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    union = (a | b).sum()
    return 1.0 if union == 0 else float((a & b).sum() / union)


def reference_run(predictor, folder: Path, extra_mask: np.ndarray, extra_frame: int):
    """SAM2's masks: ``{pass: {frame: {obj: HxW bool}}}`` for the two propagations."""
    import torch

    state = predictor.init_state(str(folder))
    out: dict[str, dict[int, dict[int, np.ndarray]]] = {"first": {}, "second": {}}
    with torch.inference_mode():
        prompt = {}
        _, ids, m = predictor.add_new_points_or_box(state, MID, 1, points=np.array([POINT[:2]],
                                                    np.float32), labels=np.array([1], np.int32))
        prompt[1] = (m[list(ids).index(1), 0] > 0).numpy()
        _, ids, m = predictor.add_new_points_or_box(state, MID, 2, box=np.array(BOX, np.float32))
        prompt[2] = (m[list(ids).index(2), 0] > 0).numpy()
        for reverse in (False, True):
            for f, ids, masks in predictor.propagate_in_video(state, reverse=reverse):
                out["first"][f] = {i: (masks[k, 0] > 0).numpy() for k, i in enumerate(ids)}
        predictor.add_new_mask(state, extra_frame, 3, extra_mask)
        for f, ids, masks in predictor.propagate_in_video(state):
            out["second"][f] = {i: (masks[k, 0] > 0).numpy() for k, i in enumerate(ids)}
    return prompt, out


def test_two_objects_both_ways_then_a_mask_object_equal_sam2(video_daemon, clip_dir,
                                                             reference_video) -> None:
    extra_frame = MID
    with Client(video_daemon.socket_path, timeout=300) as client, \
            client.open_video(clip_dir) as session:
        assert (session.frame_count, session.width, session.height) == (CLIP_FRAMES, 640, 272)
        prompt = {1: session.add_prompt(MID, 1, points=[POINT]),
                  2: session.add_prompt(MID, 2, box=BOX)}
        first = dict(session.propagate("both"))
        extra_mask = first[MID + 1][1] > 0  # an earlier result as a mask prompt
        added = session.add_prompt(extra_frame, 3, mask=extra_mask)
        second = dict(session.propagate("forward"))
    ref_prompt, ref = reference_run(reference_video, clip_dir, extra_mask, extra_frame)

    for obj in (1, 2):
        assert prompt[obj].dtype == np.uint8 and set(np.unique(prompt[obj])) <= {0, 255}
        assert iou(prompt[obj], ref_prompt[obj]) >= 0.99
    assert sorted(first) == list(range(CLIP_FRAMES))  # every frame once, both ways
    assert sorted(second) == list(range(MID, CLIP_FRAMES))
    assert added.shape == (272, 640) and added.any()
    for name, ours in (("first", first), ("second", second)):
        for f, masks in ours.items():
            assert sorted(masks) == sorted(ref[name][f]), (name, f)
            for obj, mask in masks.items():
                assert mask.shape == (272, 640)
                assert iou(mask, ref[name][f][obj]) >= 0.99, (name, f, obj)
    assert any(m.any() for masks in first.values() for m in masks.values())
