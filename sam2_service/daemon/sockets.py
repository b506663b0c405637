"""The daemon's Unix socket: path checks, owner-only binding, peer credentials.

Small platform functions (Linux is tested here; the macOS branches are not run here):
``sockaddr_un`` path limits, the peer-uid check (``SO_PEERCRED`` / ``LOCAL_PEERCRED``),
and telling a hang-up from a half-close.
"""

from __future__ import annotations

import os
import select
import socket
import stat
import sys

from .config import StartupError

#: Pending connections the kernel queues before the daemon accepts them (the kernel caps it at
#: net.core.somaxconn). A full queue makes a client's connect fail with EAGAIN at once.
LISTEN_BACKLOG = socket.SOMAXCONN


def max_socket_path_bytes(platform: str = sys.platform) -> int:
    """Longest Unix socket path the platform's ``sockaddr_un.sun_path`` holds, without its NUL:
    107 bytes on Linux (108-byte field), 103 on macOS and the BSDs (104-byte field)."""
    return 107 if platform.startswith("linux") else 103


def _probe_existing(path: str) -> None:
    """Make ``path`` free for bind: remove a stale socket; refuse anything else.

    Raises:
        StartupError: a live daemon answers there, or the path is not a socket.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise StartupError(f"{path} exists and is not a socket; refusing to replace it "
                           "(remove it yourself or choose another --socket)")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)  # stale: nobody listens
        return
    except OSError as exc:
        raise StartupError(f"cannot probe existing socket {path}: {exc}") from None
    finally:
        probe.close()
    raise StartupError(f"already running: a daemon is listening on {path} "
                       "(stop it first, or choose another --socket)")


def check_socket_path(path: str) -> None:
    """Fail fast, before the model loads, if ``path`` cannot become our socket.

    Raises:
        StartupError: the path is too long for the platform, a live daemon answers there,
            or it exists and is not a socket. A stale socket is removed.
    """
    limit = max_socket_path_bytes()
    if len(os.fsencode(path)) > limit:
        raise StartupError(f"socket path is {len(os.fsencode(path))} bytes, longer than this "
                           f"platform's limit of {limit}: choose a shorter --socket")
    _probe_existing(path)


def bind_unix_socket(path: str) -> socket.socket:
    """A listening Unix socket at ``path``, owner-only (0600) from birth: the umask is set
    before ``bind`` (as ssh-agent does), not a chmod after.

    Raises:
        StartupError: see :func:`check_socket_path`, or bind fails.
    """
    check_socket_path(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot bind {path}: {exc}") from None
    finally:
        os.umask(old_umask)
    sock.listen(LISTEN_BACKLOG)
    sock.setblocking(False)
    return sock


def peer_hung_up(sock: socket.socket) -> bool:
    """True if the peer closed its end entirely (POLLHUP), not merely its writing half
    (``shutdown(SHUT_WR)``, after which it still waits for replies)."""
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    return any(ev & select.POLLHUP for _, ev in poller.poll(0))


def inherited_listener(launchd_name: str) -> socket.socket | None:
    """The listening socket handed over by the service manager, or None.

    systemd socket activation (``LISTEN_FDS``/``LISTEN_PID``, fd 3; :func:`systemd.listen_fds`)
    or launchd's ``Sockets`` entry ``launchd_name`` (:func:`systemd.launchd_sockets`, macOS
    only, not run here). The socket belongs to the service manager: the daemon must never
    unlink its path.

    Raises:
        StartupError: more than one socket was passed, or it is not a stream socket.
    """
    from .systemd import launchd_sockets, listen_fds

    fds = listen_fds() or launchd_sockets(launchd_name)
    if not fds:
        return None
    if len(fds) != 1:
        raise StartupError(f"the service manager passed {len(fds)} sockets; expected one "
                           "(one ListenStream= in sam2-service.socket)")
    sock = socket.socket(fileno=fds[0])
    if sock.type != socket.SOCK_STREAM:
        raise StartupError(f"the inherited socket (fd {fds[0]}) is not a stream socket")
    sock.setblocking(False)
    return sock
