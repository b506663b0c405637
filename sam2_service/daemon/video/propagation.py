"""The model's side of video sessions: jobs for the inference thread.

Each function runs on the worker's inference thread (SAM2's state is touched by that
thread only) and calls ``SAM2VideoPredictor``'s own methods: ``add_new_points_or_box``,
``add_new_mask``, ``remove_object``, ``clear_all_prompts_in_frame``, ``reset_state`` and
``propagate_in_video``, the last one advanced one frame per job (:func:`step`), so that
other requests run between two frames. After each frame, :func:`step` drops the outputs
SAM2's memory no longer reads (:func:`sam2_compat.prune_video_outputs`): per object the
conditioning frames' outputs, the last ``num_maskmem`` (7) frames in the direction of
travel whole, object pointers of the last ``max_obj_ptrs_in_encoder`` (16), and the
outputs within 16 frames of a conditioning frame (read by a later pass from it) stay; the
rest goes once sent, so memory stays flat as the video grows.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from ...wire.errors import InvalidRequest
from ..inference import sam2_compat
from .sessions import VideoSession


@contextlib.contextmanager
def inference(precision: str, device: str) -> Iterator[None]:
    """``torch.inference_mode``, with bfloat16 autocast when ``precision`` is bfloat16 (as
    the daemon's image path)."""
    import torch

    with torch.inference_mode():
        if precision == "bfloat16":
            with torch.autocast(device.split(":")[0], dtype=torch.bfloat16):
                yield
        else:
            yield


@dataclass(frozen=True)
class FrameMasks:
    """One frame's result: ``masks`` N x H x W bool (True on the object), ``scores`` N
    object score logits (> 0: present), for ``object_ids`` in that order."""

    frame: int
    object_ids: list[int]
    masks: np.ndarray
    scores: list[float | None]


def new_state(predictor: Any, session_store: Any) -> dict[str, Any]:
    """SAM2's inference state over ``session_store`` (:class:`FrameStore`), its outputs kept
    in host memory when the model is on a GPU (``offload_state_to_cpu``)."""
    import torch

    device = predictor.device
    storage = torch.device("cpu") if device.type != "cpu" else device
    return sam2_compat.new_video_state(session_store, session_store.height, session_store.width,
                                       device, storage)


def add_prompt(session: VideoSession, frame: int, object_id: int,
               points: tuple[tuple[float, float, int], ...],
               box: tuple[float, float, float, float] | None, mask: np.ndarray | None,
               precision: str) -> tuple[np.ndarray, float | None]:
    """SAM2's ``add_new_points_or_box`` (points and/or box; the object's earlier prompt on
    that frame replaced, ``clear_old_points=True``) or ``add_new_mask`` (HxW bool).

    Returns:
        (HxW bool mask of ``object_id`` on ``frame``, its object score logit).
    """
    pred, state = session.predictor, session.state
    sam2_compat.drop_thinned_outputs(state, frame)
    with inference(precision, str(pred.device)):
        if mask is not None:
            _, ids, masks = pred.add_new_mask(state, frame, object_id, mask)
        else:
            coords = np.array([p[:2] for p in points], np.float32) if points else None
            labels = np.array([p[2] for p in points], np.int32) if points else None
            _, ids, masks = pred.add_new_points_or_box(
                state, frame, object_id, points=coords, labels=labels,
                box=None if box is None else np.array(box, np.float32))
        out = (masks[list(ids).index(object_id), 0] > 0).cpu().numpy()
    return out, sam2_compat.video_object_score(state, object_id, frame)


def remove_object(session: VideoSession, object_id: int) -> bool:
    """SAM2's ``remove_object``; False when the session has no such object."""
    if object_id not in sam2_compat.video_object_ids(session.state):
        return False
    with inference("float32", "cpu"):
        session.predictor.remove_object(session.state, object_id, need_output=False)
    return True


def clear_prompts(session: VideoSession, frame: int, object_id: int | None) -> None:
    """SAM2's ``clear_all_prompts_in_frame`` for ``object_id``, or for every object."""
    ids = sam2_compat.video_object_ids(session.state)
    with inference("float32", "cpu"):
        for oid in ids if object_id is None else [i for i in ids if i == object_id]:
            session.predictor.clear_all_prompts_in_frame(session.state, frame, oid,
                                                         need_output=False)


def reset(session: VideoSession) -> None:
    """SAM2's ``reset_state``: every object and prompt gone; the frames stay."""
    with inference("float32", "cpu"):
        session.predictor.reset_state(session.state)
    sam2_compat.clear_video_features(session.state)


def plan(session: VideoSession, direction: str, start: int | None, end: int | None
         ) -> list[tuple[int, int, bool]]:
    """The passes of a propagation: ``(anchor, max_frame_num_to_track, reverse)`` each, as
    ``propagate_in_video`` takes them. The anchor is the earliest prompted frame (SAM2's
    default start), moved into ``start .. end``; ``both`` is forward, then backward.

    Raises:
        InvalidRequest: no prompt yet, or ``start`` beyond the last frame.
    """
    count = len(session.store)
    lo = start or 0
    hi = count - 1 if end is None else min(end, count - 1)
    if lo > count - 1:
        raise InvalidRequest(f"start ({lo}) is beyond the last frame ({count - 1})",
                             field="start")
    prompted = sam2_compat.video_prompted_frames(session.state)
    if not prompted:
        raise InvalidRequest("the session has no prompts: add one (videoPrompt) before "
                             "propagating", field="sessionId")
    anchor = min(max(min(prompted), lo), hi)
    passes = []
    if direction in ("forward", "both"):
        passes.append((anchor, hi - anchor, False))
    if direction in ("backward", "both"):
        if anchor > 0:
            passes.append((anchor, anchor - lo, True))
        elif direction == "backward":  # SAM2's reverse pass from frame 0 yields nothing
            passes.append((0, 0, False))
    return passes


def start_pass(session: VideoSession, anchor: int, count: int, reverse: bool) -> Any:
    """SAM2's ``propagate_in_video`` generator for one pass (not started)."""
    sam2_compat.quiet_video_progress()
    return session.predictor.propagate_in_video(session.state, start_frame_idx=anchor,
                                                max_frame_num_to_track=count, reverse=reverse)


def step(session: VideoSession, gen: Any, reverse: bool, precision: str) -> FrameMasks | None:
    """The next frame of ``gen`` (None at its end), then the outputs no longer read dropped.

    Raises:
        InvalidRequest: SAM2 refused to start (an object without prompts left).
    """
    pred = session.predictor
    with inference(precision, str(pred.device)):
        try:
            frame, ids, masks = next(gen)
        except StopIteration:
            return None
        except RuntimeError as exc:
            if "input points or masks" in str(exc):
                raise InvalidRequest(f"cannot propagate: {exc}", field="sessionId") from None
            if "must have the same dtype" in str(exc) and precision == "float32":
                # SAM2 1.1.0 keeps memories in bfloat16; with no object pointer from the
                # past (an object's frames before its first prompt, going forward) its
                # memory attention gets bfloat16 alone, which float32 weights refuse.
                raise InvalidRequest(
                    "in float32 SAM2 cannot track an object forward on frames before its "
                    "first prompt: prompt every object on the earliest prompted frame, or "
                    "propagate from a later start", field="start") from None
            raise
        result = (masks[:, 0] > 0).cpu().numpy()
    ids = list(ids)
    scores = [sam2_compat.video_object_score(session.state, i, frame) for i in ids]
    sam2_compat.prune_video_outputs(session.state, frame, reverse, pred.num_maskmem,
                                    pred.max_obj_ptrs_in_encoder)
    return FrameMasks(int(frame), ids, result, scores)


def close_pass(gen: Any) -> None:
    """Close a pass's generator (on the inference thread, where it ran)."""
    gen.close()
