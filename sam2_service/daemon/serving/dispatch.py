"""Answering one request, with no I/O: payload bytes in, reply object out.

:class:`Dispatcher` is driven by one table, :attr:`Dispatcher.handlers`, from request type
(:data:`sam2_service.wire.schema.REQUEST_TYPES`, what
:func:`~sam2_service.wire.schema.parse_request` makes of each op) to handler. Adding an op is
one schema entry, one entry here, one worker job and one client method.
:meth:`Dispatcher.respond` never raises: it is the only place where exceptions become error
responses (:class:`~sam2_service.wire.errors.ServiceError` -> its code with the request's
``requestId``, read once per request; anything else -> ``internal``, logged with its
traceback). The replies are built here from the workers' outcomes: the segment reply, plain
or extended (the protocol additions), from one :class:`SegmentOutcome`; the ``info`` reply
(:func:`info_response`) from the settings and what the engine, caches and devices report.
The connection loop (:mod:`sam2_service.daemon.serving.connection`) and the fuzz target
(``fuzz/fuzz_pipeline.py``) both drive it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from typing import Any, Awaitable, Callable

import numpy as np
import orjson

from ...wire.auto import AutoRequest, auto_response, encode_labels
from ...wire.codecs import MASK_ENCODINGS, encode_mask, encode_mask_as
from ...wire.errors import InvalidRequest, ServiceError
from ...wire.frames import decode_message
from ...wire.schema import (
    PROTOCOL_VERSION,
    EmbedRequest,
    InfoRequest,
    PingRequest,
    ReleaseRequest,
    SegmentRequest,
    embed_response,
    error_response,
    extended_segment_response,
    mask_entry,
    new_request_id,
    parse_request,
    ping_response,
    read_request_id,
    release_response,
    segment_response,
)
from ..auto.runner import AutoProgress, AutoRunner
from ..config import ServiceConfig
from ..inference.budget import RequestBudget, encoded_chars
from ..inference.cache import CacheStats
from ..inference.devices import DeviceInfo, DevicePool
from ..inference.engine import EngineInfo
from ..inference.worker import InferenceWorker, SegmentOutcome
from ..ops.logs import event
from ..video.service import VideoService
from ..video.streams import ReplyStream

log = logging.getLogger("sam2_service.server")

DUMMY_WARNING = "DUMMY WEIGHTS: random-init model loaded with --dummy-weights; masks are meaningless"
#: Masks of more pixels than this are base64-encoded on a thread, not on the event loop:
#: :func:`encode_mask` of a 1920x1080 mask took 1.2 ms on the 2-core development machine.
MASK_THREAD_PIXELS = 512 * 512

#: Commas a large request may hold besides its points' and boxes' (top-level fields, bbox,
#: a data URL).
MAX_OTHER_COMMAS = 64

#: What ``info`` lists as supported beyond protocol v1 (the protocol additions, auto's
#: ``objectMasks``, the video session ops; docs/protocol.md).
FEATURES = ("maskEncoding", "multimask", "boxes", "maskInput", "maskId", "objectMasks", "video")

#: Characters an auto reply's table entry takes at most (id, area, bbox, scores as JSON),
#: besides its ``maskRle`` (``objectMasks``, counted apart), for its size check against
#: ``--max-reply-mb``.
AUTO_LABEL_CHARS = 256

Handler = Callable[[Any, float], Awaitable[dict[str, Any]]]


class Dispatcher:
    """Turns a frame's payload into its reply, using the workers for model work.

    Args:
        config: the daemon's settings (``max_points``, ``request_timeout`` and what
            ``info`` reports).
        worker: the inference worker, with its engine loaded; or a :class:`DevicePool` of
            one per device (``--device cuda:0,cuda:1``), which picks one per request.
    """

    def __init__(self, config: ServiceConfig, worker: InferenceWorker | DevicePool) -> None:
        self.config = config
        self.pool = worker if isinstance(worker, DevicePool) else DevicePool([worker])
        #: The first device's worker: what ``info``'s top-level fields describe.
        self.worker = self.pool.workers[0]
        #: ``--max-request-mb`` and ``--max-reply-mb``, checked before each request's work.
        self.budget = RequestBudget(config.max_request_bytes, config.max_reply_bytes,
                                    config.max_image_pixels)
        #: request type -> handler(request, arrived); the one routing table.
        self.handlers: dict[type, Handler] = {
            PingRequest: self._ping,
            InfoRequest: self._info,
            SegmentRequest: self._segment,
            EmbedRequest: self._embed,
            ReleaseRequest: self._release,
            AutoRequest: self._auto,
        }
        #: Auto requests in progress (``info``'s ``auto``), one runner per worker; see :mod:`.auto`.
        self.auto_runners = {w: AutoRunner(w, config.auto_step_points) for w in self.pool.workers}
        #: Video sessions (the ``video*`` ops); see :mod:`sam2_service.daemon.video`.
        self.video = VideoService(config, self.pool)
        self.handlers.update(self.video.handlers())

    async def respond(self, payload: bytes, arrived: float) -> dict[str, Any]:
        """Answer one frame's payload; never raises (errors become error responses).

        Args:
            payload: the frame's bytes (UTF-8 JSON expected).
            arrived: ``time.monotonic()`` at which the frame was complete; the request's
                deadline is ``arrived + request_timeout``.

        Returns:
            The reply object, with the request's ``requestId`` (or a made-up one when the
            request carries none that is readable: made up once, so that the reply and
            every log line of the request name the same one).
        """
        request_id = None
        try:
            if len(payload) > self.config.json_thread_bytes:
                obj = await asyncio.to_thread(self._decode_large, payload)
                if isinstance(obj, InvalidRequest):
                    return self.error(_peek_request_id(payload) or new_request_id(), obj)
            else:
                obj = decode_message(payload)
            request_id = read_request_id(obj)
            request = parse_request(obj, max_points=self.config.max_points,
                                    max_boxes=self.config.max_boxes, request_id=request_id)
            reply = await self.handlers[type(request)](request, arrived)
            if isinstance(reply, ReplyStream):  # several replies (videoPropagate)
                return ReplyStream(self._guarded(request_id, reply.replies))
            return reply
        except ServiceError as exc:
            return self.error(request_id or new_request_id(), exc)
        except Exception as exc:  # a bug or a model failure: report it, keep serving
            rid = request_id or new_request_id()
            event(log, "Internal error", logging.ERROR, exc_info=True, requestId=rid,
                  code="internal")
            return error_response(rid, "internal", f"internal error: {type(exc).__name__}: {exc}")

    async def _guarded(self, request_id: str, replies: Any) -> Any:
        """A stream's replies; a failure midway becomes its last reply, as in :meth:`respond`."""
        try:
            async for reply in replies:
                yield reply
        except ServiceError as exc:
            yield self.error(request_id, exc)
        except Exception as exc:
            event(log, "Internal error", logging.ERROR, exc_info=True, requestId=request_id,
                  code="internal")
            yield error_response(request_id, "internal",
                                 f"internal error: {type(exc).__name__}: {exc}")
        finally:
            await replies.aclose()

    def _decode_large(self, payload: bytes) -> dict[str, Any] | InvalidRequest:
        """On a thread: :meth:`_too_many_values`, then :func:`decode_message`. The count
        releases the GIL (numpy); orjson's parse itself holds it, so the count is what keeps
        a frame of many values from stalling the event loop."""
        return self._too_many_values(payload) or decode_message(payload)

    def _too_many_values(self, payload: bytes) -> InvalidRequest | None:
        """Refuse a large frame holding more JSON values than a request can use, before
        parsing it (1,000,000 points, 34 MB, took 0.3-1.3 s to parse, during which no other
        connection is served: orjson holds the GIL even on a thread). Values are counted by
        their separating commas (base64 text holds none): at most 4 per point (``{"x": ..,
        "y": .., "label": ..}`` and the comma after it) plus :data:`MAX_OTHER_COMMAS`.

        Returns:
            The error to answer with (``field`` is ``points``), or None if the frame may be
            parsed.
        """
        limit = 4 * self.config.max_points + 4 * self.config.max_boxes + MAX_OTHER_COMMAS
        commas = int(np.count_nonzero(np.frombuffer(payload, dtype=np.uint8) == ord(",")))
        if commas <= limit:
            return None
        return InvalidRequest(
                f"a request frame over --json-thread-kb ({self.config.json_thread_bytes} bytes) "
            f"may hold at most {limit} commas (4 per point for --max-points "
            f"{self.config.max_points}, 4 per box for --max-boxes {self.config.max_boxes}, plus "
            f"{MAX_OTHER_COMMAS}); this one holds {commas}, "
            "so it was not parsed", field="points")

    def error(self, request_id: str, exc: ServiceError) -> dict[str, Any]:
        """The error reply for ``exc`` (logged as a warning with its code and field)."""
        event(log, "Request failed", logging.WARNING, requestId=request_id, code=exc.code,
              error=exc.message, field=exc.field)
        return error_response(request_id, exc.code, exc.message)

    # -- handlers, one per request type ---------------------------------------------------
    async def _ping(self, request: PingRequest, arrived: float) -> dict[str, Any]:
        return ping_response(request.request_id)

    async def _segment(self, request: SegmentRequest, arrived: float) -> dict[str, Any]:
        """One worker outcome, then the plain reply (protocol v1) or, for a request with the
        protocol additions, the extended one: every mask in ``maskEncoding`` with its score
        and ``maskId``. The masks are encoded on a thread when they add up to more than
        :data:`MASK_THREAD_PIXELS`."""
        event(log, "Received request", requestId=request.request_id,
              hasBbox=request.bbox is not None, points=len(request.points),
              imageChars=len(request.image_base64 or ""), imageId=request.image_id)
        self.budget.check_segment(request)
        async with self.pool.worker_for(request) as (worker, image):
            out = await worker.segment(request, arrived + self.config.request_timeout, image)
        t0 = time.perf_counter()
        encode = _encode_extended if request.extended else _encode_plain
        if out.mask.size * (1 + len(out.entries)) > MASK_THREAD_PIXELS:
            encoded = await asyncio.to_thread(encode, out, request.mask_encoding, self.budget)
        else:
            encoded = encode(out, request.mask_encoding, self.budget)
        timings = {**out.timings, "mask": (time.perf_counter() - t0) * 1000}
        timings["total"] = (time.monotonic() - arrived) * 1000
        extended = dict(maskEncoding=request.mask_encoding, masks=len(out.entries),
                        maskInput=request.mask_input) if request.extended else {}
        event(log, "Inference complete", requestId=request.request_id,
              inferenceTimeMs=round(timings["total"], 1), maskCoverage=round(out.coverage, 4),
              score=round(out.score, 4), cached=out.cached, imageId=out.image_id,
              width=out.width, height=out.height, **extended, **self.pool.where(worker),
              **{f"{k}Ms": round(v, 1) for k, v in timings.items() if k != "total"})
        return _segment_reply(request, out, encoded, timings)

    async def _embed(self, request: EmbedRequest, arrived: float) -> dict[str, Any]:
        async with self.pool.worker_for(request) as (worker, image):
            out = await worker.embed(request, arrived + self.config.request_timeout, image)
        timings = {**out.timings, "total": (time.monotonic() - arrived) * 1000}
        event(log, "Image embedded", requestId=request.request_id, imageId=out.image_id,
              cached=out.cached, width=out.width, height=out.height, **self.pool.where(worker),
              **{f"{k}Ms": round(v, 1) for k, v in timings.items()})
        return embed_response(request.request_id, width=out.width, height=out.height,
                              image_id=out.image_id, cached=out.cached, timings=timings)

    async def _release(self, request: ReleaseRequest, arrived: float) -> dict[str, Any]:
        released = self.pool.release(request.image_id)
        event(log, "Image released", requestId=request.request_id, imageId=request.image_id,
              released=released)
        return release_response(request.request_id, image_id=request.image_id, released=released)

    async def _auto(self, request: AutoRequest, arrived: float) -> dict[str, Any]:
        event(log, "Received request", requestId=request.request_id, op="auto",
              tileShape=request.tile_shape, halo=request.halo, imageId=request.image_id,
              imageChars=len(request.image_base64 or ""))
        step_points = self.budget.auto_step_points(request, self.config.auto_step_points)
        async with self.pool.worker_for(request) as (worker, image):
            out = await self.auto_runners[worker].run(request, arrived + self.config.auto_timeout,
                                                      image, step_points=step_points)
        labels_base64 = await asyncio.to_thread(encode_labels, out.labels)
        table_chars = sum(AUTO_LABEL_CHARS + encoded_chars(e.get("maskRle", "")) for e in out.table)
        self.budget.check_reply(len(labels_base64) + table_chars,
                                hint="tile the image or raise the filters' thresholds")
        timings = {**out.timings, "total": (time.monotonic() - arrived) * 1000}
        h, w = out.labels.shape
        event(log, "Auto complete", requestId=request.request_id, labels=len(out.table),
              imageId=out.image_id, width=w, height=h, **self.pool.where(worker),
              **{f"{k}Ms": round(v, 1) for k, v in timings.items()})
        return auto_response(request.request_id, width=w, height=h, labels_base64=labels_base64,
                             labels=out.table, image_id=out.image_id, timings=timings)

    async def _info(self, request: InfoRequest, arrived: float) -> dict[str, Any]:
        engine = self.worker.engine
        assert engine is not None
        return info_response(
            request.request_id, self.config, engine.info(), self.worker.cache_stats(),
            self.worker.waiting, self.pool.info(),
            [p for r in self.auto_runners.values() for p in r.running.values()])


