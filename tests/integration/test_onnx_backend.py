"""``--backend onnxruntime`` with the real export and session: masks against eager
``SAM2ImagePredictor`` with the same weights, and the export cache next to the checkpoint.

One engine per module (the export takes 10-20 s), on a copy of the session's random-weight
checkpoint in a folder of its own, so that the cache lands there.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import skimage.data
from PIL import Image

from sam2_service.daemon.config import ServiceConfig
from sam2_service.daemon.engine import Sam2Engine
from sam2_service.daemon.onnx_encoder import CACHE_FOLDER, cache_name, load_encoder
from sam2_service.daemon.prompts import Prompts

from .conftest import MODEL_CONFIG, TEST_DEVICE, reference_inference

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.model

W, H = 1920, 1080
PROMPTS = {
    "box": Prompts(None, None, np.array([W * 0.2, H * 0.2, W * 0.7, H * 0.8], np.float32),
                   multimask_output=False),
    "two_points": Prompts(np.array([[900, 500], [300, 150]], np.float32),
                          np.array([1, 0], np.int32), None, multimask_output=True),
}


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def recorded() -> Iterator[list[str]]:
    """The messages of ``sam2_service.onnx`` meanwhile (a handler of its own: the daemon's
    logger does not propagate once set up, so caplog may not see them)."""
    logger, handler = logging.getLogger("sam2_service.onnx"), Recorder()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture(scope="module")
def config(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceConfig]:
    folder = tmp_path_factory.mktemp("onnx-ckpt")
    copy = folder / checkpoint.name
    shutil.copy2(checkpoint, copy)
    with pytest.MonkeyPatch.context() as mp:  # never the user's ~/.cache
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        yield ServiceConfig(checkpoint=copy, backend="onnxruntime", device="cpu")


@pytest.fixture(scope="module")
def loaded(config: ServiceConfig) -> tuple[Sam2Engine, list[str]]:
    with recorded() as messages:
        engine = Sam2Engine.load(config)
    return engine, messages


@pytest.fixture(scope="module")
def engine(loaded) -> Sam2Engine:
    return loaded[0]


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.array(Image.fromarray(skimage.data.astronaut()).resize((W, H), Image.BILINEAR))


@pytest.fixture(scope="module")
def eager(reference_model, checkpoint: Path, photo: np.ndarray):
    """SAM2ImagePredictor with the same weights on the CPU, set to the photo by torch."""
    from sam2.build_sam import build_sam2
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    model = reference_model if TEST_DEVICE == "cpu" else build_sam2(MODEL_CONFIG, str(checkpoint),
                                                                    device="cpu")
    predictor = SAM2ImagePredictor(model)
    with reference_inference("cpu", "float32"):
        predictor.set_image(photo)
    return predictor


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def test_first_load_exports_into_the_checkpoint_folder(loaded, config):
    engine, messages = loaded
    enc = engine.encoder
    assert enc is not None and enc.cached is False and enc.export_ms > 0
    assert enc.path == config.checkpoint_path.parent / CACHE_FOLDER / cache_name(config)
    assert os.listdir(enc.path.parent) == [enc.path.name]  # no temporary file left
    assert "ONNX encoder exported" in messages
    assert "ONNX encoder loaded from cache" not in messages


def test_info_and_model_id_name_the_backend(engine):
    info = engine.info()
    assert info["backend"] == "onnxruntime" and info["device"] == "cpu"
    assert info["dtype"] == "float32"
    assert engine.model_id[-1] == "onnxruntime"


@pytest.mark.parametrize("name", list(PROMPTS))
def test_masks_match_eager_sam2(engine, eager, photo, name):
    prompts = PROMPTS[name]
    embedding = engine.embed(photo)
    assert embedding.orig_hw == (H, W)
    got = engine.predict_all(embedding, prompts)
    with reference_inference("cpu", "float32"):
        masks, scores, _ = eager.predict(point_coords=prompts.point_coords,
                                         point_labels=prompts.point_labels, box=prompts.box,
                                         multimask_output=prompts.multimask_output)
    assert got.masks.shape == masks.shape
    assert any(0 < m.sum() < m.size for m in masks > 0)  # a mask worth comparing
    for mine, theirs in zip(got.masks, masks > 0):
        assert iou(mine, theirs) >= 0.99
    np.testing.assert_allclose(got.scores, scores, atol=1e-3)
    best = engine.predict(embedding, prompts)  # the op's mask: the best of the same
    assert iou(best.mask, masks[int(np.argmax(scores))] > 0) >= 0.99


def test_a_second_load_finds_the_cache(engine, config):
    with recorded() as messages:
        again = Sam2Engine.load(config)
    assert again.encoder.cached is True and again.encoder.export_ms == 0
    assert again.encoder.path == engine.encoder.path
    assert messages == ["ONNX encoder loaded from cache"]
    assert again.model_id == engine.model_id


def test_a_changed_checkpoint_exports_again(engine, config):
    """Touching the checkpoint changes the key: a new export, next to the old file."""
    ckpt = config.checkpoint_path
    st = ckpt.stat()
    try:
        os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        with recorded() as messages:
            enc = load_encoder(config, engine.predictor.model, dummy=False)
    finally:
        os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert enc.cached is False and messages == ["ONNX encoder exported"]
    assert enc.path != engine.encoder.path and enc.path.parent == engine.encoder.path.parent
    assert sorted(os.listdir(enc.path.parent)) == sorted([enc.path.name, engine.encoder.path.name])


def test_dummy_weights_export_is_never_cached(engine, config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the default checkpoint would be
    before = sorted(os.listdir(engine.encoder.path.parent))
    dummy = replace(config, checkpoint=None, dummy_weights=True)
    enc = load_encoder(dummy, engine.predictor.model, dummy=True)
    assert enc.path is None and enc.cached is False
    assert enc.session.run(None, {"image": np.zeros((1, 3, 1024, 1024), np.float32)})[0].shape == (
        1, 256, 64, 64)
    assert list(tmp_path.iterdir()) == [] and sorted(os.listdir(engine.encoder.path.parent)) == before
    assert not Path(os.environ["XDG_CACHE_HOME"], "sam2-service").exists()
