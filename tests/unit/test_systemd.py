"""sd_notify / sd_listen_fds / sd_watchdog_enabled twins, on real sockets and descriptors.

Descriptors are only ever moved onto 3 and 4 inside child interpreters, never in pytest's.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from sam2_service.daemon.ops import systemd
from sam2_service.daemon.ops.systemd import launchd_sockets, listen_fds, notify, watchdog_interval

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def short_dir():
    """A directory whose socket paths fit in sun_path (108 bytes), unlike some tmp_paths."""
    with tempfile.TemporaryDirectory(prefix="sd-", dir="/tmp") as d:
        yield Path(d)


def _receiver(address) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


# --- notify --------------------------------------------------------------------------------


def test_notify_sends_one_datagram_to_a_path_socket(short_dir, monkeypatch):
    path = str(short_dir / "notify")
    with _receiver(path) as rx:
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert notify("READY=1\nSTATUS=Listening on /tmp/x.sock") is True
        assert notify("WATCHDOG=1") is True
        assert rx.recv(4096) == b"READY=1\nSTATUS=Listening on /tmp/x.sock"
        assert rx.recv(4096) == b"WATCHDOG=1"


def test_notify_to_an_abstract_socket(monkeypatch):
    name = f"sam2-service-test-{uuid.uuid4().hex}"
    with _receiver("\0" + name) as rx:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify("STOPPING=1") is True
        assert rx.recv(4096) == b"STOPPING=1"


def test_notify_without_notify_socket_is_false(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False


@pytest.mark.parametrize("value", ["/nonexistent/dir/notify", "@", "vsock:2:1234", "relative"])
def test_notify_never_raises_on_a_bad_address(value, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", value)
    assert notify("READY=1") is False


def test_notify_to_a_socket_nobody_reads_is_false(short_dir):
    path = short_dir / "gone"
    _receiver(str(path)).close()  # the file stays, nobody is bound: ECONNREFUSED
    assert notify("READY=1", environ={"NOTIFY_SOCKET": str(path)}) is False


def test_notify_refuses_an_empty_state():
    with pytest.raises(ValueError):
        notify("", environ={"NOTIFY_SOCKET": "/x"})


# --- listen_fds ----------------------------------------------------------------------------


def test_listen_fds_for_another_pid_is_empty_and_cleans_the_environment():
    env = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b",
           "OTHER": "x"}
    assert listen_fds(environ=env) == []
    assert env == {"OTHER": "x"}


def test_listen_fds_keeps_the_environment_when_asked():
    env = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1"}
    assert listen_fds(unset_environment=False, environ=env) == []
    assert env == {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1"}


@pytest.mark.parametrize("fds", [None, "0", "-1", "two", ""])
def test_listen_fds_needs_a_positive_count(fds):
    env = {"LISTEN_PID": str(os.getpid())}
    if fds is not None:
        env["LISTEN_FDS"] = fds
    assert listen_fds(environ=env) == []
    assert "LISTEN_PID" not in env


def test_listen_fds_without_variables_is_empty(monkeypatch):
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        monkeypatch.delenv(name, raising=False)
    assert listen_fds() == []


_CHILD = r"""
import fcntl, json, os, socket, sys
sys.path.insert(0, sys.argv[1])
a, b = socket.socketpair()
os.dup2(a.fileno(), 20); os.dup2(b.fileno(), 21); a.close(); b.close()
os.dup2(20, 3); os.dup2(21, 4); os.close(20); os.close(21)
os.set_inheritable(3, True); os.set_inheritable(4, True)   # as passed by exec: no FD_CLOEXEC
cloexec = lambda: [bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC) for fd in (3, 4)]
before = cloexec()
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="2", LISTEN_FDNAMES="one:two")
from sam2_service.daemon.ops.systemd import listen_fds
fds = listen_fds()
after = cloexec()
one, two = socket.socket(fileno=3), socket.socket(fileno=4)
one.sendall(b"ping")
left = [k for k in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES") if k in os.environ]
print(json.dumps({"fds": fds, "before": before, "after": after, "got": two.recv(4).decode(),
                  "env": left}))
"""


def test_listen_fds_returns_3_onwards_with_cloexec_set():
    done = subprocess.run([sys.executable, "-c", _CHILD, str(REPO)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result == {"fds": [3, 4], "before": [False, False], "after": [True, True],
                      "got": "ping", "env": []}


_ACTIVATED = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
from sam2_service.daemon.ops.systemd import listen_fds
import socket
env = {k: os.environ.get(k) for k in ("LISTEN_PID", "LISTEN_FDS")}
fds = listen_fds()
server = socket.socket(fileno=fds[0])
conn, _ = server.accept()
conn.sendall(json.dumps({"fds": fds, "env": env, "pid": os.getpid(),
                         "left": "LISTEN_FDS" in os.environ}).encode())
conn.close()
"""


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None,
                    reason="systemd-socket-activate not installed")
