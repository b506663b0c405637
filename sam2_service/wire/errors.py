"""Errors that cross the wire.

Every failure the daemon reports to a client is a :class:`ServiceError` carrying a
``code`` from :data:`ERROR_CODES` (the wire's ``code`` field) and a human message that
names the field and what is wrong. Only
:meth:`sam2_service.daemon.serving.dispatch.Dispatcher.respond` (with its
:meth:`~sam2_service.daemon.serving.dispatch.Dispatcher.error`, which the connection loop
also uses for frames it refuses) turns these into error responses; every other module just
raises them.
"""

from __future__ import annotations

from typing import Final

#: The documented set of error codes (docs/protocol.md, "Error codes").
ERROR_CODES: Final = frozenset(
    {
        "invalid_request",  # the frame held a JSON object, but a field is missing or wrong
        "frame_too_large",  # the length prefix exceeds the frame cap; the connection closes
        "image_decode",  # imageBase64 is not valid base64 or not a decodable PNG/JPEG
        "image_too_large",  # the image header declares more pixels than allowed
        "unknown_op",  # "op" names an operation the daemon does not know
        "unknown_image",  # imageId names no cached image embedding: resend the image
        "unknown_mask",  # maskInput names no kept mask logits (unknown, evicted, other image)
        "busy",  # max_queue requests already wait for the model; try again later
        "timeout",  # no reply within request_timeout of the request's arrival
        "shutting_down",  # the daemon is stopping; the request was accepted but not run
        "out_of_memory",  # the device ran out of memory; caches were freed, try again
        "request_too_large",  # pixels x masks would take more than max_request_bytes
        "reply_too_large",  # the reply would be larger than max_reply_bytes
        "internal",  # a bug or an unexpected failure inside the daemon
        "unknown_video_session",  # sessionId names no open video session (closed, timed out)
        "video_too_large",  # a video over --video-max-frames or --video-max-mb
        "too_many_sessions",  # --video-max-sessions video sessions are already open
        "video_busy",  # the video session is propagating; cancel it or wait for its end
    }
)


class ServiceError(Exception):
    """A failure that is reported to the client as an error response.

    Attributes:
        code: one of :data:`ERROR_CODES`.
        message: what went wrong, naming the request field when one is at fault.
        field: the request field at fault (dotted path such as ``"bbox.x1"``), or None.
    """

    code: str = "internal"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


class InvalidRequest(ServiceError):
    """A field is missing, has the wrong type, or holds a value out of range."""

    code = "invalid_request"


class FrameTooLarge(ServiceError):
    """The frame's length prefix exceeds the configured frame cap."""

    code = "frame_too_large"


class ImageDecodeError(ServiceError):
    """The image bytes are not valid base64, or not a decodable PNG or JPEG."""

    code = "image_decode"


class ImageTooLarge(ServiceError):
    """The image header declares more pixels than ``max_image_pixels``."""

    code = "image_too_large"


class UnknownOp(ServiceError):
    """The request's ``op`` is not one the daemon implements."""

    code = "unknown_op"


class UnknownImage(ServiceError):
    """``imageId`` names no cached image embedding (never sent, evicted or released)."""

    code = "unknown_image"


class UnknownMask(ServiceError):
    """``maskInput`` names no kept mask logits: never given, evicted from the LRU of
    ``--logits-cache-entries``, released with its image, or made on another image or model."""

    code = "unknown_mask"


class Busy(ServiceError):
    """``max_queue`` requests already wait for the model."""

    code = "busy"


class RequestTimeout(ServiceError):
    """The request was not answered within ``request_timeout`` of its arrival."""

    code = "timeout"


class ShuttingDown(ServiceError):
    """The daemon stopped before this accepted request reached the model."""

    code = "shutting_down"


class OutOfMemory(ServiceError):
    """The model's device ran out of memory (``torch.OutOfMemoryError``)."""

    code = "out_of_memory"


class RequestTooLarge(ServiceError):
    """The request's working memory, estimated from pixels x masks before any work, is
    above ``--max-request-mb`` (:mod:`sam2_service.daemon.inference.budget`)."""

    code = "request_too_large"


class ReplyTooLarge(ServiceError):
    """The request's reply would be larger than ``--max-reply-mb``; it is never built."""

    code = "reply_too_large"


class InternalError(ServiceError):
    """An unexpected failure inside the daemon (a bug, or the model failing)."""

    code = "internal"




class UnknownVideoSession(ServiceError):
    """``sessionId`` names no open video session: never opened, closed, timed out after
    ``--video-idle-timeout`` or its connection closed."""

    code = "unknown_video_session"


class VideoTooLarge(ServiceError):
    """A video session would hold more than ``--video-max-frames`` frames or
    ``--video-max-mb`` of frame bytes."""

    code = "video_too_large"


class TooManySessions(ServiceError):
    """``--video-max-sessions`` video sessions are already open."""

    code = "too_many_sessions"


class VideoBusy(ServiceError):
    """The video session is propagating: prompts, resets and a second propagation wait
    for its end (or a ``videoCancel``)."""

    code = "video_busy"
