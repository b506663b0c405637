"""Fixtures for tests against a real daemon process and the real SAM2 model.

The model is SAM2.1-tiny with random weights saved in the official checkpoint format
(``{"model": state_dict}``), so the daemon goes through the real
``build_sam2(config, checkpoint)`` path. It is built once per test session.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image

MODEL_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
CHECKPOINT_SEED = 1234
READY_TIMEOUT_S = 180.0
#: Device for the daemon and the reference model: cpu in CI; SAM2_TEST_DEVICE=cuda on a GPU.
TEST_DEVICE = os.environ.get("SAM2_TEST_DEVICE", "cpu")
#: The daemon's default precision there: bfloat16 autocast on CUDA, float32 elsewhere.
TEST_DTYPE = "bfloat16" if TEST_DEVICE.startswith("cuda") else "float32"


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised SAM2.1-tiny saved as an official-format checkpoint."""
    import torch
    from sam2.build_sam import build_sam2

    torch.manual_seed(CHECKPOINT_SEED)
    model = build_sam2(MODEL_CONFIG, None, device="cpu")
    path = tmp_path_factory.mktemp("ckpt") / "sam2.1_hiera_tiny_random.pt"
    torch.save({"model": model.state_dict()}, path)
    return path


@pytest.fixture(scope="session")
def reference_model(checkpoint: Path):
    """The same weights loaded in this process, for SAM2ImagePredictor parity checks."""
    from sam2.build_sam import build_sam2

    return build_sam2(MODEL_CONFIG, str(checkpoint), device=TEST_DEVICE)


@contextlib.contextmanager
def reference_inference(device: str = TEST_DEVICE, dtype: str = TEST_DTYPE):
    """inference_mode, plus bfloat16 autocast when ``dtype`` is bfloat16 (the daemon's
    default on CUDA), for reference runs of SAM2ImagePredictor outside the daemon."""
    import torch

    with torch.inference_mode():
        if dtype == "bfloat16":
            with torch.autocast(device.split(":")[0], dtype=torch.bfloat16):
                yield
        else:
            yield


def reference_predictor(model, image: np.ndarray):
    """A ``SAM2ImagePredictor`` over ``model`` with the HxWx3 uint8 ``image`` set, under
    :func:`reference_inference`: the eager SAM2 that parity tests compare with."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    predictor = SAM2ImagePredictor(model)
    with reference_inference():
        predictor.set_image(image)
    return predictor


def encode_image(array: np.ndarray, fmt: str) -> bytes:
    """PNG or JPEG (quality 90) bytes of an HxWx3 uint8 array."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


@dataclass
class Daemon:
    """A running ``sam2-service serve`` process."""

    socket_path: str
    log_path: Path
    process: subprocess.Popen
    output_path: Path  # the process's stdout and stderr

    def output(self) -> str:
        """What the process has printed so far."""
        return self.output_path.read_text(errors="replace")

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, then wait; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)


def ping_raw(socket_path: str) -> bool:
    """True if something accepts a connection at ``socket_path`` and answers a ping."""
    from sam2_service.client import Client, ClientError

    try:
        with Client(socket_path, timeout=5) as c:
            return c.ping().get("ok") is True
    except ClientError:
        return False


def start_daemon(tmp: Path, *args: str, wait: bool = True) -> Daemon:
    """Start the daemon CLI on a socket under ``tmp``; wait until it answers a ping."""
    sock = str(tmp / "sam2.sock")
    log = tmp / "daemon.log"
    cmd = [sys.executable, "-m", "sam2_service", "serve", "--socket", sock, "--log-file", str(log),
           "--device", TEST_DEVICE, *args]
    # each daemon its own disk tier, unless a test passes --cache-dir: none sees another's
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "SAM2_SERVICE_CACHE_DIR": str(tmp / "emb")}
    out = tmp / "daemon.out"  # a file, not a pipe: an undrained pipe would block its logging
    with open(out, "w") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env, text=True)
    daemon = Daemon(sock, log, proc, out)
    if not wait:
        return daemon
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {proc.returncode}:\n{daemon.output()}")
        if os.path.exists(sock) and ping_raw(sock):
            return daemon
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"daemon not ready after {READY_TIMEOUT_S} s:\n{daemon.output()}")


@pytest.fixture(scope="session")
def daemon(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path) -> Iterator[Daemon]:
    """The daemon serving the random-weight checkpoint, shared by the whole session."""
    d = start_daemon(tmp_path_factory.mktemp("daemon"), "--checkpoint", str(checkpoint))
    yield d
    d.stop()


def short_tmp_socket_dir() -> str:
    """A short temp directory, for tests that need room under the sun_path limit."""
    import tempfile

    return tempfile.mkdtemp(prefix="s2s-", dir="/tmp")


def connect_raw(path: str) -> socket.socket:
    """A plain blocking Unix socket connection (no project code)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(120)
    s.connect(path)
    return s
