"""Field validators shared by the request parsers (:mod:`.schema`, :mod:`.auto`).

Each reads one field of a decoded JSON object (a ``dict``), checks its type and range and
returns it as Python values, or raises :class:`~sam2_service.wire.errors.InvalidRequest`
whose ``field`` names it and whose message says what was expected and what came. No I/O.
"""

from __future__ import annotations

import math
from typing import Any

from .errors import InvalidRequest

#: The characters of an ``imageId`` (lowercase hex).
HEX = frozenset("0123456789abcdef")


def type_name(value: Any) -> str:
    """The JSON-ish name of ``value``'s type for error messages (``null`` for None)."""
    return "null" if value is None else type(value).__name__


def number(obj: dict[str, Any], key: str, path: str) -> float:
    """``obj[key]`` as a finite float (an int or a float, not a bool).

    Args:
        path: the field's name in error messages (``bbox.x1``, ``points[3].y``).

    Raises:
        InvalidRequest: not a number, or not finite (field ``path``).
    """
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest(f"{path} must be a number, got {type_name(value)}", field=path)
    try:
        result = float(value)
    except OverflowError:  # an int beyond float range (stdlib json can produce one)
        result = math.inf
    if not math.isfinite(result):
        raise InvalidRequest(f"{path} must be a finite number, got {str(value)[:24]}", field=path)
    return result


def positive_int(obj: dict[str, Any], key: str) -> int:
    """``obj[key]`` as an int >= 1 (pixels, for ``width`` and ``height``).

    Raises:
        InvalidRequest: missing, not an integer (a bool is not), or <= 0 (field ``key``).
    """
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{key} must be an integer, got {type_name(value)}", field=key)
    if value <= 0:
        raise InvalidRequest(f"{key} must be positive, got {value}", field=key)
    return value


def image_base64(obj: dict[str, Any]) -> str:
    """``obj["imageBase64"]``: a non-empty string (base64 PNG/JPEG or a data URL), still
    encoded (:func:`sam2_service.wire.codecs.decode_base64` decodes it).

    Raises:
        InvalidRequest: missing, not a string, or empty (field ``imageBase64``).
    """
    image = obj.get("imageBase64")
    if not isinstance(image, str) or not image:
        raise InvalidRequest("imageBase64 must be a non-empty string (base64 PNG/JPEG or data URL), "
                             f"got {type_name(image) if not isinstance(image, str) else 'empty string'}",
                             field="imageBase64")
    return image


def image_id(obj: dict[str, Any]) -> str:
    """``obj["imageId"]``: 64 lowercase hex characters (SHA-256 of an image file, as in an
    earlier reply).

    Raises:
        InvalidRequest: missing or not of that form (field ``imageId``).
    """
    value = obj.get("imageId")
    if not isinstance(value, str) or len(value) != 64 or not HEX.issuperset(value):
        shown = repr(value[:80]) if isinstance(value, str) else type_name(value)
        raise InvalidRequest("imageId must be 64 lowercase hex characters (the imageId of an "
                             f"earlier reply: SHA-256 of the image file), got {shown}",
                             field="imageId")
    return value


def rounded_timings(timings: dict[str, float]) -> dict[str, float]:
    """A reply's ``timingsMs``: each stage's milliseconds rounded to 3 decimals, in the
    order given."""
    return {k: round(v, 3) for k, v in timings.items()}
