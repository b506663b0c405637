"""Starting and stopping the daemon process: fast failures with the fix in one line,
socket hygiene, --dummy-weights, and a graceful SIGTERM with a request running and one
queued."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import skimage.data

from sam2_service.client import Client

from .conftest import encode_image, short_tmp_socket_dir, start_daemon


def serve(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sam2_service", "serve", "--device", "cpu", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_missing_checkpoint_exits_with_the_fix(tmp_path):
    proc = serve("--socket", str(tmp_path / "s.sock"), "--log-file", str(tmp_path / "log"),
                 "--checkpoint", str(tmp_path / "nope.pt"))
    assert proc.returncode == 1
    err = [l for l in proc.stderr.splitlines() if "Checkpoint not found" in l]
    assert len(err) == 1 and "./download_checkpoint.sh tiny" in err[0]
    assert not (tmp_path / "s.sock").exists()


def test_missing_sam2_exits_with_the_fix(tmp_path):
    code = ("import sys; sys.modules['sam2'] = None; from sam2_service.cli import main; "
            f"sys.exit(main(['serve', '--dummy-weights', '--device', 'cpu', '--socket', "
            f"'{tmp_path / 's.sock'}', '--log-file', '{tmp_path / 'log'}']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "sam2 is not installed" in proc.stderr and "make install" in proc.stderr


def test_checkpoint_of_another_model_is_refused(tmp_path, checkpoint):
    proc = serve("--socket", str(tmp_path / "s.sock"), "--log-file", str(tmp_path / "log"),
                 "--model", "small", "--checkpoint", str(checkpoint))
    assert proc.returncode == 1
    assert "could not be loaded as SAM2.1 small" in proc.stderr


def test_refuses_path_that_is_not_a_socket(tmp_path):
    path = tmp_path / "not-a-socket"
    path.write_text("keep me")
    proc = serve("--dummy-weights", "--socket", str(path), "--log-file", str(tmp_path / "log"))
    assert proc.returncode == 1
    assert "is not a socket" in proc.stderr
    assert path.read_text() == "keep me"


def test_refuses_socket_path_too_long(tmp_path):
    proc = serve("--dummy-weights", "--socket", "/tmp/" + "x" * 200, "--log-file", str(tmp_path / "log"))
    assert proc.returncode == 1
    assert "longer than this platform's limit" in proc.stderr


@pytest.mark.model
def test_second_daemon_on_live_socket_exits_and_leaves_it(daemon, tmp_path):
    proc = serve("--dummy-weights", "--socket", daemon.socket_path, "--log-file", str(tmp_path / "log"))
    assert proc.returncode == 1
    assert "already running" in proc.stderr
    assert Client(daemon.socket_path).ping()["ok"] is True


@pytest.mark.model
def test_dummy_daemon_replaces_stale_socket_and_drains_on_sigterm(tmp_path):
    sock_dir = Path(short_tmp_socket_dir())
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sock_dir / "sam2.sock"))
    stale.close()  # leaves a socket file nobody listens on
    # on the CPU whatever the test device: the running request must still run at SIGTERM
    d = start_daemon(sock_dir, "--dummy-weights", "--no-warmup", "--device", "cpu")
    try:
        info = Client(d.socket_path).info()
        assert info["weights"] == "dummy" and "meaningless" in info["warning"]
        png = encode_image(skimage.data.chelsea(), "PNG")
        request = {"requestId": "in-flight", "width": 451, "height": 300,
                   "imageBase64": base64.b64encode(png).decode(),
                   "bbox": {"x1": 10, "y1": 10, "x2": 200, "y2": 200}}
        replies = {}

        def run(key: str, message: dict) -> None:
            with Client(d.socket_path) as c:
                replies[key] = c.request(message)

        def logged(times: int) -> None:
            deadline = time.monotonic() + 30
            while (d.log_path.read_text().count('"Received request"') < times
                   and time.monotonic() < deadline):
                time.sleep(0.05)

        threads = [threading.Thread(target=run, args=("r", request))]
        threads[0].start()
        logged(1)
        queued = {**request, "requestId": "queued", "bbox": {"x1": 0, "y1": 0, "x2": 50, "y2": 50}}
        threads.append(threading.Thread(target=run, args=("q", queued)))
        threads[1].start()
        logged(2)  # received, and waiting behind the running one (a CPU encode takes seconds)
        idle = Client(d.socket_path)
        idle.ping()  # an idle connection must not hold up shutdown
        d.process.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(timeout=120)
        assert replies["r"]["requestId"] == "in-flight"
        assert "error" not in replies["r"] and replies["r"]["maskWidth"] == 451
        assert replies["q"]["requestId"] == "queued" and replies["q"]["code"] == "shutting_down"
        assert replies["q"]["maskBase64"] == ""
        assert d.process.wait(timeout=60) == 0
        assert not os.path.exists(d.socket_path)
        assert "Warm-up complete" not in d.log_path.read_text()
        idle.close()
    finally:
        if d.process.poll() is None:
            d.process.kill()
