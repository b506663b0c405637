"""Who is at the other end of a connected Unix socket: the peer's uid, and the rule for
whom each side trusts. Used by the daemon (which clients it serves) and the clients (which
daemon they send images to). No I/O beyond one ``getsockopt``.
"""

from __future__ import annotations

import socket
import struct
import sys


def peer_uid(sock: socket.socket, platform: str = sys.platform) -> int | None:
    """The uid of the process at the other end of a connected Unix socket, or None where
    the platform gives no way to read it.

    Linux: ``SO_PEERCRED`` (struct ucred: pid, uid, gid). macOS and the BSDs:
    ``LOCAL_PEERCRED`` at level ``SOL_LOCAL`` (0), a struct xucred whose ``cr_uid``
    follows the 4-byte ``cr_version`` (what ``getpeereid(3)`` reads; not run here).
    """
    if platform.startswith("linux"):
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return struct.unpack("3i", raw)[1]
    if platform == "darwin" or "bsd" in platform:
        local_peercred = getattr(socket, "LOCAL_PEERCRED", 0x001)
        raw = sock.getsockopt(0, local_peercred, 76)  # sizeof(struct xucred)
        return struct.unpack_from("=II", raw)[1]
    return None


def peer_allowed(uid: int | None, own_uid: int) -> bool:
    """Whether a peer may talk to the daemon: the daemon's own user, or root (as
    ssh-agent allows). An unknown uid (no credential API) is allowed: the socket's 0600
    mode is then the only guard."""
    return uid is None or uid in (own_uid, 0)
