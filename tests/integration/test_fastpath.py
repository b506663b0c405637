"""The daemon's speed-ups around SAM2 (``sam2_service.daemon.inference.fastpath``, ``--no-fastpath``)
against ``SAM2ImagePredictor`` called as it comes, with the same weights and prompts.

The fast path must not change results: scores and low-resolution logits within float
rounding, masks equal pixel for pixel except where SAM2's own logit lies within
:data:`NEAR_THRESHOLD` of the mask threshold (the CPU's channels-last upscaling runs other
convolution kernels, so logits agree to ~1e-7, not bit for bit).
"""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
from PIL import Image

from sam2_service.daemon.config import ServiceConfig
from sam2_service.daemon.inference import sam2_compat
from sam2_service.daemon.inference.engine import Sam2Engine
from sam2_service.daemon.inference.fastpath import DeviceTransforms
from sam2_service.daemon.inference.prompts import Prompts

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


#: Where SAM2's full-resolution mask logit is closer than this to the threshold (0), the
#: fast path's mask may differ from SAM2's; nowhere else.
NEAR_THRESHOLD = 1e-4


def reference_predict(pred, p: Prompts):
    """SAM2's (masks HxW bool, scores, low-res logits, full-resolution logits) for ``p``."""
    with reference_inference():
        full, scores, logits = pred.predict(point_coords=p.point_coords,
                                            point_labels=p.point_labels, box=p.box,
                                            mask_input=p.mask_input,
                                            multimask_output=p.multimask_output,
                                            return_logits=True)
    full = full.reshape(-1, HEIGHT, WIDTH)
    return full > pred.mask_threshold, scores.reshape(-1), logits.reshape(-1, 256, 256), full


def assert_masks_match(ours: np.ndarray, sam2_masks: np.ndarray, sam2_logits: np.ndarray) -> None:
    """``ours`` equals SAM2's masks at every pixel whose logit is not within
    :data:`NEAR_THRESHOLD` of the threshold (at most 1 pixel in 100,000 may be that close)."""
    assert ours.dtype == bool and ours.shape == sam2_masks.shape
    differ = ours != sam2_masks
    far = np.abs(sam2_logits) >= NEAR_THRESHOLD
    assert not (differ & far).any(), f"{np.count_nonzero(differ & far)} pixels differ"
    assert np.count_nonzero(differ) <= ours.size // 100_000


@pytest.mark.parametrize("case", list(CASES))
def test_fastpath_predict_matches_sam2(engine, reference, case):
    eng, emb = engine
    assert eng.fastpath
    out = eng.predict_all(emb, CASES[case])
    masks, scores, logits, full = reference_predict(reference, CASES[case])
    assert_masks_match(out.masks, masks, full)
    np.testing.assert_allclose(out.scores, scores, atol=1e-5)
    np.testing.assert_allclose(out.logits, logits, atol=1e-4)


def test_refinement_with_mask_input_matches_sam2(engine, reference):
    eng, emb = engine
    first = eng.predict_all(emb, CASES["box"])
    p = Prompts(f32([[600, 350]]), np.array([1], np.int32), None, multimask_output=False,
                mask_input=first.logits[:1])
    out = eng.predict_all(emb, p)
    masks, scores, _, full = reference_predict(reference, p)
    assert_masks_match(out.masks, masks, full)
    np.testing.assert_allclose(out.scores, scores, atol=1e-5)


def test_upscaling_is_channels_last_on_the_cpu_only_in_the_fast_path(engine, reference):
    import torch

    eng, _ = engine
    ours = eng.predictor.model.sam_mask_decoder.output_upscaling
    sam2s = reference.model.sam_mask_decoder.output_upscaling
    convs = [m for m in ours if isinstance(m, torch.nn.ConvTranspose2d)]
    assert len(convs) == 2
    channels_last = torch.channels_last
    assert all(c.weight.is_contiguous(memory_format=channels_last) for c in convs) == (
        TEST_DEVICE == "cpu")
    assert all(m.weight.is_contiguous() for m in sam2s if isinstance(m, torch.nn.ConvTranspose2d))


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

    base = sam2_compat.transforms(reference)
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
    assert not eng.fastpath and eng.info().fastpath is False
    emb = eng.embed(image)
    out = eng.predict_all(emb, CASES["box"])
    masks, scores, _, _ = reference_predict(reference, CASES["box"])
    assert np.array_equal(out.masks, masks)  # SAM2 untouched: bit for bit
    np.testing.assert_allclose(out.scores, scores, atol=1e-5)
