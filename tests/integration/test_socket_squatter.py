"""The real daemon against a socket path it must not take: another user's listener in a
shared sticky folder (the /tmp squatter), another user's stale socket, and a missing folder.
Each is refused in one line, before the model loads, and the other user's file stays."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from ..squatter import nobody_uid, require_root_and_setpriv, shared_sticky_dir, squatter


def serve(socket_path: str, log: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sam2_service", "serve", "--dummy-weights",
                           "--device", "cpu", "--socket", socket_path, "--log-file", log],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def sticky_dir():
    path = shared_sticky_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _one_line_refusal(proc: subprocess.CompletedProcess, log: str) -> str:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "another user" in line]
    assert len(lines) == 1, proc.stderr
    assert "another user" in open(log).read()  # logged, not only printed
    assert "Model loaded" not in open(log).read()  # refused before the model loads
    return lines[0]


@pytest.mark.parametrize("stale", [False, True], ids=["listening", "stale"])
def test_daemon_refuses_another_users_socket(sticky_dir, tmp_path, stale):
    require_root_and_setpriv()
    path, log = f"{sticky_dir}/s.sock", str(tmp_path / "daemon.log")
    with squatter(path, stale=stale) as squat:
        proc = serve(path, log)
        line = _one_line_refusal(proc, log)
        assert f"uid {nobody_uid()}" in line
        assert os.path.exists(path) and os.lstat(path).st_uid == nobody_uid()
        assert stale or squat.poll() is None


def test_missing_socket_folder_fails_before_the_model_loads(tmp_path):
    log = str(tmp_path / "daemon.log")
    proc = serve(str(tmp_path / "missing" / "s.sock"), log)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "does not exist" in proc.stderr
    assert "Model loaded" not in open(log).read()
