"""Service-manager hand-offs without libsystemd: socket activation, readiness, watchdog.

Small stdlib-only versions of the libsystemd calls the daemon needs, following their man
pages: :func:`listen_fds` (sd_listen_fds(3)), :func:`notify` (sd_notify(3)),
:func:`watchdog_interval` (sd_watchdog_enabled(3)); and :func:`launchd_sockets`, the macOS
twin of :func:`listen_fds` (launch_activate_socket(3)). Everything here is a no-op (``[]``,
``False``, ``None``) when the process was not started by the matching service manager, so
the daemon can call these unconditionally.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import logging
import os
import socket
import sys
from typing import Any, MutableMapping

log = logging.getLogger(__name__)

#: The first passed file descriptor (SD_LISTEN_FDS_START in sd-daemon.h).
SD_LISTEN_FDS_START = 3

_LISTEN_VARS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def listen_fds(unset_environment: bool = True,
               environ: MutableMapping[str, str] | None = None) -> list[int]:
    """File descriptors passed by systemd socket activation, as sd_listen_fds(3).

    When ``LISTEN_PID`` is this process's pid and ``LISTEN_FDS`` is a positive integer N,
    returns ``[3, ..., 3 + N - 1]`` (SD_LISTEN_FDS_START onwards), with FD_CLOEXEC set on each
    so that they do not leak into child processes. Otherwise returns ``[]``.

    With ``unset_environment`` (the default), ``LISTEN_PID``, ``LISTEN_FDS`` and
    ``LISTEN_FDNAMES`` are removed from ``environ`` in every case, as libsystemd does, so that
    children do not mistake them for their own.

    Args:
        unset_environment: remove the three variables afterwards.
        environ: the environment to read (default :data:`os.environ`, which also updates the
            C-level environment).

    Raises:
        OSError: a passed descriptor is not open (EBADF from fcntl).
    """
    env = os.environ if environ is None else environ
    try:
        if _int_or_none(env.get("LISTEN_PID")) != os.getpid():
            return []
        count = _int_or_none(env.get("LISTEN_FDS"))
        if count is None or count <= 0:
            return []
        fds = list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count))
        for fd in fds:
            flags = fcntl.fcntl(fd, fcntl.F_GETFD)
            if not flags & fcntl.FD_CLOEXEC:
                fcntl.fcntl(fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)
        return fds
    finally:
        if unset_environment:
            for name in _LISTEN_VARS:
                env.pop(name, None)


def _notify_address(value: str) -> str | bytes | None:
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:  # abstract namespace: leading NUL byte
        return b"\0" + value[1:].encode()
    return None  # e.g. vsock:... (newer systemd); not supported here


def notify(state: str, environ: MutableMapping[str, str] | None = None) -> bool:
    """Send ``state`` to the service manager in one datagram, as sd_notify(3).

    ``state`` is newline-separated ``KEY=VALUE`` assignments, e.g. ``"READY=1\\nSTATUS=Listening"``,
    ``"WATCHDOG=1"``, ``"STOPPING=1"``. The address comes from ``$NOTIFY_SOCKET``: a file system
    path (``/run/...``) or an abstract socket (``@name``).

    Returns True when the datagram was sent; False when ``NOTIFY_SOCKET`` is unset (not run by
    systemd with ``Type=notify`` or ``WatchdogSec=``), has an unsupported form, or sending
    failed. Send errors are logged at debug level and never raised.

    Raises:
        ValueError: ``state`` is empty (a programming error, as sd_notify's -EINVAL).
    """
    if not state:
        raise ValueError("notify state must not be empty")
    env = os.environ if environ is None else environ
    raw = env.get("NOTIFY_SOCKET")
    if not raw:
        return False
    address = _notify_address(raw)
    if address is None:
        log.debug("NOTIFY_SOCKET=%r: unsupported address", raw)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(state.encode(), address)
    except OSError as exc:
        log.debug("sd_notify to %r failed: %s", raw, exc)
        return False
    return True


def watchdog_interval(environ: MutableMapping[str, str] | None = None) -> float | None:
    """The service manager's watchdog timeout in seconds, as sd_watchdog_enabled(3), or None.

    Read from ``WATCHDOG_USEC`` (microseconds, set by systemd from ``WatchdogSec=``). When
    ``WATCHDOG_PID`` is set it must be this process's pid, otherwise the watchdog is meant for
    another process and None is returned. None also when unset, not a positive integer, or
    malformed.

    Send ``notify("WATCHDOG=1")`` at half this interval (sd_watchdog_enabled(3) recommends
    pinging at half the timeout), so that one late ping does not trip the watchdog.
    """
    env = os.environ if environ is None else environ
    usec = _int_or_none(env.get("WATCHDOG_USEC"))
    if usec is None or usec <= 0:
        return None
    if "WATCHDOG_PID" in env and _int_or_none(env["WATCHDOG_PID"]) != os.getpid():
        return None
    return usec / 1_000_000


def _libsystem() -> Any:
    return ctypes.CDLL(ctypes.util.find_library("System") or "/usr/lib/libSystem.B.dylib")


def launchd_sockets(name: str, platform: str = sys.platform) -> list[int]:
    """File descriptors of the launchd ``Sockets`` entry ``name``, via launch_activate_socket(3).

    macOS only: returns ``[]`` on other platforms, and when the process was not started by
    launchd (ESRCH) or the job has no socket called ``name`` (ENOENT). The array launchd
    allocates is freed here; the descriptors belong to the caller.

    Not run on macOS here: only the ctypes plumbing is tested on Linux, against a stand-in
    for libSystem (tests/unit/test_systemd.py).

    Raises:
        OSError: any other error launchd reports (e.g. EALREADY: already activated).
    """
    if platform != "darwin":
        return []
    lib = _libsystem()
    activate = lib.launch_activate_socket
    activate.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.POINTER(ctypes.c_int)),
                         ctypes.POINTER(ctypes.c_size_t)]
    activate.restype = ctypes.c_int
    array = ctypes.POINTER(ctypes.c_int)()
    count = ctypes.c_size_t(0)
    err = activate(name.encode(), ctypes.byref(array), ctypes.byref(count))
    if err in (errno.ESRCH, errno.ENOENT):
        return []
    if err:
        raise OSError(err, f"launch_activate_socket({name!r}): {os.strerror(err)}")
    try:
        return [array[i] for i in range(count.value)]
    finally:
        lib.free.argtypes = [ctypes.c_void_p]
        lib.free(ctypes.cast(array, ctypes.c_void_p))
