"""A reply that is several frames: what a handler returns instead of one reply object.

The connection (:mod:`sam2_service.daemon.serving.connection`) writes each object of
:attr:`ReplyStream.replies` as its own frame, in order, while it watches the socket: a peer
that hangs up cancels the iterator (its ``finally`` blocks run), and the connection's next
request is read only after the last reply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, AsyncIterator


@dataclass
class ReplyStream:
    """``replies``: an async iterator of reply objects; the last one ends the request."""

    replies: AsyncIterator[dict[str, Any]]
