"""Open video sessions: their state, limits, owners and idle time-out.

A session belongs to the connection that opened it (its :class:`VideoOwner`) and is closed
when that connection closes; one unused for ``--video-idle-timeout`` seconds is closed too.
At most ``--video-max-sessions`` are open at once, each with at most ``--video-max-frames``
frames and ``--video-max-mb`` of frame bytes. A closed session's id answers
``unknown_video_session``.
"""

from __future__ import annotations

import time
import uuid
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from ...wire.errors import TooManySessions, UnknownVideoSession, VideoBusy
from .frames import FrameStore


class VideoOwner:
    """The sessions one connection opened (closed with it)."""

    def __init__(self) -> None:
        self.sessions: set[str] = set()


#: The connection being served (set in its task; None outside a connection).
CURRENT_OWNER: ContextVar[VideoOwner | None] = ContextVar("video_owner", default=None)


@dataclass(eq=False)
class VideoSession:
    """One open session: its frames, SAM2's inference state (touched on the inference
    thread only) and bookkeeping (on the event loop).

    Attributes:
        worker: the inference worker (device) the session runs on.
        predictor: the ``SAM2VideoPredictor`` over that worker's model.
        state: SAM2's inference state (:func:`sam2_compat.new_video_state`).
        propagating: True while a ``videoPropagate`` streams.
        cancelled: set by ``videoCancel`` or a close; the propagation stops at its next frame.
    """

    session_id: str
    worker: Any
    predictor: Any
    store: FrameStore
    state: dict[str, Any]
    owner: VideoOwner | None
    last_used: float = field(default_factory=time.monotonic)
    propagating: bool = False
    cancelled: bool = False
    closed: bool = False

    @property
    def width(self) -> int:
        return self.store.width

    @property
    def height(self) -> int:
        return self.store.height

    def touch(self) -> None:
        self.last_used = time.monotonic()

    def check_idle(self) -> None:
        """Raise :class:`VideoBusy` while a propagation runs."""
        if self.propagating:
            raise VideoBusy(f"video session {self.session_id} is propagating: wait for its "
                            "final reply or send videoCancel first", field="sessionId")


def new_session_id() -> str:
    """``v`` and 32 random hex characters."""
    return "v" + uuid.uuid4().hex


class SessionTable:
    """The open sessions (on the event loop's thread).

    Args:
        max_sessions: ``--video-max-sessions``.
        idle_timeout: ``--video-idle-timeout`` seconds.
    """

    def __init__(self, max_sessions: int, idle_timeout: float) -> None:
        self.max_sessions = max_sessions
        self.idle_timeout = idle_timeout
        self.sessions: dict[str, VideoSession] = {}
        self.opening = 0  # sessions being opened (their frames still being read)

    def reserve(self) -> None:
        """Count one session being opened, or raise :class:`TooManySessions`."""
        self.expire()
        if len(self.sessions) + self.opening >= self.max_sessions:
            raise TooManySessions(f"{self.max_sessions} video sessions are already open "
                                  "(--video-max-sessions): close one (videoClose) first")
        self.opening += 1

    def add(self, session: VideoSession) -> None:
        self.opening -= 1
        self.sessions[session.session_id] = session
        if session.owner is not None:
            session.owner.sessions.add(session.session_id)

    def get(self, session_id: str) -> VideoSession:
        """The open session, marked used.

        Raises:
            UnknownVideoSession: none by that id (its message says the session is gone).
        """
        self.expire()
        session = self.sessions.get(session_id)
        if session is None:
            raise UnknownVideoSession(
                f"video session {session_id[:40]} is gone: it was closed, went unused for "
                f"--video-idle-timeout ({self.idle_timeout:g} s), or the connection that "
                "opened it closed; open a new one (videoOpen)", field="sessionId")
        session.touch()
        return session

    def close(self, session_id: str) -> bool:
        """Close a session (a propagation on it stops at its next frame); False if none."""
        session = self.sessions.pop(session_id, None)
        if session is None:
            return False
        session.closed = session.cancelled = True
        if session.owner is not None:
            session.owner.sessions.discard(session_id)
        return True

    def expire(self) -> list[str]:
        """Close sessions unused for longer than the idle time-out (not while propagating)."""
        now = time.monotonic()
        old = [s.session_id for s in self.sessions.values()
               if not s.propagating and now - s.last_used > self.idle_timeout]
        for sid in old:
            self.close(sid)
        return old
