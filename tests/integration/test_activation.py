"""Socket activation and sd_notify with the real daemon under ``systemd-socket-activate``:
it passes a listening socket as fd 3 (LISTEN_FDS/LISTEN_PID) and starts the daemon on the first
connection; NOTIFY_SOCKET is a datagram socket of this test, where READY=1, WATCHDOG=1 and
STOPPING=1 must arrive. The daemon must serve on the inherited socket and never unlink it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sam2_service.client import Client

from .conftest import short_tmp_socket_dir

ACTIVATE = shutil.which("systemd-socket-activate")
pytestmark = [pytest.mark.model,
              pytest.mark.skipif(ACTIVATE is None, reason="systemd-socket-activate not installed")]


def datagrams(sock: socket.socket, until: float) -> list[str]:
    out = []
    while time.monotonic() < until:
        sock.settimeout(max(0.01, until - time.monotonic()))
        try:
            out.append(sock.recv(4096).decode())
        except socket.timeout:
            break
    return out


def test_socket_activation_ready_watchdog_and_stopping():
    tmp = Path(short_tmp_socket_dir())
    path, notify_path = str(tmp / "act.sock"), str(tmp / "notify.sock")
    notify_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_sock.bind(notify_path)
    cmd = [ACTIVATE, "-l", path, "-E", f"NOTIFY_SOCKET={notify_path}",
           "-E", "WATCHDOG_USEC=1000000", "-E", "PYTHONUNBUFFERED=1",
           sys.executable, "-m", "sam2_service", "serve", "--socket", path, "--dummy-weights",
           "--no-warmup", "--device", "cpu", "--log-file", str(tmp / "log.jsonl")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(path):  # systemd-socket-activate binds before any connection
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        inode = os.stat(path).st_ino
        with Client(path, timeout=180) as c:  # the first connection starts the daemon
            t0 = time.monotonic()
            assert c.ping()["ok"] is True
            info = c.info()
        assert info["pid"] == proc.pid  # systemd-socket-activate execs the daemon in place
        assert info["weights"] == "dummy"
        messages = datagrams(notify_sock, time.monotonic() + 1.6)
        assert messages[0].startswith("READY=1\nSTATUS=Listening on " + path), messages
        assert messages.count("WATCHDOG=1") >= 2, messages  # every 0.5 s
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert "STOPPING=1" in datagrams(notify_sock, time.monotonic() + 1)
        assert os.path.exists(path) and os.stat(path).st_ino == inode  # never unlinked
        log = (tmp / "log.jsonl").read_text()
        assert '"activation":"inherited"' in log
        assert time.monotonic() - t0 < 120
    finally:
        if proc.poll() is None:
            proc.kill()
        notify_sock.close()
