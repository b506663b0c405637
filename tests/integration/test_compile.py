"""``--compile decoder`` against eager SAM2: the same masks and scores, and no compilation
at request time.

One compiled :class:`Sam2Engine` for the module (its warm-up compiles, tens of seconds on a
CPU), beside an eager ``SAM2ImagePredictor`` with the same random weights (the session's
``reference_model``), both on skimage's astronaut photo.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import skimage.data

from sam2_service.daemon.config import ServiceConfig
from sam2_service.daemon.inference import compiling, sam2_compat
from sam2_service.daemon.inference.engine import Sam2Engine
from sam2_service.daemon.inference.prompts import Prompts

from .conftest import (
    TEST_DEVICE,
    reference_inference,
    reference_predictor,
    short_tmp_socket_dir,
    start_daemon,
)

#: The parity bounds of ``--compile``: mask IoU at least this, score within SCORE_TOL.
MIN_IOU = 0.99
SCORE_TOL = 1e-3

BOX = np.array([140, 40, 340, 300], dtype=np.float32)  # the astronaut's head (512x512)
POINTS = np.array([[250, 150], [200, 300], [400, 400], [60, 60], [300, 100], [220, 200],
                   [120, 450], [450, 50], [330, 250], [180, 120]], dtype=np.float32)
LABELS = np.array([1, 1, 0, 0, 1, 1, 0, 0, 1, 1], dtype=np.int32)


def _boxes(n: int) -> np.ndarray:
    return np.stack([BOX + np.float32(7 * i) for i in range(n)])


#: Prompts as segment requests make them, and the auto op's point batches (Bx1x2); shapes
#: the warm-up did not make exactly (other token counts and batches) included.
CASES = {
    "box": Prompts(None, None, BOX, False),
    "1 point": Prompts(POINTS[:1], LABELS[:1], None, True),
    "3 points": Prompts(POINTS[:3], LABELS[:3], None, False),
    "3 points multimask": Prompts(POINTS[:3], LABELS[:3], None, True),
    "10 points": Prompts(POINTS, LABELS, None, False),
    "box and 2 points": Prompts(POINTS[:2], LABELS[:2], BOX, False),
    "5 boxes": Prompts(None, None, _boxes(5), False),
    "1 box in boxes": Prompts(None, None, _boxes(1), False),
    "auto batch of 6 points": Prompts(POINTS[:6, None], np.ones((6, 1), np.int32), None, True),
    "auto batch of 6 points, one mask": Prompts(POINTS[:6, None], np.ones((6, 1), np.int32),
                                                None, False),
    "auto batch of 1 point": Prompts(POINTS[:1, None], np.ones((1, 1), np.int32), None, True),
}


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def compiled(checkpoint):
    """(engine, log records of its warm-up): SAM2.1-tiny, ``--compile decoder``, warmed up."""
    engine = Sam2Engine.load(ServiceConfig(checkpoint=checkpoint, device=TEST_DEVICE,
                                           compile="decoder"))
    handler = Records()
    logger = logging.getLogger("sam2_service.engine")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        engine.warmup()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    return engine, handler.records


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return skimage.data.astronaut()  # 512x512x3 uint8


@pytest.fixture(scope="module")
def embedding(compiled, photo):
    return compiled[0].embed(photo)


@pytest.fixture(scope="module")
def reference(reference_model, photo):
    return reference_predictor(reference_model, photo)


def eager(reference, prompts: Prompts):
    """(masks NxHxW bool, scores N, logits Nx256x256) of the eager predictor."""
    with reference_inference():
        masks, scores, logits = reference.predict(
            point_coords=prompts.point_coords, point_labels=prompts.point_labels,
            box=prompts.box, mask_input=prompts.mask_input,
            multimask_output=prompts.multimask_output)
    h, w = sam2_compat.image_size(reference)
    return (masks.reshape(-1, h, w) > 0, scores.reshape(-1),
            logits.reshape(-1, *logits.shape[-2:]))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def check_parity(engine, embedding, reference, prompts: Prompts) -> None:
    graphs = compiling.graph_count()
    got = engine.predict_all(embedding, prompts)
    assert compiling.graph_count() == graphs, "the request compiled a new graph"
    masks, scores, _ = eager(reference, prompts)
    assert got.masks.shape == masks.shape
    for i in range(len(masks)):
        assert iou(got.masks[i], masks[i]) >= MIN_IOU, f"mask {i}"
    np.testing.assert_allclose(got.scores, scores, rtol=0, atol=SCORE_TOL)


@pytest.mark.parametrize("case", list(CASES))
def test_compiled_matches_eager_without_recompiling(case, compiled, embedding, reference):
    check_parity(compiled[0], embedding, reference, CASES[case])


@pytest.mark.parametrize("multimask", [False, True])
def test_refinement_with_mask_input(multimask, compiled, embedding, reference):
    _, scores, logits = eager(reference, CASES["box"])
    prompts = Prompts(POINTS[:2], LABELS[:2], None, multimask,
                      mask_input=logits[int(np.argmax(scores))][None])
    check_parity(compiled[0], embedding, reference, prompts)


def test_masks_are_not_trivial(compiled, embedding):
    """Random weights still give masks with some area, so IoU compares something."""
    out = compiled[0].predict_all(embedding, CASES["box"])
    assert 0 < out.masks.sum() < out.masks.size


def test_info_and_log_report_the_compile(compiled):
    engine, records = compiled
    parts = {p: compiling.torch_mode(p, engine.device) for p in compiling.PARTS["decoder"]}
    info = engine.info().compile
    assert info["mode"] == "decoder" and info["parts"] == parts
    assert info["compileMs"] > 0 and info["graphs"] >= engine.compiled.graphs > 0
    (rec,) = [r for r in records if r.getMessage() == "Compiled"]
    assert rec.fields == {"mode": "decoder", "parts": parts,
                          "compileMs": info["compileMs"], "graphs": engine.compiled.graphs}


@pytest.mark.parametrize("multimask", [True, False])
def test_auto_point_batches_do_not_recompile(multimask, compiled, embedding):
    """The auto op's steps (SAM2AutomaticMaskGenerator's ``_process_batch``): 25 points in
    batches of 16, 8 and 1."""
    from sam2_service.daemon.auto.generator import StepGenerator
    from sam2_service.wire.auto import AutoSettings

    gen = StepGenerator(compiled[0], AutoSettings(points_per_side=5, points_per_batch=16,
                                                  multimask_output=multimask))
    (crop,) = gen.plan(*embedding.orig_hw, step_points=8)
    assert [len(b) for b in crop.batches] == [8, 8, 8, 1]
    graphs = compiling.graph_count()
    for i in range(len(crop.batches)):
        gen.batch(embedding, crop, i, embedding.orig_hw)
    assert compiling.graph_count() == graphs


@pytest.mark.skipif(TEST_DEVICE != "cpu", reason="breaks the C++ compiler of CPU code")
def test_a_failed_compile_stops_the_daemon_at_startup(monkeypatch, tmp_path):
    """No working C++ compiler: the daemon exits 1 with one line naming --compile, never
    serving eagerly in silence. An empty compile cache, so that nothing compiled is reused."""
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    daemon = start_daemon(Path(short_tmp_socket_dir()), "--dummy-weights", "--compile",
                          "decoder", wait=False)
    assert daemon.process.wait(timeout=180) == 1
    out = daemon.output()
    assert "--compile decoder: torch.compile failed on cpu: " in out
    assert "start with --compile off (SAM2_SERVICE_COMPILE=off)" in out
    assert "Server listening" not in out
