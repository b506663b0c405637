"""The clients' I/O-free core: requests built, replies read and checked, the server's uid
judged, and the segment-with-reuse logic written once as a generator that both transports
(:mod:`.sync`'s :class:`Client`, :mod:`.aio`'s :class:`AsyncClient`) drive.

Front-ends (CLI, WebSocket gateway, napari plugin) use these; nothing here imports torch or
touches a socket. Masks come back as numpy ``uint8`` arrays of shape (H, W), 0 background and
255 foreground.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generator, Iterable, Sequence, Union

import numpy as np
import pybase64
from PIL import Image

from ..wire.codecs import compute_image_id, decode_any_mask, encode_png, image_size
from ..wire.errors import ImageDecodeError, ServiceError
from ..wire.frames import DEFAULT_SOCKET, decode_message
from ..wire.peer import peer_allowed

#: Seconds to wait for a reply. Generous: a cold request on a laptop CPU takes seconds.
DEFAULT_TIMEOUT = 300.0
#: Largest reply frame the client accepts (an 8K mask is ~45 MB of base64).
CLIENT_MAX_FRAME_BYTES = 1 << 30
#: Bytes asked of the socket per read.
RECV_CHUNK = 1 << 18
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
class MaskCandidate:
    """One entry of a reply's ``candidates`` (``multimask``) or ``masks`` (``boxes``).

    Attributes:
        score: SAM2's IoU prediction for the mask.
        mask: (H, W) uint8, 0 background / 255 foreground, whatever the wire encoding.
        mask_id: its ``maskId``: pass it as ``mask_input`` to refine this mask.
    """

    score: float
    mask: np.ndarray
    mask_id: str | None


@dataclass(frozen=True)
class SegmentResult:
    """A mask from the daemon.

    Attributes:
        request_id: the reply's ``requestId``.
        mask: (H, W) uint8, 0 background / 255 foreground, row 0 at the top.
        score: SAM2's IoU prediction for the mask.
        inference_time_ms: the daemon's time for the request, ms.
        response: the whole reply without its mask payloads (``maskBase64``, ``maskRle``,
            ``maskPng``, ``candidates``, ``masks``).
        candidates: with ``multimask``: SAM2's three masks, best first.
        masks: with ``boxes``: one mask per box, in request order (``mask`` is their union).
    """

    request_id: str
    mask: np.ndarray
    score: float
    inference_time_ms: float
    response: dict[str, Any]
    candidates: tuple[MaskCandidate, ...] = ()
    masks: tuple[MaskCandidate, ...] = ()

    @property
    def mask_id(self) -> str | None:
        """The reply's ``maskId`` (extended replies only): pass it as ``mask_input`` to refine
        this mask on the same image."""
        return self.response.get("maskId")

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
                          request_id: str | None = None,
                          encoding: str | None = None, multimask: bool = False,
                          boxes: Iterable[Sequence[float]] | None = None,
                          mask_input: str | None = None) -> dict[str, Any]:
    """A protocol v1 segment request, with issue 13's options when given.

    Args:
        image: see :func:`encode_image_input`; an :class:`ImageRef` is sent as ``imageId``.
        bbox: (x1, y1, x2, y2) in pixels, XYXY.
        points: (x, y) or (x, y, label) in pixels; label 1 foreground (default), 0 background.
        request_id: defaults to a fresh one.
        encoding: ``maskEncoding``: ``"raw"``, ``"rle"`` or ``"png"``; None sends none (any
            option makes the reply the extended one, with ``maskId``).
        multimask: ask for SAM2's three candidates.
        boxes: (x1, y1, x2, y2) boxes, XYXY pixels, for SAM2's batched box prompt.
        mask_input: a ``maskId`` of an earlier reply on the same image, to refine.
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
    return _add_options(msg, encoding, multimask, boxes, mask_input)


