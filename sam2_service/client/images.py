"""Images on the client, with no I/O but reading the image file: the size read from the
header and held against the daemon's pixel limit before anything is decoded, PNG and JPEG
sent as they are, other formats Pillow reads (and numpy arrays) encoded as PNG, and the
``imageId`` the daemon will give the bytes."""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass
from typing import IO, Callable, TypeVar

import numpy as np
from PIL import Image

from ..wire.codecs import ALLOWED_FORMATS, compute_image_id, encode_png
from ..wire.limits import DEFAULT_MAX_IMAGE_PIXELS
from .errors import ImageTooLargeError, ImageUnreadable


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


def check_pixels(source: str, width: int, height: int,
                 limit: int = DEFAULT_MAX_IMAGE_PIXELS) -> None:
    """Raise :class:`ImageTooLargeError` if ``width`` x ``height`` is more than ``limit``."""
    if width * height > limit:
        raise ImageTooLargeError(source, width, height, limit)


def open_image_header(fp: IO[bytes], source: str) -> tuple[Image.Image, str]:
    """Open the image in ``fp`` as ``Image.open`` does, reading its header alone, but without
    Pillow's decompression-bomb check, which warns (or raises) from the size alone: the
    clients hold the size against the daemon's limit themselves, before any decoding.

    Returns:
        The lazily opened image (``.size`` known, nothing decoded) and the Pillow plugin that
        read it (``"PNG"``, ``"JPEG"``, ``"TIFF"``...).

    Raises:
        ImageUnreadable: not an image Pillow can read (``source`` names it).
    """
    prefix = fp.read(16)
    for load_plugins in (Image.preinit, Image.init):  # the common formats first, as Image.open
        load_plugins()
        for name in list(Image.ID):
            factory, accept = Image.OPEN[name]
            try:  # a prefix too short for a plugin's check raises, as a header not its own
                verdict = accept(prefix) if accept else True
                if not verdict or isinstance(verdict, str):
                    continue
                fp.seek(0)
                return factory(fp, ""), name
            except (SyntaxError, IndexError, TypeError, struct.error):
                continue  # not this format after all, as Image.open does
            except (OSError, ValueError, EOFError) as exc:
                raise ImageUnreadable(f"{source} is a {name} image that cannot be read: "
                                      f"{exc}") from None
    raise ImageUnreadable(f"{source} is not an image Pillow can read")


_T = TypeVar("_T")


def _with_image_file(image: str | os.PathLike | bytes,
                     read: Callable[[IO[bytes], str, "bytes | None"], _T]) -> _T:
    """``read(fp, source, data)`` on the image's bytes: a path opened (``data`` None) or
    bytes in memory; ``source`` names it in messages."""
    if isinstance(image, bytes):
        return read(io.BytesIO(image), "the image bytes", image)
    try:
        fp = open(image, "rb")
    except OSError as exc:
        raise ImageUnreadable(f"cannot read {os.fspath(image)}: {exc.strerror or exc}") from None
    with fp:
        return read(fp, os.fspath(image), None)


def image_dimensions(image: str | os.PathLike | bytes | np.ndarray) -> tuple[int, int]:
    """(width, height) of ``image`` from its header alone (an array from its shape).

    Raises:
        ImageUnreadable: the file cannot be read, or is not an image Pillow can read.
    """
    if isinstance(image, np.ndarray):
        return (image.shape[1], image.shape[0]) if image.ndim >= 2 else (0, 0)

    def size(fp: IO[bytes], source: str, _data: bytes | None) -> tuple[int, int]:
        im, _ = open_image_header(fp, source)
        with im:
            return im.size

    return _with_image_file(image, size)


def read_rgb(path: str | os.PathLike) -> Image.Image:
    """The image file at ``path`` decoded as RGB (stored pixel grid, no EXIF rotation, as the
    daemon decodes it), without Pillow's decompression-bomb check: the daemon's own limit
    was held against the header when the image was sent.

    Raises:
        ImageUnreadable: the file cannot be read, is not an image Pillow can read, or does
            not decode.
    """
    def decode(fp: IO[bytes], source: str, _data: bytes | None) -> Image.Image:
        im, plugin = open_image_header(fp, source)
        with im:
            try:
                return im.convert("RGB")
            except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
                raise ImageUnreadable(f"{source} ({plugin}) could not be decoded: "
                                      f"{exc}") from None

    return _with_image_file(path, decode)


def _encode_file(fp: IO[bytes], source: str, data: bytes | None,
                 max_pixels: int) -> tuple[bytes, int, int]:
    im, plugin = open_image_header(fp, source)
    with im:
        width, height = im.size
        check_pixels(source, width, height, max_pixels)
        if plugin in ALLOWED_FORMATS:
            if data is None:
                fp.seek(0)
                data = fp.read()
            return data, width, height
        try:
            rgb = np.asarray(im.convert("RGB"))
        except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
            raise ImageUnreadable(f"{source} ({plugin}) could not be decoded: {exc}") from None
    return encode_png(rgb), rgb.shape[1], rgb.shape[0]


def encode_image_input(image: str | os.PathLike | bytes | np.ndarray,
                       max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> tuple[bytes, int, int]:
    """Bytes to send for ``image`` and its (width, height).

    PNG/JPEG files and bytes are sent as they are; other formats Pillow reads (TIFF,
    BMP, ...) and numpy arrays (HxW or HxWx3 uint8, RGB) are encoded as PNG. The size is
    read from the header and held against ``max_pixels`` before anything is decoded.

    Raises:
        ImageTooLargeError: more than ``max_pixels`` pixels.
        ImageUnreadable: the file cannot be read, is not an image Pillow can read, or does
            not decode.
        ValueError: an array that is not HxW or HxWx3 uint8.
    """
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise ValueError(f"image array must be HxW or HxWx3 uint8, got {image.shape} {image.dtype}")
        check_pixels("the image array", image.shape[1], image.shape[0], max_pixels)
        return encode_png(image), image.shape[1], image.shape[0]
    return _with_image_file(image, lambda fp, source, data: _encode_file(fp, source, data,
                                                                        max_pixels))


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


def prepare_image(image: str | os.PathLike | bytes | np.ndarray,
                  max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> PreparedImage:
    """:func:`encode_image_input` plus the ``imageId`` the daemon will give those bytes."""
    data, width, height = encode_image_input(image, max_pixels)
    return PreparedImage(data, width, height, compute_image_id(data))
