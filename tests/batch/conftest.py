"""Fixtures for ``sam2-service batch``: the integration tests' real daemon (random-weight
SAM2.1-tiny, built once per session) and a folder of small real photos from skimage.data, with
a corrupt PNG, a text file and a nested folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.integration.conftest import (  # noqa: F401
    Daemon,
    checkpoint,
    daemon,
    start_daemon,
)

#: Auto settings of the tests: a 4x4 grid, filters off (random weights pass none).
SETTINGS = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
FLAGS = ["--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh", "0"]
#: The images of :func:`photos` that are images (name -> its label map's name).
GOOD = {"astronaut.png": "astronaut.png", "camera.png": "camera.png",
        "nested/deeper/coffee.jpg": "nested/deeper/coffee.png"}
CORRUPT = "broken.png"


def small(image: np.ndarray, step: int) -> np.ndarray:
    """Every ``step``-th pixel (<= 256 px a side for the test photos)."""
    return np.ascontiguousarray(image[::step, ::step])


def make_photos(root: Path, images: dict[str, np.ndarray]) -> Path:
    """Write ``images`` (relative name -> array) under ``root``; returns it."""
    for name, array in images.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(path, quality=90) if name.endswith(".jpg") else \
            Image.fromarray(array).save(path)
    return root


@pytest.fixture(scope="session")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of 3 photos (one in a nested folder, a JPEG), a corrupt PNG, a text file."""
    import skimage.data as data

    root = make_photos(tmp_path_factory.mktemp("photos"), {
        "astronaut.png": small(data.astronaut(), 4),
        "camera.png": small(data.camera(), 4),
        "nested/deeper/coffee.jpg": small(data.coffee(), 3),
    })
    (root / CORRUPT).write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00not a png" * 20)
    (root / "notes.txt").write_text("not an image, ignored in a folder\n")
    return root


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m sam2_service ARGS`` to completion."""
    return subprocess.run([sys.executable, "-m", "sam2_service", *args], capture_output=True,
                          text=True, timeout=timeout)


def read_labels(path: Path) -> np.ndarray:
    """A 16-bit label PNG as HxW uint16."""
    return np.asarray(Image.open(path)).astype(np.uint16)
