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
import operator
import re
import struct
from typing import Final

import numpy as np
import pybase64
from PIL import Image, UnidentifiedImageError

from .errors import ImageDecodeError, ImageTooLarge

ALLOWED_FORMATS: Final = ("PNG", "JPEG")
#: What else Pillow's PNG and JPEG header readers raise on hostile bytes (besides OSError).
_HEADER_ERRORS: Final = (ValueError, EOFError, SyntaxError, struct.error, IndexError, KeyError,
                         TypeError, ZeroDivisionError)


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


def _bits(mask: np.ndarray) -> np.ndarray:
    """An HxW mask as bool (non-zero = foreground); a bool mask as it is, not copied.

    Raises:
        ValueError: ``mask`` is not 2-D.
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be HxW, got shape {mask.shape}")
    return mask if mask.dtype == np.bool_ else mask != 0


def _mask_bytes(mask: np.ndarray) -> np.ndarray:
    """An HxW mask as a C-contiguous uint8 array, 0 background and 255 foreground."""
    return np.ascontiguousarray(_bits(mask).view(np.uint8) * np.uint8(255))


def encode_mask(mask: np.ndarray) -> str:
    """Base64 of a boolean HxW mask as H*W bytes, 0 background and 255 foreground,
    row-major, top row first (protocol v1 ``maskBase64``)."""
    return pybase64.b64encode_as_string(_mask_bytes(mask))


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
        ImageDecodeError: not a PNG or JPEG image, or one whose header Pillow cannot read
            (anything it raises: e.g. ``ValueError`` for a truncated IHDR chunk, or for a
            zTXt/iCCP chunk over ``PngImagePlugin.MAX_TEXT_CHUNK`` decompressed).
        ImageTooLarge: the header declares more than twice Pillow's ``MAX_IMAGE_PIXELS``.
    """
    try:
        with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as im:
            return im.size
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(str(exc)) from None
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageDecodeError(f"not a PNG or JPEG image: {exc}") from None
    except _HEADER_ERRORS as exc:
        raise ImageDecodeError(f"unreadable PNG or JPEG header: {type(exc).__name__}: "
                               f"{exc}") from None


def compute_image_id(data: bytes) -> str:
    """The ``imageId`` of an image file: hex SHA-256 of its bytes (64 lowercase characters).

    SHA-256 is what a client can compute itself with any standard library, and it is fast
    where it matters (SHA-NI on x86, the ARMv8 crypto extensions on Apple silicon): about
    1.3 ms for a 2 MB 1080p PNG on the 2-core development machine.
    """
    return hashlib.sha256(data).hexdigest()


# -- compact mask encodings (docs/protocol.md, "Mask encodings") -----------------------------------

#: ``maskEncoding`` value -> the reply key that carries a mask so encoded.
MASK_ENCODINGS: Final = {"raw": "maskBase64", "rle": "maskRle", "png": "maskPng"}


def encode_rle(mask: np.ndarray) -> dict[str, list[int]]:
    """COCO's uncompressed RLE of an HxW mask (non-zero = foreground).

    Returns ``{"size": [H, W], "counts": [...]}``: run lengths over the mask read in
    column-major (Fortran) order, alternating background and foreground and starting with
    background (a mask whose first pixel is foreground starts with a 0 run). This is what
    ``sam2.utils.amg.mask_to_rle_pytorch`` produces and ``pycocotools.mask.frPyObjects``
    reads; computed here with numpy (the run boundaries are where the flattened mask changes).

    Raises:
        ValueError: ``mask`` is not 2-D.
    """
    bits = _bits(mask)
    h, w = bits.shape
    flat = _transpose(bits).ravel()  # column-major
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], changes, [flat.size]))
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts.insert(0, 0)
    return {"size": [h, w], "counts": counts}


#: Rows copied at a time by :func:`_transpose`.
_TRANSPOSE_ROWS = 64


def _transpose(a: np.ndarray) -> np.ndarray:
    """``a.T`` as a new C-contiguous array, copied ``_TRANSPOSE_ROWS`` rows at a time. numpy's
    own strided copy of a transposed 2-D byte array walks the source a column at a time,
    touching a new cache line per byte; in row blocks the reads stay in cache: 1080x1920 bool,
    1.13-1.45 ms -> 0.65 ms (2-core development machine)."""
    h, w = a.shape
    out = np.empty((w, h), dtype=a.dtype)
    for i in range(0, h, _TRANSPOSE_ROWS):
        out[:, i:i + _TRANSPOSE_ROWS] = a[i:i + _TRANSPOSE_ROWS].T
    return out