def _encode_plain(out: SegmentOutcome, encoding: str, budget: RequestBudget) -> str:
    """The plain reply's ``maskBase64`` (``encoding`` is not used: it is always raw, and its
    size was checked against ``budget`` before the work)."""
    return encode_mask(out.mask)


def _encode_extended(out: SegmentOutcome, encoding: str, budget: RequestBudget
                     ) -> tuple[tuple[str, Any], list[dict[str, Any]]]:
    """The top-level mask of ``out`` as ``(reply key, value)`` in ``encoding``, and the
    :func:`mask_entry` of each of its entries (candidates or boxes, in reply order).

    Raises:
        ReplyTooLarge: the masks encoded so far add up to more than ``--max-reply-mb``
            (counted mask by mask, so the rest are not encoded).
    """
    meter = budget.meter()

    def counted(mask: Any) -> tuple[str, Any]:
        encoded = encode_mask_as(mask, encoding)
        meter.add(encoded_chars(encoded[1]))
        return encoded

    masks, scores = out.predicted.masks, out.predicted.scores
    top = counted(out.mask)
    entries = [mask_entry(float(scores[i]), counted(masks[i]), mask_id)
               for i, mask_id in out.entries]
    return top, entries


def _segment_reply(request: SegmentRequest, out: SegmentOutcome, encoded: Any,
                   timings: dict[str, float]) -> dict[str, Any]:
    """The segment reply: protocol v1's, or for a request with the protocol additions the
    extended one, with ``candidates`` (``multimask``) or ``masks`` (``boxes``)."""
    if not request.extended:
        return segment_response(request.request_id, width=out.width, height=out.height,
                                mask_base64=encoded, score=out.score, image_id=out.image_id,
                                cached=out.cached, timings=timings)
    top, entries = encoded
    assert out.mask_id is not None
    return extended_segment_response(
        request.request_id, width=out.width, height=out.height,
        encoding=request.mask_encoding, mask=top, score=out.score, mask_id=out.mask_id,
        image_id=out.image_id, cached=out.cached, timings=timings,
        candidates=entries if request.multimask and entries else None,
        masks=entries if request.boxes and entries else None)


