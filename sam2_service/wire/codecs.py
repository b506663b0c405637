"""Bytes of images and masks as they cross the wire: base64 and data URLs, the image file's
``imageId``, PNG/JPEG headers, and mask encodings. No I/O, no torch; both sides use it.

Images: only PNG and JPEG are accepted on the wire (:data:`ALLOWED_FORMATS`), and their size is
read from the header (:func:`image_size`) before anything is decoded. Masks: protocol v1's
``maskBase64`` is the mask as H*W bytes, 0 background and 255 foreground, row-major
(:func:`encode_mask` / :func:`decode_mask`).
"""

from __future__ import annotations

import binascii
import hashlib
import io
import re
from typing import Final

import numpy as np
import pybase64
from PIL import Image, UnidentifiedImageError

from .errors import ImageDecodeError, ImageTooLarge

ALLOWED_FORMATS: Final = ("PNG", "JPEG")


_DATA_URL = re.compile(r"^data:image/[A-Za-z0-9.+-]+;base64,")


def decode_base64(text: str, field: str = "imageBase64") -> bytes:
    """Decode standard base64 (RFC 4648, padded, no line breaks), or a
    ``data:image/<type>;base64,<data>`` URL, to raw bytes.

    Raises:
        ImageDecodeError: the text is not valid base64 (the message names ``field``).
    """
    match = _DATA_URL.match(text)
    payload = text[match.end():] if match else text
    if not match and text.startswith("data:"):
        raise ImageDecodeError(f"{field} is a data URL but not data:image/<type>;base64,...",
                               field=field)
    try:
        return pybase64.b64decode(payload, validate=True)  # SIMD; same rules as base64's
    except (binascii.Error, ValueError) as exc:
        raise ImageDecodeError(f"{field} is not valid base64: {exc}", field=field) from None


def encode_mask(mask: np.ndarray) -> str:
    """Base64 of a boolean HxW mask as H*W bytes, 0 background and 255 foreground,
    row-major, top row first (protocol v1 ``maskBase64``)."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be HxW, got shape {mask.shape}")
    return pybase64.b64encode_as_string(
        np.ascontiguousarray((mask != 0).view(np.uint8) * np.uint8(255)))


def decode_mask(text: str, width: int, height: int) -> np.ndarray:
    """Inverse of :func:`encode_mask`: an (height, width) uint8 array of 0/255.

    Raises:
        ValueError: the decoded length is not width*height.
    """
    raw = pybase64.b64decode(text, validate=True)
    if len(raw) != width * height:
        raise ValueError(f"mask has {len(raw)} bytes, expected {width}x{height} = {width * height}")
    return np.frombuffer(raw, dtype=np.uint8).reshape(height, width)


def encode_png(image: np.ndarray, compress_level: int = 1) -> bytes:
    """Encode an HxW (greyscale) or HxWx3 (RGB) uint8 array as PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG",
                                                      compress_level=compress_level)
    return buf.getvalue()


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) of PNG/JPEG bytes, read from the header alone.

    Raises:
        ImageDecodeError: not a PNG or JPEG image.
        ImageTooLarge: the header declares more than twice Pillow's ``MAX_IMAGE_PIXELS``.
    """
    try:
        with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as im:
            return im.size
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(str(exc)) from None
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageDecodeError(f"not a PNG or JPEG image: {exc}") from None


def compute_image_id(data: bytes) -> str:
    """The ``imageId`` of an image file: hex SHA-256 of its bytes (64 lowercase characters).

    SHA-256 is what a client can compute itself with any standard library, and it is fast
    where it matters (SHA-NI on x86, the ARMv8 crypto extensions on Apple silicon): about
    1.3 ms for a 2 MB 1080p PNG on the 2-core development machine.
    """
    return hashlib.sha256(data).hexdigest()
