"""Request image bytes to pixels: PNG/JPEG decoding for the inference thread.

No torch here (the fuzzer and the unit tests decode without a model). Decoding follows Pillow's
security guidance: only the PNG and JPEG decoders are allowed, the pixel count is read
from the header and checked before the pixels are decoded, and Pillow's own
``Image.MAX_IMAGE_PIXELS`` guard is left in place.
"""

from __future__ import annotations

import io
from typing import Final

import numpy as np
from PIL import Image, UnidentifiedImageError

from ...wire.codecs import ALLOWED_FORMATS
from ...wire.errors import ImageDecodeError, ImageTooLarge
from ..config import PILLOW_BOMB_PIXELS

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
                    f"limit of {max_pixels} pixels: send a smaller image, or start the daemon "
                    f"with a larger --max-image-pixels (at most {PILLOW_BOMB_PIXELS})",
                    field=field)
            im.load()
            if im.mode in _SIXTEEN_BIT_GREY:
                return _grey16_to_rgb(np.asarray(im))
            rgb = im if im.mode == "RGB" else im.convert("RGB")
            return np.array(rgb)  # a writable copy: torchvision's ToTensor warns on read-only arrays
    except Image.DecompressionBombError as exc:  # Pillow's own guard, at 2x its MAX_IMAGE_PIXELS
        raise ImageTooLarge(f"{field}: {exc} (the daemon's own limit is {max_pixels} pixels): "
                            "send a smaller image", field=field) from None
    except UnidentifiedImageError:
        raise ImageDecodeError(f"{field} is not a PNG or JPEG image", field=field) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"{field} could not be decoded: {exc}", field=field) from None