def info_response(request_id: str, config: ServiceConfig, engine: EngineInfo, cache: CacheStats,
                  waiting: int, devices: list[DeviceInfo],
                  auto: list[AutoProgress]) -> dict[str, Any]:
    """The reply to ``{"op": "info"}`` (docs/protocol.md): the first device's ``engine``,
    embedding ``cache`` and ``waiting`` jobs at the top level, then the settings' limits, the
    mask encodings and features, the ``auto`` requests in progress and every device."""
    cfg = config
    info: dict[str, Any] = {
        "requestId": request_id, "ok": True, "protocol": PROTOCOL_VERSION,
        **_engine_fields(engine), "socket": cfg.socket_path, "pid": os.getpid(),
        "cache": {"capacityBytes": cfg.cache_bytes, **_cache_fields(cache)},
        "diskCache": _disk_fields(cfg, cache.disk),
        "queue": {"waiting": waiting, "maxQueue": cfg.max_queue},
        "limits": {"maxFrameBytes": cfg.max_frame_bytes,
                   "maxImagePixels": cfg.max_image_pixels, "maxPoints": cfg.max_points,
                   "requestTimeout": cfg.request_timeout, "idleTimeout": cfg.idle_timeout,
                   "maxBoxes": cfg.max_boxes, "logitsCacheEntries": cfg.logits_cache_entries,
                   "autoTimeout": cfg.auto_timeout, "autoStepPoints": cfg.auto_step_points,
                   "maxConnections": cfg.max_connections,
                   "maxBufferedBytes": cfg.max_buffered_bytes,
                   "writeTimeout": cfg.write_timeout, "jsonThreadBytes": cfg.json_thread_bytes,
                   "maxRequestBytes": cfg.max_request_bytes,
                   "maxReplyBytes": cfg.max_reply_bytes,
                   "videoMaxFrames": cfg.video_max_frames, "videoMaxBytes": cfg.video_max_bytes,
                   "videoMaxSessions": cfg.video_max_sessions,
                   "videoIdleTimeout": cfg.video_idle_timeout},
        "maskEncodings": list(MASK_ENCODINGS),
        "features": list(FEATURES),
        "auto": [{"requestId": p.request_id, "done": p.done, "total": p.total} for p in auto],
        "devices": [_device_fields(d) for d in devices],
    }
    if engine.weights == "dummy":
        info["warning"] = DUMMY_WARNING
    return info


