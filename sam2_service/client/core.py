"""Python clients of the daemon, sync (:class:`Client`) and asyncio (:class:`AsyncClient`).

Front-ends (CLI, WebSocket gateway, napari plugin) use this module; it imports no torch.
Masks come back as numpy ``uint8`` arrays of shape (H, W), 0 background and 255 foreground.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence, Union

import numpy as np
import pybase64
from PIL import Image

from ..wire.codecs import compute_image_id, decode_mask, encode_png, image_size
from ..wire.errors import ImageDecodeError, ServiceError
from ..wire.frames import DEFAULT_SOCKET, FrameDecoder, decode_message, encode_message

#: Seconds to wait for a reply. Generous: a cold request on a laptop CPU takes seconds.
DEFAULT_TIMEOUT = 300.0
#: Largest reply frame the client accepts (an 8K mask is ~45 MB of base64).
CLIENT_MAX_FRAME_BYTES = 1 << 30
_RECV_CHUNK = 1 << 18
#: Pause between connection attempts while the daemon's accept queue is full, seconds.
CONNECT_RETRY_S = 0.01

#: Images remembered per client: which imageIds the daemon has embedded, and the PNG
#: encoding of recently sent arrays (so a resent array is hashed, not re-encoded).
CLIENT_MEMO_ENTRIES = 64


@dataclass(frozen=True)
class ImageRef:
    """An image the daemon has embedded, sent by ``imageId`` instead of its bytes.

    Attributes:
        image_id: the daemon's ``imageId`` (hex SHA-256 of the image file's bytes).
        width, height: the image's size in pixels.
        cached: from an embed reply: True when the daemon already had the embedding.
    """

    image_id: str
    width: int
    height: int
    cached: bool = False


ImageInput = Union[str, os.PathLike, bytes, np.ndarray, ImageRef]
PointInput = Union[Sequence[float], "tuple[float, float, int]"]


class ClientError(Exception):
    """The daemon could not be reached, closed the connection, or sent a bad frame."""


class RequestFailed(ClientError):
    """The daemon answered with an error response.

    Attributes:
        code: the wire's error code (docs/protocol.md), e.g. ``invalid_request``.
        message: the daemon's message, naming the field at fault.
        request_id: the ``requestId`` of the error response.
    """

    def __init__(self, code: str, message: str, request_id: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.request_id = code, message, request_id


@dataclass(frozen=True)
class SegmentResult:
    """A mask from the daemon.

    Attributes:
        request_id: the reply's ``requestId``.
        mask: (H, W) uint8, 0 background / 255 foreground, row 0 at the top.
        score: SAM2's IoU prediction for the mask.
        inference_time_ms: the daemon's time for the request, ms.
        response: the whole reply without ``maskBase64``.
    """

    request_id: str
    mask: np.ndarray
    score: float
    inference_time_ms: float
    response: dict[str, Any]

    @property
    def image_id(self) -> str | None:
        """The image's ``imageId`` (send it back to skip resending the image)."""
        return self.response.get("imageId")

    @property
    def cached(self) -> bool:
        """True when the daemon reused the image's cached embedding."""
        return bool(self.response.get("cached", False))


def default_socket_path() -> str:
    """``$SAM2_SERVICE_SOCKET`` or ``/tmp/wcc-sam2.sock``."""
    return os.environ.get("SAM2_SERVICE_SOCKET") or DEFAULT_SOCKET


def encode_image_input(image: str | os.PathLike | bytes | np.ndarray) -> tuple[bytes, int, int]:
    """Bytes to send for ``image`` and its (width, height).

    PNG/JPEG files and bytes are sent as they are; other formats Pillow reads (TIFF,
    BMP, ...) and numpy arrays (HxW or HxWx3 uint8, RGB) are encoded as PNG.
    """
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise ValueError(f"image array must be HxW or HxWx3 uint8, got {image.shape} {image.dtype}")
        return encode_png(image), image.shape[1], image.shape[0]
    data = image if isinstance(image, bytes) else Path(image).read_bytes()
    try:
        width, height = image_size(data)
        return data, width, height
    except ImageDecodeError:
        with Image.open(io.BytesIO(data)) as im:
            rgb = np.asarray(im.convert("RGB"))
        return encode_png(rgb), rgb.shape[1], rgb.shape[0]


@dataclass(frozen=True)
class PreparedImage:
    """An image ready to send: the file bytes, its size in pixels and its ``imageId``."""

    data: bytes
    width: int
    height: int
    image_id: str

    @property
    def ref(self) -> ImageRef:
        """This image as an :class:`ImageRef`."""
        return ImageRef(self.image_id, self.width, self.height)


