"""Wire framing, with no I/O: bytes in, frames out (in the manner of h11).

A frame is a 4-byte **little-endian** unsigned length N followed by N bytes of payload;
the payload of every frame, both ways, is one UTF-8 JSON object (docs/protocol.md).

:class:`FrameDecoder` is fed whatever bytes arrive and hands back whole payloads. It
checks each length prefix against its cap before any of the body is buffered, so a
peer cannot make it hold more than one capped frame plus one read's worth of bytes.
"""

from __future__ import annotations

import struct
from typing import Any, Final

import orjson

from .errors import FrameTooLarge, InvalidRequest

HEADER: Final = struct.Struct("<I")
HEADER_SIZE: Final = HEADER.size  # 4
MAX_LENGTH: Final = 2**32 - 1  # what the 4-byte prefix can express

#: Where the daemon listens and the clients connect unless told otherwise (the existing
#: overlay client's path).
DEFAULT_SOCKET: Final = "/tmp/wcc-sam2.sock"


def frame_header(length: int) -> bytes:
    """The 4-byte little-endian length prefix of a ``length``-byte payload.

    Raises:
        ValueError: the length is more than 2**32 - 1 bytes.
    """
    if length > MAX_LENGTH:
        raise ValueError(f"payload of {length} bytes does not fit a 4-byte length")
    return HEADER.pack(length)


def encode_frame(payload: bytes) -> bytes:
    """Prefix ``payload`` with its 4-byte little-endian length (:func:`frame_header`).

    Raises:
        ValueError: the payload is longer than 2**32 - 1 bytes.
    """
    return frame_header(len(payload)) + payload


def encode_message(obj: dict[str, Any]) -> bytes:
    """One JSON object as a whole frame (orjson: UTF-8, compact, no NaN)."""
    return encode_frame(orjson.dumps(obj))


def encode_message_parts(obj: dict[str, Any]) -> tuple[bytes, bytes]:
    """:func:`encode_message` as ``(4-byte length prefix, payload)``, for a writer that sends
    the two one after the other: a 2.7 MB reply (a raw 1080p mask) is not copied once more
    to join them.

    Raises:
        ValueError: the payload is longer than 2**32 - 1 bytes.
    """
    payload = orjson.dumps(obj)
    return frame_header(len(payload)), payload


def decode_message(payload: bytes) -> dict[str, Any]:
    """Parse a frame's payload as one JSON object.

    Raises:
        InvalidRequest: empty payload, invalid UTF-8, invalid JSON (NaN and Infinity
            included, nesting deeper than orjson's limit of 1024), or JSON that is not
            an object.
    """
    if not payload:
        raise InvalidRequest("empty frame: the payload must be a JSON object")
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"frame is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise InvalidRequest(f"frame must hold a JSON object, not {type(obj).__name__}")
    return obj


class FrameDecoder:
    """Incremental decoder of length-prefixed frames.

    Usage: call :meth:`feed` with received bytes, then :meth:`next_frame` until it
    returns None; read more only then.

    Args:
        max_frame_bytes: the largest payload accepted, in bytes.
    """

    def __init__(self, max_frame_bytes: int) -> None:
        if max_frame_bytes <= 0:
            raise ValueError("max_frame_bytes must be positive")
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()
        self._need: int | None = None  # payload length of the frame being read

    def feed(self, data: bytes) -> None:
        """Append received bytes (any split: a frame may arrive in many pieces)."""
        self._buf += data

    def next_frame(self) -> bytes | None:
        """Return the next whole payload, or None if more bytes are needed.

        Raises:
            FrameTooLarge: the next length prefix exceeds ``max_frame_bytes``. The
                stream cannot be resynchronised after this; close the connection.
        """
        if self._need is None:
            if len(self._buf) < HEADER_SIZE:
                return None
            (length,) = HEADER.unpack_from(self._buf)
            if length > self.max_frame_bytes:
                raise FrameTooLarge(
                    f"frame of {length} bytes exceeds the limit of {self.max_frame_bytes} bytes"
                )
            del self._buf[:HEADER_SIZE]
            self._need = length
        if len(self._buf) < self._need:
            return None
        with memoryview(self._buf) as view:  # one copy (a bytearray slice would make two)
            payload = bytes(view[: self._need])
        del self._buf[: self._need]
        self._need = None
        return payload

    @property
    def buffered(self) -> int:
        """Bytes held that are not yet part of a returned frame."""
        return len(self._buf)

    @property
    def pending_length(self) -> int | None:
        """The payload length announced by the next frame's prefix once all 4 bytes of it
        have arrived (whether or not it is over the cap), else None. Does not consume."""
        if self._need is not None:
            return self._need
        if len(self._buf) < HEADER_SIZE:
            return None
        return HEADER.unpack_from(self._buf)[0]

    @property
    def in_frame(self) -> bool:
        """True while part of a frame (header or body) has arrived but not all of it."""
        return self._need is not None or bool(self._buf)