def _engine_fields(engine: EngineInfo) -> dict[str, Any]:
    return {"model": engine.model, "modelConfig": engine.model_config,
            "checkpoint": engine.checkpoint, "weights": engine.weights, "device": engine.device,
            "dtype": engine.precision, "fastpath": engine.fastpath,
            "loadTimeMs": round(engine.load_time_ms, 1), "compile": engine.compile,
            "versions": dict(engine.versions)}


def _disk_fields(cfg: ServiceConfig, disk: Any) -> dict[str, Any]:
    """``info``'s ``diskCache``: the disk tier's folder, budget and counters (a DiskStats),
    or only ``enabled: false`` and the settings when it is off."""
    fields = {"enabled": disk is not None, "directory": str(cfg.cache_path),
              "capacityBytes": cfg.cache_disk_bytes}
    if disk is not None:
        fields.update(bytes=disk.bytes, entries=disk.entries, hits=disk.hits,
                      misses=disk.misses, writes=disk.writes, evictions=disk.evictions,
                      discarded=disk.discarded, skipped=disk.skipped, pending=disk.pending)
    return fields


def _cache_fields(stats: CacheStats) -> dict[str, int]:
    return {"bytes": stats.bytes, "entries": stats.entries, "hits": stats.hits,
            "misses": stats.misses, "evictions": stats.evictions}


def _device_fields(d: DeviceInfo) -> dict[str, Any]:
    return {"index": d.index, "device": d.device, "dtype": d.precision,
            "loadTimeMs": None if d.load_time_ms is None else round(d.load_time_ms, 1),
            "queue": {"waiting": d.waiting, "running": d.running, "requests": d.requests},
            "cache": _cache_fields(d.cache)}


_REQUEST_ID = re.compile(rb'\s*:\s*("(?:[^"\\]|\\.){1,256}")')


def _peek_request_id(payload: bytes) -> str | None:
    """The ``requestId`` of an unparsed payload, found without parsing it (for refusing a
    frame before parsing): the string after the first ``"requestId"`` key, or None."""
    at = payload.find(b'"requestId"')
    match = _REQUEST_ID.match(payload, at + len(b'"requestId"')) if at >= 0 else None
    if match is None:
        return None
    try:
        rid = orjson.loads(match.group(1))
    except orjson.JSONDecodeError:
        return None
    return rid if isinstance(rid, str) and rid else None
