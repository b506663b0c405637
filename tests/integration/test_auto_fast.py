"""The fast automatic-mask path (``daemon/auto/decoder.py``, ``fastgen.py``) against SAM2's
own code with the same random weights: the reassociated mask decoder against
``MaskDecoder``, and the generator's masks against ``SAM2AutomaticMaskGenerator``, with
thresholds set inside the random model's IoU and stability range so that the filters the
fast path moves (IoU before upscaling) and keeps (stability, crop edges, NMS) all act."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import skimage.data
from PIL import Image

from sam2_service.daemon.auto.fastgen import FastStepGenerator, supports
from sam2_service.daemon.auto.generator import StepGenerator
from sam2_service.daemon.auto.labels import paint_patches
from sam2_service.wire.auto import AutoSettings

from .conftest import TEST_DEVICE, TEST_DTYPE, reference_inference
from .test_auto import paint_by_decreasing_area

pytestmark = pytest.mark.model

needs_float32 = pytest.mark.skipif(TEST_DTYPE != "float32",
                                   reason="the fast auto path is float32 only (bfloat16 on CUDA "
                                          "uses SAM2's steps, tested by test_auto.py)")


@pytest.fixture(scope="module")
def engine(checkpoint):
    from sam2_service.daemon.config import ServiceConfig
    from sam2_service.daemon.inference.engine import Sam2Engine

    return Sam2Engine.load(ServiceConfig(checkpoint=checkpoint, device=TEST_DEVICE))


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.array(Image.fromarray(skimage.data.astronaut()).resize((320, 256)))


@pytest.fixture(scope="module")
def embeddings(engine, photo) -> dict:
    """Embeddings by crop box (x0, y0, x1, y1), the whole image's first."""
    return {(0, 0, photo.shape[1], photo.shape[0]): engine.embed(photo)}


@pytest.fixture(scope="module")
def embedding(embeddings):
    return next(iter(embeddings.values()))


def _generate(cls, engine, settings: AutoSettings, image: np.ndarray, embeddings: dict,
              crop_nms_thresh: float | None = None):
    """Run a generator's steps over the whole image as the daemon's runner does; crop
    embeddings are made once into ``embeddings`` (keyed by crop box)."""
    gen = cls(engine, settings)
    if crop_nms_thresh is not None:
        gen.gen.crop_nms_thresh = crop_nms_thresh
    hw = image.shape[:2]
    crops = []
    for crop in gen.plan(*hw, step_points=16):
        x0, y0, x1, y1 = crop.box
        if crop.box not in embeddings:
            embeddings[crop.box] = engine.embed(np.ascontiguousarray(image[y0:y1, x0:x1]))
        emb = embeddings[crop.box]
        batches = [gen.batch(emb, crop, i, hw) for i in range(len(crop.batches))]
        crops.append(gen.finish_crop(batches, crop))
    return gen.finish(crops)


@needs_float32
def test_point_decoder_equals_sam2_mask_decoder(engine, embedding):
    import torch

    from sam2_service.daemon.auto.decoder import ImageTensors, PointDecoder
    from sam2_service.daemon.inference import sam2_compat

    model = engine.predictor.model
    with torch.inference_mode():
        pe = sam2_compat.dense_pe(model)
        dec = PointDecoder(model, ImageTensors(model, embedding.features, pe))
        coords = torch.tensor([[[10.0, 20.0]], [[512.0, 512.0]], [[1000.0, 3.0]],
                               [[300.5, 700.25]], [[0.0, 1023.0]]])
        labels = torch.ones(5, 1, dtype=torch.int)
        tokens = dec.tokens(coords, labels)
        ours = dec.masks(tokens, torch.arange(5))
        sparse, dense = model.sam_prompt_encoder(points=(coords, labels), boxes=None,
                                                 masks=None)
        ref, ref_iou, _, _ = model.sam_mask_decoder(
            image_embeddings=embedding.features["image_embed"], image_pe=pe,
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
            multimask_output=True, repeat_image=True,
            high_res_features=embedding.features["high_res_feats"])
        some = dec.masks(tokens, torch.tensor([3, 0]))
    assert ours.shape == ref.shape == (5, 3, 256, 256)
    scale = float(ref.abs().max())
    assert float((ours - ref).abs().max()) < 1e-4 * max(scale, 1.0)
    assert float((tokens.iou - ref_iou).abs().max()) < 1e-5
    assert float((some - ref[[3, 0]]).abs().max()) < 1e-4 * max(scale, 1.0)
    assert float((ours > 0).eq(ref > 0).float().mean()) > 0.9999