def _add_options(msg: dict[str, Any], encoding: str | None, multimask: bool,
                 boxes: Iterable[Sequence[float]] | None, mask_input: str | None
                 ) -> dict[str, Any]:
    """``msg`` with the issue 13 fields that were given (none: ``msg`` unchanged)."""
    if encoding is not None:
        msg["maskEncoding"] = encoding
    if multimask:
        msg["multimask"] = True
    if boxes is not None:
        msg["boxes"] = [dict(zip(("x1", "y1", "x2", "y2"), map(float, b))) for b in boxes]
    if mask_input is not None:
        msg["maskInput"] = mask_input
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
    Safe to share between threads (a lock guards the tables; encoding runs outside it).
    """

    def __init__(self, entries: int = CLIENT_MEMO_ENTRIES) -> None:
        self.entries = entries
        self._arrays: OrderedDict[tuple, PreparedImage] = OrderedDict()
        self._known: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def prepare(self, image: str | os.PathLike | bytes | np.ndarray) -> PreparedImage:
        """:func:`prepare_image`, remembering arrays by shape, dtype and SHA-256 of their bytes."""
        if not isinstance(image, np.ndarray):
            return prepare_image(image)
        key = (image.shape, image.dtype.str, hashlib.sha256(np.ascontiguousarray(image)).digest())
        with self._lock:
            prepared = self._arrays.get(key)
        if prepared is None:
            prepared = prepare_image(image)
        with self._lock:
            self._arrays[key] = prepared
            self._arrays.move_to_end(key)
            self._trim(self._arrays)
        return prepared

    def known(self, image_id: str) -> bool:
        """True if the daemon has embedded ``image_id`` as far as this client knows."""
        with self._lock:
            return image_id in self._known

    def remember(self, image_id: str | None) -> None:
        """Note that the daemon has embedded ``image_id``."""
        if image_id:
            with self._lock:
                self._known[image_id] = None
                self._known.move_to_end(image_id)
                self._trim(self._known)

    def forget(self, image_id: str) -> None:
        """Note that the daemon no longer has ``image_id``."""
        with self._lock:
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
        width, height = response["maskWidth"], response["maskHeight"]
        mask = decode_any_mask(response, width, height)
        entries = {key: tuple(MaskCandidate(float(e["score"]), decode_any_mask(e, width, height),
                                            e.get("maskId"))
                              for e in response.get(key) or ())
                   for key in ("candidates", "masks")}
    except (KeyError, ValueError, TypeError) as exc:
        raise ClientError(f"malformed segment reply: {exc}") from None
    rest = {k: v for k, v in response.items() if k not in _MASK_PAYLOADS}
    return SegmentResult(str(response["requestId"]), mask, float(response.get("score", 0.0)),
                         float(response.get("inferenceTimeMs", 0.0)), rest,
                         entries["candidates"], entries["masks"])


#: Reply keys that carry masks: decoded into :class:`SegmentResult`, not kept in ``response``.
_MASK_PAYLOADS = frozenset({"maskBase64", "maskRle", "maskPng", "candidates", "masks"})


def decode_reply(payload: bytes) -> dict[str, Any]:
    """The JSON object in one reply frame's payload.

    Raises:
        ClientError: the payload is not a UTF-8 JSON object.
    """
    try:
        return decode_message(payload)
    except ServiceError as exc:
        raise ClientError(f"bad reply from daemon: {exc.message}") from None


#: A request to send, and the reply it gets back: what the transports' drive loops carry.
Steps = Generator[dict[str, Any], dict[str, Any], Any]


def segment_steps(memo: ImageMemo, image: ImageRef | PreparedImage, *, reuse: bool = True,
                  bbox: Sequence[float] | None = None, points: Iterable[PointInput] = (),
                  request_id: str | None = None, **options: Any) -> Steps:
    """The segment exchange, as a generator: yields each request (a dict) and is sent its
    reply; returns the :class:`SegmentResult`.

    With ``reuse``, an image ``memo`` knows goes as its ``imageId`` first; an ``unknown_image``
    reply makes it forget the id and yields the full image. An :class:`ImageRef` is always sent
    by id (``unknown_image`` then raises). ``options`` are :func:`build_segment_request`'s
    issue 13 keywords (``encoding``, ``multimask``, ``boxes``, ``mask_input``). Raises what
    :func:`parse_segment_response` raises.
    """
    points = list(points)  # may be sent twice
    kw: dict[str, Any] = dict(bbox=bbox, points=points, request_id=request_id, **options)
    if isinstance(image, ImageRef):
        return parse_segment_response((yield build_segment_request(image, **kw)))
    if reuse and memo.known(image.image_id):
        reply = yield build_segment_request(image.ref, **kw)
        if reply.get("code") != "unknown_image":
            return parse_segment_response(reply)
        memo.forget(image.image_id)
    result = parse_segment_response((yield build_segment_request(image, **kw)))
    memo.remember(result.image_id)
    return result


def embed_steps(memo: ImageMemo, image: PreparedImage, request_id: str | None = None) -> Steps:
    """The embed exchange (one request); returns the :class:`ImageRef`, remembered in ``memo``.

    Raises:
        RequestFailed: an error reply.
    """
    reply = check_response((yield build_embed_request(image, request_id)))
    memo.remember(reply["imageId"])
    return ImageRef(reply["imageId"], reply["width"], reply["height"], bool(reply["cached"]))


def release_steps(memo: ImageMemo, image: ImageRef | str) -> Steps:
    """The release exchange (one request); returns True if the daemon had the embedding.

    Raises:
        RequestFailed: an error reply.
    """
    iid = image.image_id if isinstance(image, ImageRef) else image
    memo.forget(iid)
    return bool(check_response((yield {"op": "release", "imageId": iid}))["released"])


def check_server_uid(uid: int | None, socket_path: str, own_uid: int | None = None) -> None:
    """Refuse a server run by another user, before anything is sent to it.

    Args:
        uid: the server's uid (:func:`sam2_service.wire.peer.peer_uid`), None where unknown.
        socket_path: the socket connected to, for the message.
        own_uid: this process's effective uid (default ``os.geteuid()``).

    Raises:
        RequestFailed: code ``untrusted_server``: ``uid`` is neither ``own_uid`` nor root.
    """
    own = os.geteuid() if own_uid is None else own_uid
    if not peer_allowed(uid, own):
        raise RequestFailed(
            "untrusted_server",
            f"the server at {socket_path} runs as uid {uid}, neither this user (uid {own}) nor "
            "root; nothing was sent. Another user may have bound the socket first: stop that "
            "process or remove the socket and start your daemon, or use a socket in a directory "
            "only you can write (--socket or SAM2_SERVICE_SOCKET)", "")


def connect_failed(socket_path: str, exc: OSError) -> ClientError:
    """The error for a connect that failed with ``exc`` (no daemon, no permission, ...)."""
    return ClientError(f"cannot connect to {socket_path}: {exc.strerror or exc} (is the daemon "
                       "running? start it with `make run`)")


def queue_stayed_full(socket_path: str, timeout: float) -> ClientError:
    """The error for a connect that kept failing with EAGAIN (full accept queue) until timeout."""
    return ClientError(f"cannot connect to {socket_path}: its accept queue stayed full for "
                       f"{timeout} s")


def __getattr__(name: str) -> Any:
    """``Client`` and ``AsyncClient`` used to live here: keep ``core.Client`` importable."""
    if name == "Client":
        from .sync import Client
        return Client
    if name == "AsyncClient":
        from .aio import AsyncClient
        return AsyncClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
