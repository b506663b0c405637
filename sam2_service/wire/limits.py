"""Limits that both ends of the wire know, with no I/O.

The daemon's settings (:mod:`sam2_service.daemon.config`) take their defaults from here, and
the clients use the same values before they know the daemon's own (``info``'s ``limits``).
"""

from __future__ import annotations

from typing import Final

#: The daemon's default ``--max-image-pixels`` (``info``'s ``limits.maxImagePixels``): the
#: largest width x height it decodes. The clients refuse a larger image from its header,
#: before decoding or sending it, unless the daemon's ``info`` gave a larger limit.
DEFAULT_MAX_IMAGE_PIXELS: Final = 40_000_000
