"""The ``video*`` ops: one handler each, for :class:`~sam2_service.daemon.serving.dispatch.Dispatcher`.

Frames are read (base64, image headers, a video file decoded with PyAV) on a thread; model
work runs as inference-worker jobs (:mod:`.propagation`); ``videoPropagate`` answers with a
:class:`~.streams.ReplyStream`: one reply per frame, then a final one, each frame its own
job so interactive requests run between frames. A ``videoCancel`` (from any connection) or a
close stops it at the next frame; the client hanging up cancels it and, as the session
belongs to its connection, closes the session.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, AsyncIterator, Awaitable, Callable

import numpy as np

from ...wire.codecs import decode_any_mask, decode_base64, encode_mask_as
from ...wire.errors import InvalidRequest
from ...wire.video import (
    VideoAppend,
    VideoObjectRequest,
    VideoOpen,
    VideoPrompt,
    VideoPropagate,
    VideoSessionRequest,
    decode_frames,
    final_reply,
    frame_reply,
    ok_reply,
    open_reply,
    prompt_reply,
)
from ..config import ServiceConfig
from ..ops.logs import event
from . import propagation
from .frames import FrameStore, check_frame_limits, image_frames, video_file_frames
from .sessions import CURRENT_OWNER, SessionTable, VideoOwner, VideoSession, new_session_id
from .streams import ReplyStream

log = logging.getLogger("sam2_service.video")
Handler = Callable[[Any, float], Awaitable[Any]]


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000


class VideoService:
    """Video sessions over the workers of ``pool`` (a session stays on the worker chosen
    when it opened: the one with the fewest requests in flight)."""

    def __init__(self, config: ServiceConfig, pool: Any) -> None:
        self.config = config
        self.pool = pool
        self.table = SessionTable(config.video_max_sessions, config.video_idle_timeout)
        self._predictors: dict[Any, Any] = {}
        self._timer: asyncio.TimerHandle | None = None

    def handlers(self) -> dict[type, Handler]:
        """Request type -> handler, for the dispatcher's table."""
        return {VideoOpen: self.open, VideoAppend: self.append, VideoPrompt: self.prompt,
                VideoPropagate: self.propagate, VideoObjectRequest: self.object_op,
                VideoSessionRequest: self.session_op}

    # -- sessions ---------------------------------------------------------------------------
    def _deadline(self) -> float:
        return time.monotonic() + self.config.request_timeout

    def _predictor(self, worker: Any) -> Any:
        """The worker's SAM2VideoPredictor, built at its first session (inference thread)."""
        if worker not in self._predictors:
            from .predictor import build_video_predictor

            engine = worker.engine
            self._predictors[worker] = build_video_predictor(engine.predictor.model,
                                                             engine.config.model_config)
        return self._predictors[worker]

    def _read_frames(self, request: VideoOpen | VideoAppend, have: int, have_bytes: int
                     ) -> tuple[list, int, int]:
        cfg = self.config
        frames_left = cfg.video_max_frames - have
        bytes_left = cfg.video_max_bytes - have_bytes
        if isinstance(request, VideoOpen) and request.video is not None:
            data = decode_base64(request.video, "video")
            return video_file_frames(data, frames_left, bytes_left, cfg.max_image_pixels)
        return image_frames(decode_frames(request.frames), frames_left, bytes_left)

    async def open(self, request: VideoOpen, arrived: float) -> dict[str, Any]:
        self.table.reserve()
        try:
            t0 = time.perf_counter()
            frames, width, height = await asyncio.to_thread(self._read_frames, request, 0, 0)
            read_ms = _ms(t0)
            worker = min(self.pool.workers, key=lambda w: w.in_flight)
            predictor = (await worker.run_job(self._predictor, worker,
                                              deadline=self._deadline())).value
            store = FrameStore(frames, width, height, predictor.image_size,
                               self.config.max_image_pixels)
            state = propagation.new_state(predictor, store)
        except BaseException:
            self.table.opening -= 1
            raise
        session = VideoSession(new_session_id(), worker, predictor, store, state,
                               CURRENT_OWNER.get())
        self.table.add(session)
        self._schedule_sweep()
        event(log, "Video session opened", requestId=request.request_id,
              sessionId=session.session_id, frames=len(store), width=width, height=height,
              frameBytes=store.nbytes, readMs=round(read_ms, 1))
        return open_reply(request.request_id, session.session_id, len(store), width, height,
                          {"read": read_ms, "total": (time.monotonic() - arrived) * 1000})

    async def append(self, request: VideoAppend, arrived: float) -> dict[str, Any]:
        session = self.table.get(request.session_id)
        session.check_idle()
        store = session.store
        frames, width, height = await asyncio.to_thread(self._read_frames, request, len(store),
                                                        store.nbytes)
        if (width, height) != (store.width, store.height):
            raise InvalidRequest(f"frames are {width}x{height}, but the session's video is "
                                 f"{store.width}x{store.height}", field="frames")
        check_frame_limits(len(store) + len(frames), store.nbytes + sum(f.nbytes for f in frames),
                           self.config.video_max_frames, self.config.video_max_bytes)
        await session.worker.run_job(self._extend, session, frames, deadline=self._deadline())
        return open_reply(request.request_id, session.session_id, len(store), width, height,
                          {"total": (time.monotonic() - arrived) * 1000})

    @staticmethod
    def _extend(session: VideoSession, frames: list) -> None:
        from ..inference import sam2_compat

        store = session.store
        store.frames.extend(frames)
        store.nbytes += sum(f.nbytes for f in frames)
        sam2_compat.set_video_frame_count(session.state, len(store))

    def disconnected(self, owner: VideoOwner) -> None:
        """The connection of ``owner`` closed: close its sessions."""
        for sid in list(owner.sessions):
            if self.table.close(sid):
                event(log, "Video session closed", sessionId=sid, reason="connection closed")

    def _schedule_sweep(self) -> None:
        """Close idle sessions now and then (a timer, not a task: nothing to cancel)."""
        if self._timer is not None or not self.table.sessions:
            return
        interval = max(0.5, min(30.0, self.config.video_idle_timeout / 4))

        def sweep() -> None:
            self._timer = None
            for sid in self.table.expire():
                event(log, "Video session closed", sessionId=sid, reason="idle timeout")
            self._schedule_sweep()

        self._timer = asyncio.get_running_loop().call_later(interval, sweep)

    # -- prompts and edits ----------------------------------------------------------------------
    def _frame(self, session: VideoSession, frame: int) -> int:
        if frame >= len(session.store):
            raise InvalidRequest(f"frame {frame} is beyond the video's last frame "
                                 f"({len(session.store) - 1})", field="frame")
        return frame

    async def prompt(self, request: VideoPrompt, arrived: float) -> dict[str, Any]:
        session = self.table.get(request.session_id)
        session.check_idle()
        frame = self._frame(session, request.frame)
        w, h = session.width, session.height
        for i, (x, y, _label) in enumerate(request.points):
            if not (0 <= x <= w and 0 <= y <= h):
                raise InvalidRequest(f"points[{i}] ({x:g}, {y:g}) is outside the {w}x{h} frame",
                                     field=f"points[{i}]")
        box = request.box
        if box is not None:
            box = (max(0.0, box[0]), max(0.0, box[1]), min(float(w), box[2]), min(float(h), box[3]))
            if not (box[0] < box[2] and box[1] < box[3]):
                raise InvalidRequest(f"bbox lies outside the {w}x{h} frame", field="bbox")
        mask = None
        if request.mask is not None:
            try:
                mask = decode_any_mask(request.mask, w, h) > 0
            except ValueError as exc:
                raise InvalidRequest(f"mask: {exc} (the mask must be {w}x{h})",
                                     field="mask") from None
        precision = session.worker.engine.precision
        done = await session.worker.run_job(propagation.add_prompt, session, frame,
                                            request.object_id, request.points, box, mask,
                                            precision, deadline=self._deadline())
        out, score = done.value
        encoded = await asyncio.to_thread(encode_mask_as, out, request.mask_encoding)
        event(log, "Video prompt", requestId=request.request_id, sessionId=session.session_id,
              frame=frame, objectId=request.object_id, points=len(request.points),
              box=box is not None, mask=mask is not None, runMs=round(done.run_ms, 1))
        return prompt_reply(request.request_id, session.session_id, frame, request.object_id,
                            score, w, h, request.mask_encoding, encoded,
                            {"queue": done.queue_ms, "run": done.run_ms,
                             "total": (time.monotonic() - arrived) * 1000})

    async def object_op(self, request: VideoObjectRequest, arrived: float) -> dict[str, Any]:
        session = self.table.get(request.session_id)
        session.check_idle()
        if request.op == "videoRemoveObject":
            done = await session.worker.run_job(propagation.remove_object, session,
                                                request.object_id, deadline=self._deadline())
            return ok_reply(request.request_id, session.session_id, objectId=request.object_id,
                            removed=done.value)
        frame = self._frame(session, request.frame)
        await session.worker.run_job(propagation.clear_prompts, session, frame,
                                     request.object_id, deadline=self._deadline())
        return ok_reply(request.request_id, session.session_id, frame=frame,
                        objectId=request.object_id)

    async def session_op(self, request: VideoSessionRequest, arrived: float) -> dict[str, Any]:
        sid = request.session_id
        if request.op == "videoClose":
            closed = self.table.close(sid)
            if closed:
                event(log, "Video session closed", sessionId=sid, reason="videoClose")
            return ok_reply(request.request_id, sid, closed=closed)
        session = self.table.get(sid)
        if request.op == "videoCancel":
            running = session.propagating
            session.cancelled = running
            return ok_reply(request.request_id, sid, cancelled=running)
        session.check_idle()
        await session.worker.run_job(propagation.reset, session, deadline=self._deadline())
        return ok_reply(request.request_id, sid)

    # -- propagation ------------------------------------------------------------------------------
    async def propagate(self, request: VideoPropagate, arrived: float) -> ReplyStream:
        session = self.table.get(request.session_id)
        session.check_idle()
        passes = await session.worker.run_job(propagation.plan, session, request.direction,
                                              request.start, request.end,
                                              deadline=self._deadline())
        session.propagating, session.cancelled = True, False
        return ReplyStream(self._stream(session, request, passes.value, arrived))

    async def _stream(self, session: VideoSession, request: VideoPropagate,
                      passes: list[tuple[int, int, bool]], arrived: float
                      ) -> AsyncIterator[dict[str, Any]]:
        worker, precision = session.worker, session.worker.engine.precision
        sent: set[int] = set()
        timings = {"queue": 0.0, "run": 0.0, "encode": 0.0}
        try:
            for anchor, count, reverse in passes:
                gen = propagation.start_pass(session, anchor, count, reverse)
                try:
                    while not session.cancelled:
                        done = await worker.run_job(propagation.step, session, gen, reverse,
                                                    precision, deadline=self._deadline())
                        timings["queue"] += done.queue_ms
                        timings["run"] += done.run_ms
                        session.touch()
                        if done.value is None:
                            break
                        if done.value.frame in sent:
                            continue
                        sent.add(done.value.frame)
                        t0 = time.perf_counter()
                        reply = await asyncio.to_thread(self._frame_reply, session, request,
                                                        done.value)
                        timings["encode"] += _ms(t0)
                        event(log, "Video progress", requestId=request.request_id,
                              sessionId=session.session_id, frame=done.value.frame,
                              done=len(sent), runMs=round(done.run_ms, 1))
                        yield reply
                finally:
                    await self._close_pass(worker, gen)
        finally:
            session.propagating = False
            session.touch()
        timings["total"] = (time.monotonic() - arrived) * 1000
        event(log, "Video propagation done", requestId=request.request_id,
              sessionId=session.session_id, frames=len(sent), cancelled=session.cancelled)
        yield final_reply(request.request_id, session.session_id, len(sent), session.cancelled,
                          timings)

    @staticmethod
    async def _close_pass(worker: Any, gen: Any) -> None:
        try:
            await worker.run_job(propagation.close_pass, gen)
        except BaseException:  # cancelled or shutting down: it is closed when collected
            pass

    @staticmethod
    def _frame_reply(session: VideoSession, request: VideoPropagate,
                     result: propagation.FrameMasks) -> dict[str, Any]:
        objects = []
        for oid, mask, score in zip(result.object_ids, result.masks, result.scores):
            key, value = encode_mask_as(np.ascontiguousarray(mask), request.mask_encoding)
            objects.append({"objectId": oid, "objectScore": score, key: value})
        return frame_reply(request.request_id, session.session_id, result.frame, session.width,
                           session.height, request.mask_encoding, objects)