def prepare_image(image: str | os.PathLike | bytes | np.ndarray) -> PreparedImage:
    """:func:`encode_image_input` plus the ``imageId`` the daemon will give those bytes."""
    data, width, height = encode_image_input(image)
    return PreparedImage(data, width, height, compute_image_id(data))


def build_segment_request(image: ImageInput | PreparedImage, *,
                          bbox: Sequence[float] | None = None,
                          points: Iterable[PointInput] = (),
                          request_id: str | None = None) -> dict[str, Any]:
    """A protocol v1 segment request.

    Args:
        image: see :func:`encode_image_input`; an :class:`ImageRef` is sent as ``imageId``.
        bbox: (x1, y1, x2, y2) in pixels, XYXY.
        points: (x, y) or (x, y, label) in pixels; label 1 foreground (default), 0 background.
        request_id: defaults to a fresh one.
    """
    msg: dict[str, Any] = {"requestId": request_id or f"cli-{os.urandom(6).hex()}"}
    if isinstance(image, ImageRef):
        msg.update(width=image.width, height=image.height, imageId=image.image_id)
    else:
        prepared = image if isinstance(image, PreparedImage) else prepare_image(image)
        msg.update(width=prepared.width, height=prepared.height,
                   imageBase64=pybase64.b64encode_as_string(prepared.data))
    if bbox is not None:
        msg["bbox"] = dict(zip(("x1", "y1", "x2", "y2"), map(float, bbox)))
    pts = [{"x": float(p[0]), "y": float(p[1]), "label": int(p[2]) if len(p) > 2 else 1}
           for p in points]
    if pts:
        msg["points"] = pts
    return msg


def build_embed_request(image: PreparedImage, request_id: str | None = None) -> dict[str, Any]:
    """A protocol v1 ``embed`` request for a prepared image."""
    return {"op": "embed", "requestId": request_id or f"cli-{os.urandom(6).hex()}",
            "width": image.width, "height": image.height,
            "imageBase64": pybase64.b64encode_as_string(image.data)}


class ImageMemo:
    """What one client remembers between requests, so that an image it sends again goes
    as its ``imageId`` (about 100 bytes) instead of megabytes of base64.

    ``prepare`` keeps the PNG encoding of recent numpy arrays, keyed by their content
    hash; ``known`` holds imageIds the daemon has embedded. Both are LRU, at most
    ``entries`` long. The daemon may still have evicted an id: the clients then resend.
    """

    def __init__(self, entries: int = CLIENT_MEMO_ENTRIES) -> None:
        self.entries = entries
        self._arrays: OrderedDict[tuple, PreparedImage] = OrderedDict()
        self._known: OrderedDict[str, None] = OrderedDict()

    def prepare(self, image: str | os.PathLike | bytes | np.ndarray) -> PreparedImage:
        """:func:`prepare_image`, remembering arrays by shape, dtype and SHA-256 of their bytes."""
        if not isinstance(image, np.ndarray):
            return prepare_image(image)
        key = (image.shape, image.dtype.str, hashlib.sha256(np.ascontiguousarray(image)).digest())
        if key not in self._arrays:
            self._arrays[key] = prepare_image(image)
            self._trim(self._arrays)
        self._arrays.move_to_end(key)
        return self._arrays[key]

    def known(self, image_id: str) -> bool:
        """True if the daemon has embedded ``image_id`` as far as this client knows."""
        return image_id in self._known

    def remember(self, image_id: str | None) -> None:
        """Note that the daemon has embedded ``image_id``."""
        if image_id:
            self._known[image_id] = None
            self._known.move_to_end(image_id)
            self._trim(self._known)

    def forget(self, image_id: str) -> None:
        """Note that the daemon no longer has ``image_id``."""
        self._known.pop(image_id, None)

    def _trim(self, table: OrderedDict) -> None:
        while len(table) > self.entries:
            table.popitem(last=False)


def check_response(response: dict[str, Any]) -> dict[str, Any]:
    """Return ``response``, or raise :class:`RequestFailed` if it is an error response."""
    if "error" in response:
        raise RequestFailed(str(response.get("code", "internal")), str(response["error"]),
                            str(response.get("requestId", "")))
    return response


