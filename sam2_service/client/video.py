"""Video sessions on the client: ``Client.open_video`` / ``AsyncClient.open_video``.

A session (:class:`VideoSession`, :class:`AsyncVideoSession`) talks to the daemon over a
connection of its own (the daemon closes a session when the connection that opened it
closes), so the client it came from stays free for ``segment`` requests meanwhile.
``propagate`` reads the daemon's streamed replies, one per frame; leaving it early sends
``videoCancel`` (on a short connection of its own) and reads the stream to its end, so the
session stays usable. A session closed, timed out or whose connection broke answers
``unknown_video_session``: :class:`~.core.RequestFailed` saying the video session is gone.

Sources (:func:`prepare_video_source`): a video file (``.mp4``, ``.mov``, ``.webm``,
``.mkv``, ``.avi``; its bytes are sent and the daemon decodes it with PyAV); a folder of
JPEG/PNG frames (sorted by file name, sent as they are); a sequence of images (paths, bytes
or HxW / HxWx3 uint8 arrays; PNG and JPEG sent as they are, other formats as PNG); or an
array (T, H, W) or (T, H, W, 3) whose frames go as PNG (lossless). An array of another dtype
than uint8 is scaled to 0..255 over the whole array's min..max (a z-stack keeps its
contrast across slices). Frames are sent in requests of at most :data:`CHUNK_FRAMES` frames
and :data:`CHUNK_BYTES` bytes (``videoOpen``, then ``videoAppend``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Iterator, Sequence

import numpy as np
import pybase64

from ..wire.codecs import decode_any_mask, encode_mask_png, encode_png
from .core import ClientError, check_response, new_request_id
from .images import encode_image_input

VIDEO_SUFFIXES = (".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v")
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")
#: Most frames, and raw bytes, per videoOpen / videoAppend request.
CHUNK_FRAMES = 128
CHUNK_BYTES = 24 * 2**20
#: Largest video file sent in one videoOpen (base64 must fit the daemon's 64 MiB frames).
MAX_VIDEO_FILE_BYTES = 44 * 2**20
#: How masks come back (compact; decoded to HxW uint8 0/255).
REPLY_ENCODING = "rle"


@dataclass(frozen=True)
class VideoSource:
    """What is sent: ``video`` (one video file's bytes) or ``frames`` (PNG/JPEG files)."""

    video: bytes | None
    frames: tuple[bytes, ...]


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """``array`` as uint8: itself when uint8, else scaled over its min..max to 0..255."""
    if array.dtype == np.uint8:
        return array
    a = array.astype(np.float64)
    lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
    if hi <= lo:
        return np.zeros(array.shape, np.uint8)
    return np.round((np.nan_to_num(a, nan=lo) - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def prepare_video_source(source: Any) -> VideoSource:
    """The bytes to send for ``source`` (see the module's docstring).

    Raises:
        ValueError: an array that is not (T, H, W) or (T, H, W, 3), an empty source, a
            folder without JPEG/PNG files, a video file over :data:`MAX_VIDEO_FILE_BYTES`.
        ImageUnreadable, ImageTooLargeError: an image of a sequence (as for ``segment``).
    """
    if isinstance(source, np.ndarray):
        if source.ndim not in (3, 4) or (source.ndim == 4 and source.shape[-1] != 3) \
                or source.shape[0] == 0:
            raise ValueError(f"a video array must be (T, H, W) or (T, H, W, 3), got {source.shape}")
        frames = _to_uint8(source)
        return VideoSource(None, tuple(encode_png(f) for f in frames))
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
            if not files:
                raise ValueError(f"{path} holds no JPEG or PNG frames")
            return VideoSource(None, tuple(p.read_bytes() for p in files))
        if path.suffix.lower() in VIDEO_SUFFIXES:
            data = path.read_bytes()
            if len(data) > MAX_VIDEO_FILE_BYTES:
                raise ValueError(f"{path} is {len(data)} bytes, more than one request carries "
                                 f"({MAX_VIDEO_FILE_BYTES}); extract its frames into a folder "
                                 "and open that")
            return VideoSource(data, ())
        raise ValueError(f"{path} is neither a folder of frames nor a video file "
                         f"({', '.join(VIDEO_SUFFIXES)})")
    items = list(source)
    if not items:
        raise ValueError("the video has no frames")
    frames = [encode_image_input(_to_uint8(i) if isinstance(i, np.ndarray) else i)[0]
              for i in items]
    return VideoSource(None, tuple(frames))


def _chunks(frames: Sequence[bytes]) -> Iterator[list[bytes]]:
    chunk: list[bytes] = []
    size = 0
    for f in frames:
        if chunk and (len(chunk) >= CHUNK_FRAMES or size + len(f) > CHUNK_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(f)
        size += len(f)
    if chunk:
        yield chunk


def _b64(frames: Sequence[bytes]) -> list[str]:
    return [pybase64.b64encode_as_string(f) for f in frames]


def open_messages(source: VideoSource, request_id: str | None) -> tuple[dict[str, Any], list]:
    """The ``videoOpen`` request and the frame chunks for ``videoAppend`` after it."""
    rid = request_id or new_request_id()
    if source.video is not None:
        return {"op": "videoOpen", "requestId": rid,
                "video": pybase64.b64encode_as_string(source.video)}, []
    chunks = list(_chunks(source.frames))
    return {"op": "videoOpen", "requestId": rid, "frames": _b64(chunks[0])}, chunks[1:]


def prompt_message(session_id: str, frame: int, object_id: int, points: Sequence = (),
                   box: Sequence[float] | None = None, mask: np.ndarray | None = None
                   ) -> dict[str, Any]:
    """A ``videoPrompt`` request: points ``(x, y[, label])`` pixels, box XYXY pixels, or an
    HxW mask (bool or 0/255; sent as PNG)."""
    msg: dict[str, Any] = {"op": "videoPrompt", "requestId": new_request_id(),
                           "sessionId": session_id, "frame": int(frame),
                           "objectId": int(object_id), "maskEncoding": REPLY_ENCODING}
    if points:
        pts = []
        for p in points:
            x, y, *rest = p
            pts.append({"x": float(x), "y": float(y), "label": int(rest[0]) if rest else 1})
        msg["points"] = pts
    if box is not None:
        x1, y1, x2, y2 = (float(v) for v in box)
        msg["bbox"] = {"x1": x1, "y1": y1, "x2": x2, "y2": y2}
    if mask is not None:
        msg["mask"] = {"maskPng": encode_mask_png(np.asarray(mask) > 0)}
    return msg


def propagate_message(session_id: str, direction: str, start: int | None, end: int | None
                      ) -> dict[str, Any]:
    if direction not in ("forward", "backward", "both"):
        raise ValueError(f"direction must be forward, backward or both, not {direction!r}")
    msg: dict[str, Any] = {"op": "videoPropagate", "requestId": new_request_id(),
                           "sessionId": session_id, "direction": direction,
                           "maskEncoding": REPLY_ENCODING}
    if start is not None:
        msg["start"] = int(start)
    if end is not None:
        msg["end"] = int(end)
    return msg


def frame_masks(reply: dict[str, Any]) -> tuple[int, dict[int, np.ndarray]]:
    """``(frame, {objectId: HxW uint8 0/255})`` of one streamed propagate reply."""
    w, h = reply["maskWidth"], reply["maskHeight"]
    return int(reply["frame"]), {int(o["objectId"]): decode_any_mask(o, w, h)
                                 for o in reply["objects"]}


def _message(op: str, session_id: str, **fields: Any) -> dict[str, Any]:
    return {"op": op, "requestId": new_request_id(), "sessionId": session_id,
            **{k: v for k, v in fields.items() if v is not None}}


class _Session:
    """What both session classes hold: their connection (``link``) and the ``videoOpen``
    reply's ``sessionId``, ``frameCount``, ``width`` and ``height``."""

    def __init__(self, link: Any, reply: dict[str, Any]) -> None:
        self._link = link
        self.session_id: str = reply["sessionId"]
        self.frame_count: int = int(reply["frameCount"])
        self.width: int = int(reply["width"])
        self.height: int = int(reply["height"])
        self._streaming = False


class VideoSession(_Session):
    """An open video session (from :meth:`Client.open_video`); a context manager.

    Attributes:
        session_id: the daemon's ``sessionId``.
        frame_count, width, height: the video's frames and their size in pixels.
    """

    def __enter__(self) -> "VideoSession":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _request(self, message: dict[str, Any]) -> dict[str, Any]:
        if self._streaming:
            raise ClientError("a propagation is running on this video session: finish or close "
                              "its iterator first")
        return check_response(self._link.request(message))

    def add_prompt(self, frame: int, object_id: int, points: Sequence = (),
                   box: Sequence[float] | None = None, mask: np.ndarray | None = None
                   ) -> np.ndarray:
        """Prompt ``object_id`` on ``frame`` (replacing its earlier prompt there) with points
        ``(x, y, label)`` pixels (label 1 foreground, 0 background) and/or a box (x1, y1, x2,
        y2) XYXY pixels, or an HxW mask (bool or 0/255): SAM2VideoPredictor's
        ``add_new_points_or_box`` / ``add_new_mask``.

        Returns:
            That frame's mask of the object, HxW uint8 0/255.

        Raises:
            RequestFailed: an error reply (``unknown_video_session`` when the session is gone).
        """
        reply = self._request(prompt_message(self.session_id, frame, object_id, points, box,
                                             mask))
        return decode_any_mask(reply, reply["maskWidth"], reply["maskHeight"])

    def remove_object(self, object_id: int) -> None:
        """Forget ``object_id`` (SAM2's ``remove_object``)."""
        self._request(_message("videoRemoveObject", self.session_id, objectId=int(object_id)))

    def clear_prompts(self, frame: int, object_id: int | None = None) -> None:
        """Drop the prompts on ``frame`` of ``object_id`` (None: of every object)."""
        self._request(_message("videoClearPrompts", self.session_id, frame=int(frame),
                               objectId=None if object_id is None else int(object_id)))

    def reset(self) -> None:
        """Drop every object and prompt (SAM2's ``reset_state``); the frames stay."""
        self._request(_message("videoReset", self.session_id))

    def propagate(self, direction: str = "both", start: int | None = None,
                  end: int | None = None) -> Iterator[tuple[int, dict[int, np.ndarray]]]:
        """Track every object through frames ``start`` .. ``end`` (inclusive; default all)
        from the earliest prompted frame: ``forward``, ``backward`` or ``both`` (forward,
        then backward, as SAM2's ``propagate_in_video`` then with ``reverse=True``).

        Yields:
            ``(frame_index, {object_id: HxW uint8 0/255})`` as frames arrive. Closing the
            iterator early cancels the propagation (the session stays open).

        Raises:
            RequestFailed: an error reply (at the start or midway).
        """
        if self._streaming:
            raise ClientError("a propagation is already running on this video session")
        self._link.send(propagate_message(self.session_id, direction, start, end))
        self._streaming, finished = True, False
        try:
            while True:
                reply = self._link.receive()
                finished = "error" in reply or bool(reply.get("done"))
                check_response(reply)
                if finished:
                    return
                yield frame_masks(reply)
        finally:
            if not finished:
                self._cancel_and_drain()
            self._streaming = False

    def _cancel_and_drain(self) -> None:
        try:
            with type(self._link)(self._link.socket_path, self._link.timeout) as side:
                side.request(_message("videoCancel", self.session_id))
            while True:
                reply = self._link.receive()
                if "error" in reply or reply.get("done"):
                    return
        except ClientError:
            self._link.close()  # the session goes with the connection

    def close(self) -> None:
        """Close the session on the daemon and its connection (idempotent)."""
        try:
            if not self._streaming:
                self._link.request(_message("videoClose", self.session_id))
        except ClientError:
            pass
        finally:
            self._link.close()


def open_video(client: Any, source: Any, request_id: str | None = None) -> VideoSession:
    """:meth:`Client.open_video`: prepare ``source``, open the session on a new connection,
    send the remaining frames."""
    first, rest = open_messages(prepare_video_source(source), request_id)
    link = type(client)(client.socket_path, client.timeout)
    try:
        reply = check_response(link.request(first))
        for chunk in rest:
            reply = check_response(link.request(_message("videoAppend", reply["sessionId"],
                                                         frames=_b64(chunk))))
    except BaseException:
        link.close()
        raise
    return VideoSession(link, reply)


class AsyncVideoSession(_Session):
    """:class:`VideoSession`'s asyncio twin (from :meth:`AsyncClient.open_video`): the same
    methods as coroutines, ``propagate`` an async iterator, an async context manager."""

    async def __aenter__(self) -> "AsyncVideoSession":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def _request(self, message: dict[str, Any]) -> dict[str, Any]:
        if self._streaming:
            raise ClientError("a propagation is running on this video session: finish or close "
                              "its iterator first")
        return check_response(await self._link.request(message))

    async def add_prompt(self, frame: int, object_id: int, points: Sequence = (),
                         box: Sequence[float] | None = None, mask: np.ndarray | None = None
                         ) -> np.ndarray:
        """As :meth:`VideoSession.add_prompt`."""
        reply = await self._request(prompt_message(self.session_id, frame, object_id, points,
                                                   box, mask))
        return decode_any_mask(reply, reply["maskWidth"], reply["maskHeight"])

    async def remove_object(self, object_id: int) -> None:
        await self._request(_message("videoRemoveObject", self.session_id,
                                     objectId=int(object_id)))

    async def clear_prompts(self, frame: int, object_id: int | None = None) -> None:
        await self._request(_message("videoClearPrompts", self.session_id, frame=int(frame),
                                     objectId=None if object_id is None else int(object_id)))

    async def reset(self) -> None:
        await self._request(_message("videoReset", self.session_id))

    async def propagate(self, direction: str = "both", start: int | None = None,
                        end: int | None = None
                        ) -> AsyncIterator[tuple[int, dict[int, np.ndarray]]]:
        """As :meth:`VideoSession.propagate`; closing it early (``aclose``) cancels."""
        if self._streaming:
            raise ClientError("a propagation is already running on this video session")
        await self._link.send(propagate_message(self.session_id, direction, start, end))
        self._streaming, finished = True, False
        try:
            while True:
                reply = await self._link.receive()
                finished = "error" in reply or bool(reply.get("done"))
                check_response(reply)
                if finished:
                    return
                yield frame_masks(reply)
        finally:
            if not finished:
                await self._cancel_and_drain()
            self._streaming = False

    async def _cancel_and_drain(self) -> None:
        try:
            async with type(self._link)(self._link.socket_path, self._link.timeout) as side:
                await side.request(_message("videoCancel", self.session_id))
            while True:
                reply = await self._link.receive()
                if "error" in reply or reply.get("done"):
                    return
        except ClientError:
            await self._link.close()

    async def close(self) -> None:
        try:
            if not self._streaming:
                await self._link.request(_message("videoClose", self.session_id))
        except ClientError:
            pass
        finally:
            await self._link.close()


async def open_video_async(client: Any, source: Any, request_id: str | None = None
                           ) -> AsyncVideoSession:
    """:meth:`AsyncClient.open_video` (the source is read and encoded on a thread)."""
    import asyncio

    first, rest = open_messages(await asyncio.to_thread(prepare_video_source, source),
                                request_id)
    link = type(client)(client.socket_path, client.timeout)
    try:
        reply = check_response(await link.request(first))
        for chunk in rest:
            reply = check_response(await link.request(
                _message("videoAppend", reply["sessionId"], frames=_b64(chunk))))
    except BaseException:
        await link.close()
        raise
    return AsyncVideoSession(link, reply)