def test_listen_fds_under_systemd_socket_activate(short_dir):
    """systemd's own tool passes a listening socket exactly as a .socket unit does."""
    path = short_dir / "activated.sock"
    proc = subprocess.Popen(["systemd-socket-activate", "-l", str(path), sys.executable, "-c",
                             _ACTIVATED, str(REPO)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not path.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.05)
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(30)
            client.connect(str(path))
            reply = json.loads(client.recv(4096))
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert reply["fds"] == [3]
    assert reply["env"] == {"LISTEN_PID": str(reply["pid"]), "LISTEN_FDS": "1"}
    assert reply["left"] is False


# --- watchdog_interval ---------------------------------------------------------------------


@pytest.mark.parametrize("env, expected", [
    ({"WATCHDOG_USEC": "120000000"}, 120.0),
    ({"WATCHDOG_USEC": "1500"}, 0.0015),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "{pid}"}, 30.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "{other}"}, None),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "nope"}, None),
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "-5"}, None),
    ({"WATCHDOG_USEC": "2s"}, None),
    ({}, None),
])
def test_watchdog_interval(env, expected):
    env = {k: v.format(pid=os.getpid(), other=os.getpid() + 1) for k, v in env.items()}
    assert watchdog_interval(environ=env) == expected


def test_watchdog_interval_reads_os_environ(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_interval() == 4.0


# --- launchd_sockets -----------------------------------------------------------------------


def test_launchd_sockets_is_empty_off_macos():
    assert launchd_sockets("Listeners", platform="linux") == []


_ACTIVATE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_char_p,
                             ctypes.POINTER(ctypes.POINTER(ctypes.c_int)),
                             ctypes.POINTER(ctypes.c_size_t))
_FREE = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


class _FakeLibSystem:
    """launch_activate_socket and free as C function pointers: the real ctypes plumbing
    (byref out-parameters, a malloc'd int array, free) runs against it on Linux."""

    def __init__(self, fds: list[int], err: int = 0):
        self.libc = ctypes.CDLL(ctypes.util.find_library("c"))
        self.libc.malloc.restype = ctypes.c_void_p
        self.libc.malloc.argtypes = [ctypes.c_size_t]
        self.libc.free.argtypes = [ctypes.c_void_p]
        self.names: list[bytes] = []
        self.freed: list[int] = []
        self.allocated: list[int] = []

        def activate(name, out_fds, out_count):
            self.names.append(name)
            if err:
                return err
            address = self.libc.malloc(ctypes.sizeof(ctypes.c_int) * max(len(fds), 1))
            self.allocated.append(address)
            array = ctypes.cast(address, ctypes.POINTER(ctypes.c_int))
            for i, fd in enumerate(fds):
                array[i] = fd
            out_fds[0] = array
            out_count[0] = len(fds)
            return 0

        def free(address):
            self.freed.append(address)
            self.libc.free(address)

        self.launch_activate_socket = _ACTIVATE(activate)
        self.free = _FREE(free)


def test_launchd_sockets_reads_and_frees_the_array(monkeypatch):
    fake = _FakeLibSystem([7, 9])
    monkeypatch.setattr(systemd, "_libsystem", lambda: fake)
    assert launchd_sockets("Listeners", platform="darwin") == [7, 9]
    assert fake.names == [b"Listeners"]
    assert fake.freed == fake.allocated and len(fake.freed) == 1


@pytest.mark.parametrize("err", [errno.ESRCH, errno.ENOENT])
def test_launchd_sockets_not_launched_by_launchd_is_empty(err, monkeypatch):
    monkeypatch.setattr(systemd, "_libsystem", lambda: _FakeLibSystem([], err=err))
    assert launchd_sockets("Listeners", platform="darwin") == []


def test_launchd_sockets_other_errors_raise(monkeypatch):
    monkeypatch.setattr(systemd, "_libsystem", lambda: _FakeLibSystem([], err=errno.EALREADY))
    with pytest.raises(OSError) as info:
        launchd_sockets("Listeners", platform="darwin")
    assert info.value.errno == errno.EALREADY