def parse_segment_response(response: dict[str, Any]) -> SegmentResult:
    """Turn a segment reply into a :class:`SegmentResult`.

    Raises:
        RequestFailed: the reply is an error response.
        ClientError: the mask does not match maskWidth x maskHeight.
    """
    check_response(response)
    try:
        mask = decode_mask(response["maskBase64"], response["maskWidth"], response["maskHeight"])
    except (KeyError, ValueError) as exc:
        raise ClientError(f"malformed segment reply: {exc}") from None
    rest = {k: v for k, v in response.items() if k != "maskBase64"}
    return SegmentResult(str(response["requestId"]), mask, float(response.get("score", 0.0)),
                         float(response.get("inferenceTimeMs", 0.0)), rest)


def _decode_reply(payload: bytes) -> dict[str, Any]:
    try:
        return decode_message(payload)
    except ServiceError as exc:
        raise ClientError(f"bad reply from daemon: {exc.message}") from None


class Client:
    """Blocking client; one connection, reused for every request until :meth:`close`.

    Args:
        socket_path: the daemon's socket (default :func:`default_socket_path`).
        timeout: seconds to wait for connecting and for each reply.
    """

    def __init__(self, socket_path: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.socket_path = socket_path or default_socket_path()
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._decoder = FrameDecoder(CLIENT_MAX_FRAME_BYTES)
        self.memo = ImageMemo()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _connect(self) -> socket.socket:
        if self._sock is None:
            deadline = time.monotonic() + self.timeout
            while True:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(self.timeout)
                try:
                    sock.connect(self.socket_path)
                    break
                except BlockingIOError:  # EAGAIN: the daemon's accept queue is full; retry
                    sock.close()
                    if time.monotonic() > deadline:
                        raise ClientError(f"cannot connect to {self.socket_path}: its accept "
                                          f"queue stayed full for {self.timeout} s") from None
                    time.sleep(CONNECT_RETRY_S)
                except OSError as exc:
                    sock.close()
                    raise ClientError(f"cannot connect to {self.socket_path}: "
                                      f"{exc.strerror or exc} (is the daemon running? start it "
                                      "with `make run`)") from None
            self._sock = sock
        return self._sock

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send one request object and return the reply object (error replies included)."""
        sock = self._connect()
        try:
            sock.sendall(encode_message(message))
            while (payload := self._decoder.next_frame()) is None:
                data = sock.recv(_RECV_CHUNK)
                if not data:
                    raise ClientError("daemon closed the connection before replying")
                self._decoder.feed(data)
        except (OSError, ServiceError) as exc:
            self.close()
            if isinstance(exc, socket.timeout):
                raise ClientError(f"no reply within {self.timeout} s") from None
            raise ClientError(f"connection to daemon failed: {exc}") from None
        except ClientError:
            self.close()
            raise
        return _decode_reply(payload)

    def ping(self) -> dict[str, Any]:
        """``{"op": "ping"}``; raises :class:`RequestFailed` on an error reply."""
        return check_response(self.request({"op": "ping"}))

    def info(self) -> dict[str, Any]:
        """``{"op": "info"}``: model, checkpoint, weights, device, dtype, versions."""
        return check_response(self.request({"op": "info"}))

    def segment(self, image: ImageInput, *, bbox: Sequence[float] | None = None,
                points: Iterable[PointInput] = (), request_id: str | None = None,
                reuse: bool = True) -> SegmentResult:
        """Segment ``image`` with a box and/or points (see :func:`build_segment_request`).

        With ``reuse``, an image this client has sent before goes as its ``imageId``; if
        the daemon no longer has it (``unknown_image``) the image is resent at once. An
        :class:`ImageRef` is always sent by id (``unknown_image`` then raises).

        Raises:
            RequestFailed: an error reply (``.code``, ``.message``, ``.request_id``).
            ClientError: the daemon could not be reached or sent a bad reply.
        """
        kw = dict(bbox=bbox, points=points, request_id=request_id)
        if isinstance(image, ImageRef):
            return parse_segment_response(self.request(build_segment_request(image, **kw)))
        prepared = self.memo.prepare(image)
        if reuse and self.memo.known(prepared.image_id):
            reply = self.request(build_segment_request(prepared.ref, **kw))
            if reply.get("code") != "unknown_image":
                return parse_segment_response(reply)
            self.memo.forget(prepared.image_id)
        result = parse_segment_response(self.request(build_segment_request(prepared, **kw)))
        self.memo.remember(result.image_id)
        return result

    def embed(self, image: str | os.PathLike | bytes | np.ndarray,
              request_id: str | None = None) -> ImageRef:
        """``{"op": "embed"}``: have the daemon compute (or find) the image embedding now;
        returns the :class:`ImageRef` to segment it by id."""
        prepared = self.memo.prepare(image)
        reply = check_response(self.request(build_embed_request(prepared, request_id)))
        self.memo.remember(reply["imageId"])
        return ImageRef(reply["imageId"], reply["width"], reply["height"], bool(reply["cached"]))

    def release(self, image: ImageRef | str) -> bool:
        """``{"op": "release"}``: drop the image's cached embedding; False if none was cached."""
        iid = image.image_id if isinstance(image, ImageRef) else image
        self.memo.forget(iid)
        return bool(check_response(self.request({"op": "release", "imageId": iid}))["released"])

    def close(self) -> None:
        """Close the connection (a later request reconnects)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            self._decoder = FrameDecoder(CLIENT_MAX_FRAME_BYTES)


class AsyncClient:
    """asyncio client with the same methods as :class:`Client`, as coroutines.

    Requests on one AsyncClient are serialised by a lock, so concurrent callers each get
    their own reply.
    """

    def __init__(self, socket_path: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.socket_path = socket_path or default_socket_path()
        self.timeout = timeout
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._decoder = FrameDecoder(CLIENT_MAX_FRAME_BYTES)
        self._lock = asyncio.Lock()
        self.memo = ImageMemo()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._streams is None:
            try:
                self._streams = await asyncio.wait_for(
                    asyncio.open_unix_connection(self.socket_path, limit=_RECV_CHUNK), self.timeout)
            except (OSError, asyncio.TimeoutError) as exc:
                raise ClientError(f"cannot connect to {self.socket_path}: {exc} "
                                  "(is the daemon running? start it with `make run`)") from None
        return self._streams

    async def _exchange(self, message: dict[str, Any]) -> bytes:
        reader, writer = await self._connect()
        writer.write(encode_message(message))
        await writer.drain()
        while (payload := self._decoder.next_frame()) is None:
            data = await reader.read(_RECV_CHUNK)
            if not data:
                raise ClientError("daemon closed the connection before replying")
            self._decoder.feed(data)
        return payload

    async def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send one request object and return the reply object (error replies included)."""
        async with self._lock:
            try:
                payload = await asyncio.wait_for(self._exchange(message), self.timeout)
            except asyncio.TimeoutError:
                await self.close()
                raise ClientError(f"no reply within {self.timeout} s") from None
            except (OSError, ServiceError) as exc:
                await self.close()
                raise ClientError(f"connection to daemon failed: {exc}") from None
            except ClientError:
                await self.close()
                raise
        return _decode_reply(payload)

    async def ping(self) -> dict[str, Any]:
        """``{"op": "ping"}``."""
        return check_response(await self.request({"op": "ping"}))

    async def info(self) -> dict[str, Any]:
        """``{"op": "info"}``."""
        return check_response(await self.request({"op": "info"}))

    async def segment(self, image: ImageInput, *, bbox: Sequence[float] | None = None,
                      points: Iterable[PointInput] = (), request_id: str | None = None,
                      reuse: bool = True) -> SegmentResult:
        """:meth:`Client.segment` as a coroutine; PNG encoding and hashing run in a thread."""
        kw = dict(bbox=bbox, points=points, request_id=request_id)
        if isinstance(image, ImageRef):
            return parse_segment_response(await self.request(build_segment_request(image, **kw)))
        prepared = await asyncio.to_thread(self.memo.prepare, image)
        if reuse and self.memo.known(prepared.image_id):
            reply = await self.request(build_segment_request(prepared.ref, **kw))
            if reply.get("code") != "unknown_image":
                return parse_segment_response(reply)
            self.memo.forget(prepared.image_id)
        msg = await asyncio.to_thread(build_segment_request, prepared, **kw)
        result = parse_segment_response(await self.request(msg))
        self.memo.remember(result.image_id)
        return result

    async def embed(self, image: str | os.PathLike | bytes | np.ndarray,
                    request_id: str | None = None) -> ImageRef:
        """:meth:`Client.embed` as a coroutine."""
        prepared = await asyncio.to_thread(self.memo.prepare, image)
        reply = check_response(await self.request(build_embed_request(prepared, request_id)))
        self.memo.remember(reply["imageId"])
        return ImageRef(reply["imageId"], reply["width"], reply["height"], bool(reply["cached"]))

    async def release(self, image: ImageRef | str) -> bool:
        """:meth:`Client.release` as a coroutine."""
        iid = image.image_id if isinstance(image, ImageRef) else image
        self.memo.forget(iid)
        reply = check_response(await self.request({"op": "release", "imageId": iid}))
        return bool(reply["released"])

    async def close(self) -> None:
        """Close the connection (a later request reconnects)."""
        if self._streams is not None:
            _, writer = self._streams
            self._streams = None
            self._decoder = FrameDecoder(CLIENT_MAX_FRAME_BYTES)
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass
