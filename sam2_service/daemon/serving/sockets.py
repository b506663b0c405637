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

from ..config import StartupError

#: Pending connections the kernel queues before the daemon accepts them (the kernel caps it at
#: net.core.somaxconn). A full queue makes a client's connect fail with EAGAIN at once.
LISTEN_BACKLOG = socket.SOMAXCONN


def max_socket_path_bytes(platform: str = sys.platform) -> int:
    """Longest Unix socket path the platform's ``sockaddr_un.sun_path`` holds, without its NUL:
    107 bytes on Linux (108-byte field), 103 on macOS and the BSDs (104-byte field)."""
    return 107 if platform.startswith("linux") else 103


def describe_uid(uid: int) -> str:
    """``uid 65534 (nobody)``, or ``uid N`` when the user has no name."""
    try:
        import pwd

        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def listener_uid(path: str, timeout: float = 1.0) -> tuple[str, int | None]:
    """Connect to the socket file ``path`` and say who listens there.

    Returns ``("live", uid)`` (``uid`` from the listener's ``SO_PEERCRED``; None where the
    platform cannot tell), ``("stale", None)`` when nobody listens, or ``("denied", None)``
    when the socket file's mode does not let us connect (it is then another user's).

    Raises:
        OSError: any other failure to connect (a timeout included).
    """
    from ...wire.peer import peer_uid

    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(timeout)
    try:
        probe.connect(path)
        try:
            return "live", peer_uid(probe)
        except OSError:
            return "live", None
    except (ConnectionRefusedError, FileNotFoundError):
        return "stale", None
    except PermissionError:
        return "denied", None
    finally:
        probe.close()


def _probe_existing(path: str) -> None:
    """Make ``path`` free for bind: remove our own stale socket; refuse anything else.

    Never removes another user's file, stale or not (in a sticky folder such as /tmp a
    non-root daemon could not anyway; root must not either).

    Raises:
        StartupError: a daemon listens there (ours: "already running"; another user's:
            named by uid), the path is another user's or not a socket, or it cannot be
            examined.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise StartupError(f"{path} exists and is not a socket; refusing to replace it "
                           "(remove it yourself or choose another --socket)")
    me = os.geteuid()
    try:
        state, uid = listener_uid(path)
    except OSError as exc:
        raise StartupError(f"cannot probe existing socket {path}: {exc}") from None
    owner = uid if uid is not None else st.st_uid
    if state == "stale" and st.st_uid == me:
        os.unlink(path)  # our own, and nobody listens
        return
    if owner != me or state == "denied":
        what = {"live": "a listener of", "denied": "a socket (not connectable by us) of",
                "stale": "a stale socket of"}[state]
        raise StartupError(f"{path} is held by {what} another user, {describe_uid(owner)}; "
                           "refusing to start there and never removing it: choose a private "
                           "--socket (e.g. in $XDG_RUNTIME_DIR)")
    raise StartupError(f"already running: a daemon is listening on {path} "
                       "(stop it first, or choose another --socket)")


def _check_folder(path: str) -> None:
    """The socket's folder exists and we may create a file in it.

    Raises:
        StartupError: it is missing, not a folder, or not writable.
    """
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise StartupError(f"the socket's folder {parent} does not exist: create it or "
                           "choose another --socket")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise StartupError(f"the socket's folder {parent} is not writable by "
                           f"{describe_uid(os.geteuid())}: choose another --socket")


def check_socket_path(path: str) -> None:
    """Fail fast, before the model loads, if ``path`` cannot become our socket.

    Raises:
        StartupError: the path is too long for the platform, its folder is missing or not
            writable, a daemon (ours or another user's) listens there, it is another user's
            file, or it exists and is not a socket. Our own stale socket is removed. A
            permission error on the way is this one line too, never a traceback.
    """
    limit = max_socket_path_bytes()
    if len(os.fsencode(path)) > limit:
        raise StartupError(f"socket path is {len(os.fsencode(path))} bytes, longer than this "
                           f"platform's limit of {limit}: choose a shorter --socket")
    try:
        _check_folder(path)
        _probe_existing(path)
    except PermissionError as exc:
        raise StartupError(f"cannot use socket path {path}: {exc.strerror or exc} "
                           f"({describe_uid(os.geteuid())}): choose another --socket") from None


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
    from ..ops.systemd import launchd_sockets, listen_fds

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
