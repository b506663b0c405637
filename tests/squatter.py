"""A listener of another user (``nobody``) on a Unix socket path: the socket squatter of
the security tests (and :func:`silent_listener`, one of this user that never answers).
Needs root (to drop to ``nobody`` with ``setpriv``); the squatter runs the system's
``python3`` (the project's interpreter may be in a folder ``nobody`` cannot read) with
nothing but the standard library."""

from __future__ import annotations

import contextlib
import os
import pwd
import select
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

#: Binds argv[1]; "stale" leaves the socket file and exits. Otherwise it accepts connections,
#: reads each until the client closes it (or 3 s pass), and prints after each one the total
#: of bytes received so far: what a client sent to the impostor.
SQUAT = ("import socket, sys\n"
         "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
         "s.bind(sys.argv[1]); s.listen(8)\n"
         "if sys.argv[2] == 'stale': s.close(); sys.exit(0)\n"
         "total = 0\n"
         "while True:\n"
         "    c, _ = s.accept(); c.settimeout(3)\n"
         "    try:\n"
         "        while d := c.recv(65536): total += len(d)\n"
         "    except OSError: pass\n"
         "    c.close(); print(total, flush=True)\n")


def nobody_uid() -> int:
    return pwd.getpwnam("nobody").pw_uid


def require_root_and_setpriv() -> None:
    """Skip the calling test unless it can run a process as ``nobody``."""
    if os.geteuid() != 0:
        pytest.skip("needs root, to run the squatter as user nobody")
    if not shutil.which("setpriv") or not os.path.exists("/usr/bin/python3"):
        pytest.skip("needs setpriv and /usr/bin/python3 to run the squatter")
    try:
        nobody_uid()
    except KeyError:
        pytest.skip("no user nobody")


def stale_socket_of_nobody(path: str) -> None:
    """Leave a socket file at ``path`` that nobody listens on, owned by ``nobody`` (chown
    stands in for another user); skips the calling test unless run as root."""
    if os.geteuid() != 0:
        pytest.skip("needs root to give the socket file to another user")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()
    os.chown(path, nobody_uid(), -1)


@contextlib.contextmanager
def silent_listener(accept_timeout: float) -> Iterator[tuple[str, socket.socket]]:
    """A listening socket of this user that never answers, in a short temp folder:
    ``(path, socket)``; its ``accept`` gives up after ``accept_timeout`` s."""
    path = str(Path(tempfile.mkdtemp(prefix="s2l-", dir="/tmp")) / "l.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(4)
    srv.settimeout(accept_timeout)
    try:
        yield path, srv
    finally:
        srv.close()


def shared_sticky_dir() -> str:
    """A short world-writable folder with the sticky bit, like /tmp."""
    path = tempfile.mkdtemp(prefix="s2q-", dir="/tmp")
    os.chmod(path, 0o1777)
    return path


@contextlib.contextmanager
def squatter(path: str, stale: bool = False) -> Iterator[subprocess.Popen]:
    """``nobody`` listening on ``path`` (or, with ``stale``, leaving a socket file there)."""
    proc = subprocess.Popen(["setpriv", "--reuid", "nobody", "--regid", "nogroup",
                             "--clear-groups", "/usr/bin/python3", "-c", SQUAT, path,
                             "stale" if stale else "live"], stdout=subprocess.PIPE, bufsize=0)
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(path):
            assert proc.poll() is None or stale, "the squatter exited"
            assert time.monotonic() < deadline, "the squatter did not bind"
            time.sleep(0.05)
        if stale:
            proc.wait(10)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def bytes_received(proc: subprocess.Popen, connections: int, timeout: float = 10.0) -> int:
    """Bytes a live :func:`squatter` received over its first ``connections`` connections
    (waits for it to have closed that many).

    Raises:
        AssertionError: fewer connections ended within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    out = b""  # read the raw pipe: a buffered readline would hide lines from select()
    while (ended := out.count(b"\n")) < connections:
        left = deadline - time.monotonic()
        assert left > 0 and select.select([proc.stdout], [], [], left)[0], \
            f"the squatter saw {ended} of {connections} connections end"
        chunk = os.read(proc.stdout.fileno(), 4096)
        assert chunk, "the squatter exited"
        out += chunk
    return int(out.split(b"\n")[connections - 1])
