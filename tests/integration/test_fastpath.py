"""The daemon's speed-ups around SAM2 (``sam2_service.daemon.fastpath``, ``--no-fastpath``)
against ``SAM2ImagePredictor`` called as it comes, with the same weights and prompts.

The fast path must not change results: masks equal pixel for pixel here (the same
operations on the CPU), scores and low-resolution logits within float rounding.
"""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
from PIL import Image

from sam2_service.daemon.config import ServiceConfig
from sam2_service.daemon.engine import Sam2Engine
from sam2_service.daemon.fastpath import DeviceTransforms
from sam2_service.daemon.prompts import Prompts

from .conftest import TEST_DEVICE, reference_inference, reference_predictor

pytestmark = pytest.mark.model

#: skimage's coffee photo stretched to 1280x720: a real image, not the model's square size.
WIDTH, HEIGHT = 1280, 720


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.array(Image.fromarray(skimage.data.coffee()).resize((WIDTH, HEIGHT)))


@pytest.fixture(scope="module")
def engine(checkpoint, image):
    eng = Sam2Engine.load(ServiceConfig(checkpoint=checkpoint, device=TEST_DEVICE))
    return eng, eng.embed(image)


@pytest.fixture(scope="module")
def reference(reference_model, image):
    return reference_predictor(reference_model, image)


def f32(x) -> np.ndarray | None:
    return None if x is None else np.asarray(x, dtype=np.float32)


CASES = {
    "box": Prompts(None, None, f32([200, 100, 900, 600]), multimask_output=False),
    "points": Prompts(f32([[640, 360], [100, 80]]), np.array([1, 0], np.int32), None,
                      multimask_output=False),
    "multimask_point": Prompts(f32([[500, 300]]), np.array([1], np.int32), None,
                               multimask_output=True),
    "box_and_point": Prompts(f32([[600, 350]]), np.array([1], np.int32),
                             f32([300, 150, 1000, 650]), multimask_output=False),
    "batched_boxes": Prompts(None, None, f32([[10, 10, 400, 300], [500, 200, 1200, 700],
                                              [0, 0, 1280, 720]]), multimask_output=False),
}


def reference_predict(pred, p: Prompts):
    with reference_inference():
        masks, scores, logits = pred.predict(point_coords=p.point_coords,
                                             point_labels=p.point_labels, box=p.box,
                                             mask_input=p.mask_input,
                                             multimask_output=p.multimask_output)
    return (masks.reshape(-1, HEIGHT, WIDTH) > 0, scores.reshape(-1),
            logits.reshape(-1, 256, 256))


@pytest.mark.parametrize("case", list(CASES))
def test_fastpath_predict_matches_sam2(engine, reference, case):
    eng, emb = engine
    assert eng.fastpath
    out = eng.predict_all(emb, CASES[case])
    masks, scores, logits = reference_predict(reference, CASES[case])
    assert out.masks.dtype == bool and out.masks.shape == masks.shape
    assert np.array_equal(out.masks, masks), f"{np.count_nonzero(out.masks != masks)} pixels differ"
    np.testing.assert_allclose(out.scores, scores, atol=1e-5)
    np.testing.assert_allclose(out.logits, logits, atol=1e-4)


def test_refinement_with_mask_input_matches_sam2(engine, reference):
    eng, emb = engine
    first = eng.predict_all(emb, CASES["box"])
    p = Prompts(f32([[600, 350]]), np.array([1], np.int32), None, multimask_output=False,
                mask_input=first.logits[:1])
    out = eng.predict_all(emb, p)
    masks, scores, _ = reference_predict(reference, p)
    assert np.array_equal(out.masks, masks)
    np.testing.assert_allclose(out.scores, scores, atol=1e-5)


def test_cached_positional_encoding_equals_sam2s(engine):
    import torch

    eng, _ = engine
    encoder = eng.predictor.model.sam_prompt_encoder
    cached = encoder.get_dense_pe()
    with torch.inference_mode():
        fresh = type(encoder).get_dense_pe(encoder)
    assert cached.is_contiguous() and not fresh.is_contiguous()
    assert cached is encoder.get_dense_pe()  # computed once
    assert torch.equal(cached, fresh)


def test_device_transforms_equal_sam2_transforms(reference, image):
    """The image half of SAM2Transforms, run by :class:`DeviceTransforms` (here on the
    CPU, the code that runs on a GPU), gives SAM2's input tensor; non-RGB-array inputs go
    through SAM2's own path."""
    import torch

    base = reference._transforms
    ours = DeviceTransforms(base, "cpu")
    for img in (image, image[:301, :517], np.asarray(skimage.data.astronaut())):
        expected = base(img)
        got = ours(img)
        assert got.shape == expected.shape == (3, 1024, 1024)
        assert torch.allclose(got, expected, atol=1e-6)
    pil = Image.fromarray(image)
    assert torch.equal(ours(pil), base(pil))
    assert ours.mask_threshold == base.mask_threshold  # the rest is the wrapped object's


def test_no_fastpath_engine_matches_too(checkpoint, reference, image):
    """``--no-fastpath``: SAM2's predictor as it comes, the baseline that benchmarks
    compare with; its masks are the same."""
    eng = Sam2Engine.load(ServiceConfig(checkpoint=checkpoint, device=TEST_DEVICE,
                                        fastpath=False))
    assert not eng.fastpath and eng.info()["fastpath"] is False
    emb = eng.embed(image)
    out = eng.predict_all(emb, CASES["box"])
    masks, scores, _ = reference_predict(reference, CASES["box"])
    assert np.array_equal(out.masks, masks)
    np.testing.assert_allclose(out.scores, scores, atol=1e-5)
