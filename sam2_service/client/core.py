"""The clients' I/O-free core: the values they take and give back, requests built (their
coordinates checked to be finite), replies read and checked, and the server's uid judged;
images are read and held against the daemon's pixel limit in :mod:`.images` (its names are
re-exported here), the exceptions in :mod:`.errors`. :mod:`.ops` writes each operation once
on top of these; the transports (:mod:`.sync`'s :class:`Client`, :mod:`.aio`'s :class:`AsyncClient`)
only carry its requests.

Front-ends (CLI, WebSocket gateway, napari plugin) use these; nothing here imports torch or
touches a socket. Masks come back as numpy ``uint8`` arrays of shape (H, W), 0 background and
255 foreground.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence, Union

import numpy as np
import pybase64

from ..wire.codecs import decode_any_mask
from ..wire.errors import ServiceError
from ..wire.frames import DEFAULT_SOCKET, decode_message
from ..wire.limits import DEFAULT_MAX_IMAGE_PIXELS
from ..wire.peer import peer_allowed
from .errors import ClientError, RequestFailed
from .errors import ImageTooLargeError as ImageTooLargeError
from .errors import ImageUnreadable as ImageUnreadable
from .images import ImageRef, PreparedImage, check_pixels, prepare_image
from .images import encode_image_input as encode_image_input
from .images import image_dimensions as image_dimensions

#: Seconds the clients wait for connecting and for each reply (the CLI's ``--timeout`` default).
#: Generous: a cold request on a laptop CPU takes seconds.
DEFAULT_TIMEOUT = 300.0

#: Images remembered per client: which imageIds the daemon has embedded, and the PNG
#: encoding of recently sent arrays (so a resent array is hashed, not re-encoded).
CLIENT_MEMO_ENTRIES = 64


ImageInput = Union[str, os.PathLike, bytes, np.ndarray, ImageRef]
PointInput = Union[Sequence[float], "tuple[float, float, int]"]


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



def new_request_id() -> str:
    """A fresh ``requestId`` (``cli-`` and 12 hex digits)."""
    return f"cli-{os.urandom(6).hex()}"


_XYXY = ("x1", "y1", "x2", "y2")


def _xyxy(box: Sequence[float]) -> dict[str, float]:
    return dict(zip(_XYXY, map(float, box)))


def check_finite(name: str, values: Sequence[Any], keys: Sequence[str]) -> None:
    """Each of ``values`` (named ``name.key``) is a finite number.

    Raises:
        ValueError: one is not a number, or is NaN or infinite (JSON has no such number: the
            request would carry ``null``), naming it and the value given.
    """
    for key, value in zip(keys, values):
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name}.{key} must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ValueError(f"{name}.{key} must be a finite number, got {number!r}")


def check_timeout(value: Any) -> float:
    """``value`` as seconds to wait: a finite number > 0.

    Raises:
        ValueError: anything else (0 would make the socket non-blocking, a negative or
            infinite value is refused by it).
    """
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"timeout must be a finite number of seconds > 0, got {value!r}")
    return seconds


@dataclass(frozen=True)
class SegmentOptions:
    """The prompt and options of a segment request: the keywords of
    :func:`build_segment_request` and of the clients' ``segment``, listed here once.

    Attributes:
        bbox: (x1, y1, x2, y2) in pixels, XYXY; may reach outside the image.
        points: (x, y) or (x, y, label) in pixels; label 1 foreground (default), 0
            background. Kept as a tuple (a request may be sent twice).
        encoding: ``maskEncoding``: ``"raw"``, ``"rle"`` or ``"png"``; None sends none.
        multimask: ask for SAM2's three candidates.
        boxes: (x1, y1, x2, y2) boxes, XYXY pixels, for SAM2's batched box prompt (a tuple).
        mask_input: a ``maskId`` of an earlier reply on the same image, to refine.

    ``encoding``, ``multimask``, ``boxes`` and ``mask_input`` are the protocol additions
    (docs/protocol.md, "Protocol additions"): any of them makes the reply the extended one,
    with ``maskId``. Unknown keywords raise ``TypeError``; a coordinate or label that is not
    a finite number (NaN, infinity) raises ``ValueError`` naming it.
    """

    bbox: Sequence[float] | None = None
    points: Sequence[PointInput] = ()
    encoding: str | None = None
    multimask: bool = False
    boxes: Sequence[Sequence[float]] | None = None
    mask_input: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "points", tuple(self.points))
        if self.boxes is not None:
            object.__setattr__(self, "boxes", tuple(self.boxes))
        if self.bbox is not None:
            check_finite("bbox", self.bbox, _XYXY)
        for i, point in enumerate(self.points):
            check_finite(f"points[{i}]", point, ("x", "y", "label"))
        for i, box in enumerate(self.boxes or ()):
            check_finite(f"boxes[{i}]", box, _XYXY)

    def fields(self) -> dict[str, Any]:
        """The request fields the options give (``bbox``, ``points``, ``maskEncoding``,
        ``multimask``, ``boxes``, ``maskInput``), only those that were set."""
        msg: dict[str, Any] = {}
        if self.bbox is not None:
            msg["bbox"] = _xyxy(self.bbox)
        if self.points:
            msg["points"] = [{"x": float(p[0]), "y": float(p[1]),
                              "label": int(p[2]) if len(p) > 2 else 1} for p in self.points]
        if self.encoding is not None:
            msg["maskEncoding"] = self.encoding
        if self.multimask:
            msg["multimask"] = True
        if self.boxes is not None:
            msg["boxes"] = [_xyxy(b) for b in self.boxes]
        if self.mask_input is not None:
            msg["maskInput"] = self.mask_input
        return msg

    def request(self, image: ImageInput | PreparedImage,
                request_id: str | None = None) -> dict[str, Any]:
        """The protocol v1 segment request for ``image`` with these options (see
        :func:`build_segment_request`)."""
        msg: dict[str, Any] = {"requestId": request_id or new_request_id()}
        if isinstance(image, ImageRef):
            msg.update(width=image.width, height=image.height, imageId=image.image_id)
        else:
            prepared = image if isinstance(image, PreparedImage) else prepare_image(image)
            msg.update(width=prepared.width, height=prepared.height,
                       imageBase64=pybase64.b64encode_as_string(prepared.data))
        msg.update(self.fields())
        return msg


def build_segment_request(image: ImageInput | PreparedImage, *, request_id: str | None = None,
                          **options: Any) -> dict[str, Any]:
    """A protocol v1 segment request, with the protocol additions' fields when asked for.

    Args:
        image: see :func:`encode_image_input`; an :class:`ImageRef` is sent as ``imageId``,
            a :class:`PreparedImage` as its bytes.
        request_id: defaults to a fresh one.
        options: :class:`SegmentOptions`' keywords: ``bbox`` (XYXY pixels), ``points``
            ((x, y[, label]) pixels), ``encoding``, ``multimask``, ``boxes``, ``mask_input``.

    Raises:
        TypeError: an unknown keyword.
        ValueError: an image array that is not HxW or HxWx3 uint8.
    """
    return SegmentOptions(**options).request(image, request_id)


def build_embed_request(image: PreparedImage, request_id: str | None = None) -> dict[str, Any]:
    """A protocol v1 ``embed`` request for a prepared image."""
    return {"op": "embed", "requestId": request_id or new_request_id(),
            "width": image.width, "height": image.height,
            "imageBase64": pybase64.b64encode_as_string(image.data)}


class ImageMemo:
    """What one client remembers between requests, so that an image it sends again goes
    as its ``imageId`` (about 100 bytes) instead of megabytes of base64.

    ``prepare`` keeps the PNG encoding of recent numpy arrays, keyed by their content
    hash; ``known`` holds imageIds the daemon has embedded. Both are LRU, at most
    ``entries`` long. The daemon may still have evicted an id: the clients then resend.
    Safe to share between threads (a lock guards the tables; encoding runs outside it).

    ``max_image_pixels`` is the daemon's pixel limit once an ``info`` reply gave it (else
    None); :meth:`prepare` refuses larger images (:attr:`pixel_limit`).
    """

    def __init__(self, entries: int = CLIENT_MEMO_ENTRIES) -> None:
        self.entries = entries
        self.max_image_pixels: int | None = None
        self._arrays: OrderedDict[tuple, PreparedImage] = OrderedDict()
        self._known: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def pixel_limit(self) -> int:
        """The daemon's ``maxImagePixels`` if known, else its default."""
        return self.max_image_pixels or DEFAULT_MAX_IMAGE_PIXELS

    def prepare(self, image: str | os.PathLike | bytes | np.ndarray) -> PreparedImage:
        """:func:`prepare_image` with :attr:`pixel_limit`, remembering arrays by shape, dtype
        and SHA-256 of their bytes."""
        if not isinstance(image, np.ndarray):
            return prepare_image(image, self.pixel_limit)
        if image.ndim in (2, 3):
            check_pixels("the image array", image.shape[1], image.shape[0], self.pixel_limit)
        key = (image.shape, image.dtype.str, hashlib.sha256(np.ascontiguousarray(image)).digest())
        with self._lock:
            prepared = self._arrays.get(key)
        if prepared is None:
            prepared = prepare_image(image, self.pixel_limit)
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
