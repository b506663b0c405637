"""SAM2AutomaticMaskGenerator, cut into steps the inference worker can interleave.

sam2 1.1.0's ``SAM2AutomaticMaskGenerator.generate`` runs, per image crop, ``set_image``
then ``_process_batch`` for each ``points_per_batch`` points, then box NMS within the crop,
and NMS across crops. :class:`StepGenerator` calls those same methods one step at a time:
the image embedding comes from the daemon's :class:`~.engine.Sam2Engine` (and so from its
embedding cache), and is put into the generator's own predictor before each batch, as
``set_image`` would have left it. The masks are therefore those of ``generate`` with the
same model and settings. Blocking; call from the inference thread only. torch and sam2 are
imported lazily (the daemon layer is the model's); the generator's private method is called
through :mod:`~sam2_service.daemon.inference.sam2_compat`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ...wire.auto import AutoSettings
from ...wire.codecs import decode_rle
from ..inference import sam2_compat
from ..inference.engine import Embedding, Sam2Engine


@dataclasses.dataclass(frozen=True)
class CropPlan:
    """One crop of an image for SAM2AutomaticMaskGenerator: ``box`` (x0, y0, x1, y1) in
    the image's pixels (half-open), its crop ``layer``, and its point ``batches`` (each
    Kx2 float64, (x, y) pixels within the crop)."""

    box: tuple[int, int, int, int]
    layer: int
    batches: tuple[np.ndarray, ...]


@dataclasses.dataclass
class GeneratedMasks:
    """What :meth:`StepGenerator.finish` returns for one image: per mask ``areas`` (pixels,
    int64), ``scores`` (predicted IoU, float64) and ``stability`` (stability score,
    float64), and the masks: ``rles``, sam2.utils.amg's COCO-style uncompressed RLEs
    (column-major), from :class:`StepGenerator`; or ``packed``, a
    :class:`~.fastgen.PackedMasks`, from :class:`~.fastgen.FastStepGenerator`."""

    rles: list[dict[str, Any]] | None
    areas: np.ndarray
    scores: np.ndarray
    stability: np.ndarray
    packed: Any = None

    def mask(self, i: int) -> np.ndarray:
        """Mask ``i`` as HxW bool."""
        if self.packed is not None:
            return self.packed.mask(i)
        assert self.rles is not None
        rle = self.rles[i]
        h, w = rle["size"]
        # the wire's numpy decoder (np.repeat of the runs), not sam2.utils.amg.rle_to_mask,
        # which fills the runs in a Python loop (~13 ms a mask at 512x512 on the 2-core CPU)
        return decode_rle(rle, int(w), int(h)) > 0

    def patch(self, i: int) -> tuple[int, int, np.ndarray]:
        """Mask ``i`` as (y0, x0, h x w bool) covering its pixels (the whole frame for an
        RLE)."""
        return self.packed.patch(i) if self.packed is not None else (0, 0, self.mask(i))

    def rle(self, i: int) -> dict[str, Any]:
        """Mask ``i`` as COCO uncompressed RLE (``{"size": [H, W], "counts": [...]}``)."""
        if self.packed is not None:
            return self.packed.rle(i)
        assert self.rles is not None
        return self.rles[i]


class StepGenerator:
    """One request's SAM2AutomaticMaskGenerator on the engine's model.

    Args:
        engine: the loaded engine (its model, device and precision are used).
        settings: the request's settings (SAM2AutomaticMaskGenerator keywords); the rest
            (mask_threshold 0, crop_nms_thresh 0.7, crop_overlap_ratio 512/1500, ...)
            are SAM2AutomaticMaskGenerator's defaults.
    """

    def __init__(self, engine: Sam2Engine, settings: AutoSettings) -> None:
        from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

        self.engine = engine
        self.gen = SAM2AutomaticMaskGenerator(engine.predictor.model,
                                              **dataclasses.asdict(settings))

    def plan(self, height: int, width: int, step_points: int) -> list[CropPlan]:
        """The crops of an HxW image and their point batches, in ``generate``'s order; a
        batch holds ``min(points_per_batch, step_points)`` points. Each point's masks and
        filters are independent of the others in its batch, so the masks, and their order
        after concatenation, are those of ``generate``'s ``points_per_batch`` batches."""
        from sam2.utils.amg import batch_iterator, generate_crop_boxes

        boxes, layers = generate_crop_boxes((height, width), self.gen.crop_n_layers,
                                            self.gen.crop_overlap_ratio)
        plans = []
        for box, layer in zip(boxes, layers):
            x0, y0, x1, y1 = box
            points = self.gen.point_grids[layer] * np.array([[x1 - x0, y1 - y0]])
            batches = tuple(b for (b,) in batch_iterator(min(self.gen.points_per_batch, step_points),
                                                          points))
            plans.append(CropPlan((x0, y0, x1, y1), layer, batches))
        return plans

    def batch(self, embedding: Embedding, crop: CropPlan, index: int,
              orig_size: tuple[int, int]) -> Any:
        """Masks of point batch ``index`` of ``crop`` (``_process_batch``), on the crop's
        embedding; returns sam2's MaskData (RLEs in the HxW image ``orig_size``)."""
        self.engine.use_embedding(embedding, self.gen.predictor)
        with self.engine._inference():
            return sam2_compat.process_batch(self.gen, crop.batches[index], embedding.orig_hw,
                                             list(crop.box), orig_size)

    def finish_crop(self, batches: list[Any], crop: CropPlan) -> Any:
        """Box NMS within the crop and back to image coordinates (``_process_crop``'s end)."""
        import torch
        from sam2.utils.amg import MaskData, uncrop_boxes_xyxy, uncrop_points
        from torchvision.ops.boxes import batched_nms

        data = MaskData()
        for b in batches:
            data.cat(b)
        keep = batched_nms(data["boxes"].float(), data["iou_preds"],
                           torch.zeros_like(data["boxes"][:, 0]),
                           iou_threshold=self.gen.box_nms_thresh)
        data.filter(keep)
        data["boxes"] = uncrop_boxes_xyxy(data["boxes"], list(crop.box))
        data["points"] = uncrop_points(data["points"], list(crop.box))
        data["crop_boxes"] = torch.tensor([list(crop.box) for _ in range(len(data["rles"]))])
        self.gen.predictor.reset_predictor()
        return data

    def finish(self, crops: list[Any]) -> GeneratedMasks:
        """NMS across crops (``_generate_masks``'s end) and the masks' records."""
        import torch
        from sam2.utils.amg import MaskData, area_from_rle
        from torchvision.ops.boxes import batched_nms, box_area

        data = MaskData()
        for c in crops:
            data.cat(c)
        if len(crops) > 1:
            scores = 1 / box_area(data["crop_boxes"])
            keep = batched_nms(data["boxes"].float(), scores.to(data["boxes"].device),
                               torch.zeros_like(data["boxes"][:, 0]),
                               iou_threshold=self.gen.crop_nms_thresh)
            data.filter(keep)
        data.to_numpy()
        rles = list(data["rles"])
        return GeneratedMasks(
            rles=rles, areas=np.array([area_from_rle(r) for r in rles], dtype=np.int64),
            scores=np.asarray(data["iou_preds"], dtype=np.float64).reshape(-1),
            stability=np.asarray(data["stability_score"], dtype=np.float64).reshape(-1))
