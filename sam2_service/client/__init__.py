"""Clients of the daemon, for the CLI and the front-ends (browser gateway, napari plugin).

Requests are built and replies read without I/O in :mod:`.core` (and :mod:`.auto`); images
are read, held against the daemon's pixel limit from their header and encoded in
:mod:`.images`; the exceptions live in :mod:`.errors`. Each operation (ping, info, segment,
embed, auto, release) is written once in :mod:`.ops` as a
generator of "send this request / run this work" steps, carried out by :class:`Client`
(blocking, :mod:`.sync`) or :class:`AsyncClient` (asyncio, :mod:`.aio`) over the socket
(:mod:`.connection`). :mod:`.overlay` draws a mask and its prompts on the image. Imports
:mod:`sam2_service.wire` only: no torch, no daemon code, so a front-end's environment needs
neither.
"""

from .aio import AsyncClient
from .auto import AutoResult, build_auto_request, parse_auto_response
from .core import (
    DEFAULT_TIMEOUT,
    ClientError,
    ImageInput,
    ImageMemo,
    ImageRef,
    ImageTooLargeError,
    ImageUnreadable,
    MaskCandidate,
    PointInput,
    PreparedImage,
    RequestFailed,
    SegmentOptions,
    SegmentResult,
    build_embed_request,
    build_segment_request,
    check_response,
    default_socket_path,
    encode_image_input,
    parse_segment_response,
    prepare_image,
)
from .errors import ClientTimeout
from .sync import Client
from .video import AsyncVideoSession, VideoSession

__all__ = ["AsyncVideoSession", "VideoSession",
           "AsyncClient", "AutoResult", "build_auto_request", "parse_auto_response",
           "Client", "ClientError", "ClientTimeout", "DEFAULT_TIMEOUT", "ImageInput", "ImageMemo", "ImageRef",
           "ImageTooLargeError", "ImageUnreadable",
           "MaskCandidate", "PointInput", "PreparedImage", "RequestFailed", "SegmentOptions",
           "SegmentResult", "build_embed_request", "build_segment_request", "check_response",
           "default_socket_path", "encode_image_input", "parse_segment_response", "prepare_image"]