def _midrange(engine, image, embeddings) -> dict:
    """Thresholds at the medians of the random model's IoU predictions and stability
    scores over this image's candidates (so that about half of each filter passes)."""
    everything = {"points_per_side": 6, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0,
                  "box_nms_thresh": 1.0}
    result = _generate(FastStepGenerator, engine, AutoSettings(**everything), image, embeddings)
    assert len(result.scores) > 50
    return {**everything, "pred_iou_thresh": float(np.median(result.scores)),
            "stability_score_thresh": float(np.median(result.stability))}


@needs_float32
def test_fast_generator_gives_sam2_generators_masks(engine, reference_model, photo, embeddings):
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    settings = _midrange(engine, photo, embeddings)
    with reference_inference():
        records = SAM2AutomaticMaskGenerator(reference_model, **settings).generate(photo)
    expected = paint_by_decreasing_area(records, photo.shape[:2])
    assert expected.max() >= 3, "degenerate model: too few masks for the test to mean much"
    st = AutoSettings(**settings)
    assert supports(engine, st)
    for cls in (FastStepGenerator, StepGenerator):
        result = _generate(cls, engine, st, photo, embeddings)
        labels, _ = paint_patches(photo.shape[:2], result.areas, result.patch)
        assert len(result.areas) == len(records), cls.__name__
        assert labels.max() == expected.max(), cls.__name__
        assert float(np.mean(labels == expected)) >= 0.999, cls.__name__
        assert np.allclose(sorted(result.scores), sorted(r["predicted_iou"] for r in records),
                           atol=1e-5)
        assert np.allclose(sorted(result.stability),
                           sorted(r["stability_score"] for r in records), atol=1e-3)


@needs_float32
@pytest.mark.parametrize("crop_nms_thresh", [0.7, 1.0])
def test_fast_generator_with_crops_gives_sam2s_steps_masks(engine, photo, embeddings,
                                                           crop_nms_thresh):
    """cropNLayers 1: four more crops; NMS within crops and across them (SAM2's 0.7, and
    1.0 so that many masks from every crop are placed in the image). Compared with
    :class:`StepGenerator` (SAM2's own steps, against the generator in test_auto.py) on
    the same crop embeddings."""
    settings = AutoSettings(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                            box_nms_thresh=1.0, crop_n_layers=1)
    fast = _generate(FastStepGenerator, engine, settings, photo, embeddings, crop_nms_thresh)
    ref = _generate(StepGenerator, engine, settings, photo, embeddings, crop_nms_thresh)
    assert len(fast.areas) == len(ref.areas) >= (20 if crop_nms_thresh == 1.0 else 1)
    np.testing.assert_allclose(fast.scores, ref.scores, atol=1e-5)  # same masks, same order
    for i in range(len(ref.areas)):
        assert float(np.mean(fast.mask(i) == ref.mask(i))) >= 0.999
        assert abs(int(fast.areas[i]) - int(ref.areas[i])) <= max(3, ref.areas[i] // 1000)
    hw = photo.shape[:2]
    got, _ = paint_patches(hw, fast.areas, fast.patch)
    want, _ = paint_patches(hw, ref.areas, ref.patch)
    assert got.max() == want.max() and float(np.mean(got == want)) >= 0.999


def test_fast_path_is_used_only_where_it_gives_the_same_masks():
    dec = SimpleNamespace(pred_obj_scores=True, use_high_res_features=True)
    eng = SimpleNamespace(fastpath=True, precision="float32",
                          predictor=SimpleNamespace(model=SimpleNamespace(sam_mask_decoder=dec)))
    assert supports(eng, AutoSettings())
    assert not supports(SimpleNamespace(**{**vars(eng), "fastpath": False}), AutoSettings())
    assert not supports(SimpleNamespace(**{**vars(eng), "precision": "bfloat16"}),
                        AutoSettings())
    assert not supports(eng, AutoSettings(multimask_output=False))
    assert not supports(eng, AutoSettings(min_mask_region_area=10))
