"""download_checkpoint.sh against a local HTTP server: progress, resume, atomic rename,
load check, unreachable host, exit codes; with curl and with wget (SAM2_DOWNLOADER)."""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "download_checkpoint.sh"
TINY = "sam2.1_hiera_tiny.pt"
ALL = ["sam2.1_hiera_tiny.pt", "sam2.1_hiera_small.pt", "sam2.1_hiera_base_plus.pt",
       "sam2.1_hiera_large.pt"]
CUT_AT = 100_000  # bytes served before a cut connection closes

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def downloaders() -> list:
    return [pytest.param(d, marks=pytest.mark.skipif(shutil.which(d) is None, reason=f"no {d}"))
            for d in ("curl", "wget")]


class Handler(BaseHTTPRequestHandler):
    """Serves ``server.files`` with HEAD, GET and ``Range: bytes=N-``; if ``server.cut_at``
    is set, a GET body stops at that file offset and the connection closes."""

    server: "FileServer"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _head(self) -> tuple[bytes, int] | None:
        data = self.server.files.get(self.path.rsplit("/", 1)[-1])
        if data is None:
            self.send_error(404)
            return None
        rng = self.headers.get("Range")
        start = int(rng.removeprefix("bytes=").split("-")[0]) if rng else 0
        if self.command == "GET":
            self.server.requests.append(rng)
        if start >= len(data) and rng:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        return data, start

    def do_HEAD(self) -> None:
        self._head()

    def do_GET(self) -> None:
        got = self._head()
        if got is None:
            return
        data, start = got
        end = len(data) if self.server.cut_at is None else max(start, self.server.cut_at)
        self.wfile.write(data[start:end])
        self.wfile.flush()
        self.close_connection = True


class FileServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.files: dict[str, bytes] = {}
        self.requests: list[str | None] = []  # the Range header of each GET (None: none)
        self.cut_at: int | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/ckpts"


@pytest.fixture(scope="module")
def checkpoint_bytes() -> bytes:
    """A small file that passes the load check: ``{"model": {"image_encoder.x": ...}}``."""
    import torch

    buf = io.BytesIO()
    torch.save({"model": {"image_encoder.x": torch.arange(60_000, dtype=torch.float32)}}, buf)
    return buf.getvalue()


@pytest.fixture
def server():
    srv = FileServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def torchless_python(tmp_path_factory) -> str:
    """A Python without site-packages (no torch): the load check is skipped, quickly."""
    path = tmp_path_factory.mktemp("py") / "python"
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
    path.chmod(0o755)
    return str(path)


def start_script(dest: Path, base_url: str, *args: str, downloader: str = "curl",
                 python: str = sys.executable, **env: str) -> subprocess.Popen:
    """Start the script with a clean environment (no SAM2_* or proxy variables)."""
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("SAM2_") and k.lower() not in ("http_proxy", "https_proxy",
                                                               "all_proxy")}
    clean.update(SAM2_CHECKPOINT_BASE_URL=base_url, SAM2_CHECKPOINT_DIR=str(dest),
                 SAM2_DOWNLOADER=downloader, SAM2_PYTHON=python, SAM2_DOWNLOAD_RETRIES="0",
                 NO_PROXY="*", no_proxy="*", **env)
    return subprocess.Popen(["bash", str(SCRIPT), *args], env=clean, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_script(*args, **kw) -> subprocess.CompletedProcess:
    return finish(start_script(*args, **kw))


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.parametrize("downloader", downloaders())
def test_progress_and_atomic_rename(tmp_path, server, checkpoint_bytes, torchless_python,
                                    downloader):
    server.files[TINY] = checkpoint_bytes
    r = run_script(tmp_path, server.base_url, "tiny", downloader=downloader,
                   python=torchless_python)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / TINY).read_bytes() == checkpoint_bytes
    assert sorted(os.listdir(tmp_path)) == [TINY]
    assert "100" in r.stderr and ("#" in r.stderr if downloader == "curl" else "%" in r.stderr)
    assert "Load check skipped" in r.stdout and "has no torch" in r.stdout
    assert server.requests == [None]


