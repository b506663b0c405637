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
from tests.systemd_manager import MANAGER_START, can_run_a_user_manager

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
    with open(tmp / "daemon.out", "w") as sink:  # a file: an undrained pipe blocks logging
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, text=True)
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


_REAL_MANAGER = MANAGER_START + """\
"$PY" -m sam2_service install-service --socket "$SOCK" --dummy-weights --no-warmup \
    --device cpu --log-file "$WORK/daemon.log"
systemctl --user start sam2-service.socket
systemctl --user is-active sam2-service.service >"$WORK/before" || true
"$PY" -m sam2_service info --socket "$SOCK" >"$WORK/info.json"
systemctl --user show sam2-service.service -p StatusText -p NRestarts -p ActiveState >"$WORK/show"
systemctl --user stop sam2-service.socket sam2-service.service
[ -e "$SOCK" ] && echo present >"$WORK/after" || echo removed >"$WORK/after"
"""


def test_install_service_then_systemctl_start_socket_starts_the_real_daemon(tmp_path):
    """The issue's "done when", run for real: install-service, then `systemctl --user start
    sam2-service.socket` under a private systemd user manager; the first connection starts
    the daemon (dummy weights), which answers info, reports READY with its status text, and
    stops cleanly."""
    import json

    why = can_run_a_user_manager()
    if why:
        pytest.skip(why)
    work = tmp_path
    (work / "run").mkdir(mode=0o700)
    sock = work / "s.sock"
    env = {**os.environ, "XDG_RUNTIME_DIR": str(work / "run"), "HOME": str(work),
           "XDG_CONFIG_HOME": str(work / "config"), "WORK": str(work), "SOCK": str(sock),
           "PY": sys.executable}
    done = subprocess.run(["unshare", "-m", "sh", "-c", _REAL_MANAGER], env=env,
                          capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[2])
    if not (work / "run/systemd/private").exists():
        pytest.skip(f"systemd --user did not start here: {done.stderr.strip()[-300:]}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (work / "before").read_text().strip() == "inactive"  # nothing ran before a client
    info = json.loads((work / "info.json").read_text())
    assert info["weights"] == "dummy" and info["socket"] == str(sock)
    show = dict(line.split("=", 1) for line in (work / "show").read_text().splitlines())
    assert show == {"StatusText": f"Listening on {sock}", "NRestarts": "0",
                    "ActiveState": "active"}
    assert (work / "after").read_text().strip() == "removed"  # systemd's RemoveOnStop
    assert '"activation":"inherited"' in (work / "daemon.log").read_text()
