"""The clients' exceptions: :class:`ClientError` (the daemon could not be reached, or sent a
bad frame), :class:`RequestFailed` (an error reply, or a refusal on the client with the
daemon's code) and the two an image can raise before anything is sent."""

from __future__ import annotations


class ClientError(Exception):
    """The daemon could not be reached, closed the connection, or sent a bad frame."""


class ClientTimeout(ClientError):
    """No reply came within the client's time-out (``no reply within N s``). A caller that
    retries a failed request must not retry this one: the daemon may be stopped, and a retry
    would make the caller wait twice."""


class RequestFailed(ClientError):
    """The daemon answered with an error response.

    Attributes:
        code: the wire's error code (docs/protocol.md), e.g. ``invalid_request``.
        message: the daemon's message, naming the field at fault.
        request_id: the ``requestId`` of the error response.
    """

    def __init__(self, code: str, message: str, request_id: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.request_id = code, message, request_id


class ImageTooLargeError(RequestFailed):
    """An image of more pixels than the daemon's limit, refused from its header before it is
    decoded or sent: code ``image_too_large`` (the daemon's own code for it), no request id.

    Attributes:
        width, height: the image's size in pixels.
        limit: the limit it exceeds: ``info``'s ``limits.maxImagePixels`` once the client has
            it, else :data:`~sam2_service.wire.limits.DEFAULT_MAX_IMAGE_PIXELS`.
    """

    def __init__(self, source: str, width: int, height: int, limit: int) -> None:
        super().__init__(
            "image_too_large",
            f"{source} is {width}x{height} = {width * height} pixels, more than the daemon's "
            f"limit of {limit} pixels (maxImagePixels); nothing was sent: make the image "
            "smaller, or start the daemon with a larger --max-image-pixels", "")
        self.width, self.height, self.limit = width, height, limit


class ImageUnreadable(ClientError, OSError):
    """An image that cannot be read: a file that cannot be opened, data that is not an image
    Pillow can read, or one that fails to decode. An ``OSError`` too, as Pillow's own."""