def test_load_check_passes_a_sam2_checkpoint_and_moves_a_bad_file_aside(tmp_path, server,
                                                                         checkpoint_bytes):
    """Both runs use this venv's Python with torch; they run side by side (each imports torch)."""
    server.files[TINY] = checkpoint_bytes
    server.files["sam2.1_hiera_small.pt"] = b"<html>captive portal</html>" * 100
    good_dir, bad_dir = tmp_path / "good", tmp_path / "bad"
    good = start_script(good_dir, server.base_url)  # default model: tiny
    bad = start_script(bad_dir, server.base_url, "small")
    good, bad = finish(good), finish(bad)

    assert good.returncode == 0, good.stderr
    assert "Load check passed: a SAM2 checkpoint, 1 tensors" in good.stdout
    assert (good_dir / TINY).read_bytes() == checkpoint_bytes

    assert bad.returncode == 4, bad.stderr
    assert os.listdir(bad_dir) == ["sam2.1_hiera_small.pt.invalid"]
    assert "is not a SAM2 checkpoint (torch.load failed" in bad.stderr
    assert f"moved to {bad_dir / 'sam2.1_hiera_small.pt'}.invalid" in bad.stderr


@pytest.mark.parametrize("downloader", downloaders())
def test_cut_download_keeps_only_the_part_and_resumes(tmp_path, server, checkpoint_bytes,
                                                      torchless_python, downloader):
    server.files[TINY] = checkpoint_bytes
    server.cut_at = CUT_AT
    r = run_script(tmp_path, server.base_url, "tiny", downloader=downloader,
                   python=torchless_python)
    assert r.returncode == 1, r.stdout + r.stderr
    assert os.listdir(tmp_path) == [TINY + ".part"]
    assert (tmp_path / (TINY + ".part")).stat().st_size == CUT_AT
    assert "run again to resume" in r.stderr

    server.cut_at = None
    r = run_script(tmp_path, server.base_url, "tiny", downloader=downloader,
                   python=torchless_python)
    assert r.returncode == 0, r.stderr
    assert f"Resuming {TINY} at byte {CUT_AT}" in r.stdout
    assert server.requests[-1] == f"bytes={CUT_AT}-"
    assert os.listdir(tmp_path) == [TINY]
    assert (tmp_path / TINY).read_bytes() == checkpoint_bytes


def test_complete_part_is_not_fetched_again(tmp_path, server, checkpoint_bytes, torchless_python):
    server.files[TINY] = checkpoint_bytes
    (tmp_path / (TINY + ".part")).write_bytes(checkpoint_bytes)
    r = run_script(tmp_path, server.base_url, "tiny", python=torchless_python)
    assert r.returncode == 0, r.stderr
    assert server.requests == [] and os.listdir(tmp_path) == [TINY]


def test_part_larger_than_the_file_starts_over(tmp_path, server, checkpoint_bytes,
                                               torchless_python):
    server.files[TINY] = checkpoint_bytes
    (tmp_path / (TINY + ".part")).write_bytes(b"x" * (len(checkpoint_bytes) + 10))
    r = run_script(tmp_path, server.base_url, "tiny", python=torchless_python)
    assert r.returncode == 0, r.stderr
    assert "starting over" in r.stdout and server.requests == [None]
    assert (tmp_path / TINY).read_bytes() == checkpoint_bytes


@pytest.mark.parametrize("downloader", downloaders())
def test_unreachable_host_is_one_line_and_exit_3(tmp_path, downloader):
    r = run_script(tmp_path, f"http://127.0.0.1:{closed_port()}", "tiny", downloader=downloader,
                   SAM2_DOWNLOAD_HINT="; try make run DUMMY=1")
    assert r.returncode == 3
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "is unreachable (no network?" in lines[0] and lines[0].endswith("try make run DUMMY=1")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("downloader", downloaders())
def test_http_error_exits_1(tmp_path, server, downloader):
    r = run_script(tmp_path, server.base_url, "small", downloader=downloader)
    assert r.returncode == 1 and "the server refused" in r.stderr and "404" in r.stderr


def test_all_downloads_every_model(tmp_path, server, torchless_python):
    for i, name in enumerate(ALL):
        server.files[name] = bytes([i]) * (1000 + i)
    r = run_script(tmp_path, server.base_url, "all", python=torchless_python)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(tmp_path)) == sorted(ALL)
    for name in ALL:
        assert (tmp_path / name).read_bytes() == server.files[name]


def test_present_file_is_left_alone(tmp_path, server):
    (tmp_path / TINY).write_bytes(b"already here")
    r = run_script(tmp_path, server.base_url, "tiny")
    assert r.returncode == 0 and "already present" in r.stdout and server.requests == []


def test_unknown_model_exits_2_before_downloading(tmp_path, server):
    r = run_script(tmp_path, server.base_url, "tiny", "huge")
    assert r.returncode == 2 and "unknown model 'huge'" in r.stderr
    assert server.requests == [] and not tmp_path.joinpath(TINY).exists()


def test_bad_downloader_exits_2(tmp_path, server):
    r = run_script(tmp_path, server.base_url, "tiny", downloader="aria2c")
    assert r.returncode == 2 and "SAM2_DOWNLOADER must be curl or wget" in r.stderr