def decode_rle(rle: object, width: int, height: int) -> np.ndarray:
    """Inverse of :func:`encode_rle`: an (height, width) uint8 array of 0/255.

    Raises:
        ValueError: ``rle`` is not ``{"size": [height, width], "counts": [ints >= 0]}`` or its
            counts do not sum to height*width.
    """
    if not isinstance(rle, dict) or rle.get("size") != [height, width]:
        raise ValueError(f"maskRle must be an object with size [{height}, {width}]")
    counts = rle.get("counts")
    # countOf(map(type, ...), int) runs in C: a 110,000-run mask checked in 1.2 ms (a set of
    # the types: 1.6 ms; a generator of isinstance tests: ~6 ms at 66,000 runs). bool is its
    # own type, so true/false are refused too.
    if not isinstance(counts, list) or operator.countOf(map(type, counts), int) != len(counts):
        raise ValueError("maskRle.counts must be a list of non-negative integers")
    try:  # the types are known: fromiter skips asarray's dtype discovery (1.5 -> 1.3 ms)
        runs = np.fromiter(counts, dtype=np.int64, count=len(counts))
    except OverflowError:
        raise ValueError("maskRle.counts holds an integer too large") from None
    if runs.size and runs.min() < 0:
        raise ValueError("maskRle.counts must be a list of non-negative integers")
    if int(runs.sum()) != width * height:
        raise ValueError(f"maskRle.counts sum to {int(runs.sum())}, expected {width}x{height}")
    values = np.zeros(len(runs), dtype=np.uint8)
    values[1::2] = 255
    return _transpose(np.repeat(values, runs).reshape(width, height))


def encode_mask_png(mask: np.ndarray) -> str:
    """Base64 of an 8-bit greyscale PNG of an HxW mask, 0 background and 255 foreground
    (protocol ``maskPng``; zlib level 1, as :func:`encode_png`)."""
    return pybase64.b64encode_as_string(encode_png(_mask_bytes(mask)))


def decode_mask_png(text: str, width: int, height: int) -> np.ndarray:
    """Inverse of :func:`encode_mask_png`: an (height, width) uint8 array of 0/255.

    Raises:
        ValueError: not base64 of a greyscale PNG of width x height holding only 0 and 255.
    """
    try:
        with Image.open(io.BytesIO(pybase64.b64decode(text, validate=True)),
                        formats=("PNG",)) as im:
            if im.mode != "L" or im.size != (width, height):
                raise ValueError(f"maskPng is {im.mode} {im.size[0]}x{im.size[1]}, expected "
                                 f"L {width}x{height}")
            mask = np.asarray(im, dtype=np.uint8)
    except (binascii.Error, UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"maskPng is not a base64 PNG: {exc}") from None
    if np.any((mask != 0) & (mask != 255)):
        raise ValueError("maskPng holds values other than 0 and 255")
    return mask


def encode_mask_as(mask: np.ndarray, encoding: str) -> tuple[str, object]:
    """``(reply key, value)`` for an HxW mask in ``encoding`` (a key of :data:`MASK_ENCODINGS`):
    ``("maskBase64", str)``, ``("maskRle", dict)`` or ``("maskPng", str)``."""
    if encoding == "rle":
        return "maskRle", encode_rle(mask)
    if encoding == "png":
        return "maskPng", encode_mask_png(mask)
    if encoding == "raw":
        return "maskBase64", encode_mask(mask)
    raise ValueError(f"unknown mask encoding {encoding!r}")


def decode_any_mask(obj: dict, width: int, height: int) -> np.ndarray:
    """The mask an object carries (a segment reply or one of its ``candidates``/``masks``
    entries), whichever encoding it is in: ``maskRle``, then a non-empty ``maskPng``, then
    ``maskBase64``. An (height, width) uint8 array of 0/255.

    Raises:
        ValueError: the object carries no mask, or a malformed one.
    """
    if "maskRle" in obj:
        return decode_rle(obj["maskRle"], width, height)
    if "maskPng" in obj:
        return decode_mask_png(obj["maskPng"], width, height)
    if "maskBase64" in obj:
        return decode_mask(obj["maskBase64"], width, height)
    raise ValueError("no maskBase64, maskRle or maskPng")
