"""Image and mask bytes: base64/data-URL decoding, PNG/JPEG decoding, mask encoding.

No torch here: the client and front-ends use this module too. Decoding follows Pillow's
security guidance: only the PNG and JPEG decoders are allowed, the pixel count is read
from the header and checked before the pixels are decoded, and Pillow's own
``Image.MAX_IMAGE_PIXELS`` guard is left in place.
"""

from __future__ import annotations

import binascii
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


#: Pillow modes of a 16-bit greyscale PNG ("I" in older Pillow): its convert("RGB") clips
#: them at 255 instead of scaling, which turns most such images white.
_SIXTEEN_BIT_GREY: Final = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


def _grey16_to_rgb(grey: np.ndarray) -> np.ndarray:
    """HxW 16-bit greyscale (any integer dtype) to HxWx3 uint8: the high byte of each sample."""
    high = (np.clip(grey.astype(np.int64), 0, 0xFFFF) >> 8).astype(np.uint8)
    return np.repeat(high[:, :, None], 3, axis=2)


def decode_image(data: bytes, max_pixels: int, field: str = "imageBase64") -> np.ndarray:
    """Decode PNG or JPEG bytes to an RGB image.

    Args:
        data: the encoded file's bytes.
        max_pixels: the largest width*height decoded; checked from the header first.

    Returns:
        HxWx3 uint8 array, RGB, row 0 at the top. Alpha is dropped, greyscale and palette
        images are expanded to RGB (16-bit greyscale keeps each sample's high byte). EXIF
        orientation is not applied: coordinates refer to the stored pixel grid.

    Raises:
        ImageTooLarge: the header declares more than ``max_pixels`` pixels.
        ImageDecodeError: not PNG/JPEG, truncated or corrupt.
    """
    try:
        with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as im:
            width, height = im.size
            if width * height > max_pixels:
                raise ImageTooLarge(
                    f"{field}: image of {width}x{height} = {width * height} pixels exceeds the "
                    f"limit of {max_pixels} pixels", field=field)
            im.load()
            if im.mode in _SIXTEEN_BIT_GREY:
                return _grey16_to_rgb(np.asarray(im))
            rgb = im if im.mode == "RGB" else im.convert("RGB")
            return np.array(rgb)  # a writable copy: torchvision's ToTensor warns on read-only arrays
    except Image.DecompressionBombError as exc:  # Pillow's own guard, at 2x its MAX_IMAGE_PIXELS
        raise ImageTooLarge(f"{field}: {exc} (the daemon's own limit is {max_pixels} pixels)",
                            field=field) from None
    except UnidentifiedImageError:
        raise ImageDecodeError(f"{field} is not a PNG or JPEG image", field=field) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"{field} could not be decoded: {exc}", field=field) from None


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
