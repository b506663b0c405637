"""The automatic mask generator's steps without the work its result does not need.

:class:`FastStepGenerator` gives the masks of :class:`~.generator.StepGenerator` (that is,
of SAM2AutomaticMaskGenerator, sam2 1.1.0 ``_process_batch`` / ``_process_crop`` /
``_generate_masks``), with float rounding the only difference, while:

* running the mask decoder through :class:`~.decoder.PointDecoder` (the image side
  projected once per image, not once per point) and upscaling only the points with a mask
  whose predicted IoU passes ``pred_iou_thresh`` (SAM2 upscales every mask of the batch to
  the image's size before it filters by IoU);
* upscaling each point's passing masks to full size only to compute the stability score,
  the box and the binary mask, then keeping the mask bit-packed within its box
  (:class:`PackedMasks`) instead of SAM2's Python-list RLE, which ``MaskData.cat``
  deep-copies at every step;
* painting each mask only within its box (:func:`~.labels.paint_patches`).

The filters, the box rule (``batched_mask_to_box``), the crop-edge rule and the NMS calls
are SAM2's own functions, applied in SAM2's order, so the same masks survive in the same
order. Used for float32 engines with the fast path on, one mask per point set
(``multimaskOutput`` true) and ``minMaskRegionArea`` 0 (:func:`supports`); otherwise the
daemon runs :class:`~.generator.StepGenerator`. Blocking; inference thread only.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ...wire.auto import AutoSettings
from ...wire.codecs import encode_rle
from ..inference import sam2_compat
from ..inference.engine import Embedding, Sam2Engine
from .decoder import ImageTensors, PointDecoder
from .generator import CropPlan, GeneratedMasks, StepGenerator

#: Points through the transformer at once: per point, 4 is as fast as 1 and 8 or more is
#: slower on the 2-core CPU (the B x 4096 x 256 tensors fall out of the cache).
POINTS_PER_PASS = 4


def supports(engine: Sam2Engine, settings: AutoSettings) -> bool:
    """Whether :class:`FastStepGenerator` gives this request's masks: fast path on, float32,
    three masks per point, no hole filling (``minMaskRegionArea`` 0), SAM2.1's decoder."""
    dec = engine.predictor.model.sam_mask_decoder
    return (bool(getattr(engine, "fastpath", False)) and engine.precision == "float32"
            and settings.multimask_output and settings.min_mask_region_area == 0
            and dec.pred_obj_scores and dec.use_high_res_features)


@dataclasses.dataclass
class PackedMasks:
    """Binary masks in an H x W frame, each kept as its box's pixels, bit-packed.

    Attributes:
        shape: (H, W) of the frame (the tile's outer region), pixels.
        origins: per mask (y0, x0), the top-left pixel of its box in the frame.
        sizes: per mask (h, w) of its box (1 x 1 for an empty mask).
        bits: per mask ``np.packbits`` of the h x w bool patch (row-major).
    """

    shape: tuple[int, int]
    origins: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    sizes: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    bits: list[np.ndarray] = dataclasses.field(default_factory=list)

    def add(self, mask: np.ndarray, box: tuple[int, int, int, int], offset: tuple[int, int]
            ) -> None:
        """Keep ``mask`` (h x w bool, the crop's) by its box (x0, y0, x1, y1), inclusive as
        ``batched_mask_to_box`` gives it; ``offset`` (y, x) places the crop in the frame."""
        x0, y0, x1, y1 = box
        patch = mask[y0:y1 + 1, x0:x1 + 1]
        self.origins.append((y0 + offset[0], x0 + offset[1]))
        self.sizes.append(patch.shape)
        self.bits.append(np.packbits(patch, axis=None))

    def take(self, index: np.ndarray) -> PackedMasks:
        """The masks at ``index`` (int array), in that order."""
        idx = [int(i) for i in index]
        return PackedMasks(self.shape, [self.origins[i] for i in idx],
                           [self.sizes[i] for i in idx], [self.bits[i] for i in idx])

    def extend(self, other: PackedMasks) -> None:
        self.origins += other.origins
        self.sizes += other.sizes
        self.bits += other.bits

    def patch(self, i: int) -> tuple[int, int, np.ndarray]:
        """Mask ``i`` as (y0, x0, h x w bool patch)."""
        h, w = self.sizes[i]
        patch = np.unpackbits(self.bits[i], count=h * w).view(bool).reshape(h, w)
        return (*self.origins[i], patch)

    def mask(self, i: int) -> np.ndarray:
        """Mask ``i`` as H x W bool."""
        y0, x0, patch = self.patch(i)
        out = np.zeros(self.shape, dtype=bool)
        out[y0:y0 + patch.shape[0], x0:x0 + patch.shape[1]] = patch
        return out

    def rle(self, i: int) -> dict[str, Any]:
        """Mask ``i`` as COCO uncompressed RLE (column-major, first run background), the
        format of sam2.utils.amg's ``mask_to_rle_pytorch``."""
        return encode_rle(self.mask(i))


@dataclasses.dataclass
class Candidates:
    """Masks that passed a batch's filters: ``boxes`` K x 4 (x0, y0, x1, y1) inclusive, in
    the crop (float32 tensor, as SAM2's NMS takes them), ``iou`` and ``stability`` (K,
    float32 tensors; all three on the CPU, where the NMS of a few thousand boxes runs),
    ``areas`` (K, int64 numpy), ``masks`` the bits; ``crop_box`` the crop (x0, y0, x1, y1)
    once :meth:`FastStepGenerator.finish_crop` has put the boxes in image coordinates."""

    boxes: Any
    iou: Any
    stability: Any
    areas: np.ndarray
    masks: PackedMasks
    crop_box: tuple[int, int, int, int] | None = None

    @staticmethod
    def cat(parts: list[Candidates], shape: tuple[int, int]) -> Candidates:
        """The parts one after another (``MaskData.cat``)."""
        import torch

        if not parts:
            return Candidates(torch.zeros((0, 4)), torch.zeros(0), torch.zeros(0),
                              np.zeros(0, np.int64), PackedMasks(shape))
        masks = PackedMasks(shape)
        for p in parts:
            masks.extend(p.masks)
        return Candidates(torch.cat([p.boxes for p in parts]).reshape(-1, 4),
                          torch.cat([p.iou for p in parts]),
                          torch.cat([p.stability for p in parts]),
                          np.concatenate([p.areas for p in parts]).astype(np.int64), masks)

    def take(self, keep: Any) -> Candidates:
        """The candidates at ``keep`` (int64 tensor), in its order (``MaskData.filter``)."""
        k = keep.cpu().numpy()
        return Candidates(self.boxes[keep], self.iou[keep], self.stability[keep],
                          self.areas[k], self.masks.take(k))


class FastStepGenerator(StepGenerator):
    """:class:`~.generator.StepGenerator`'s interface (plan, batch, finish_crop, finish),
    computed as the module docstring says. ``batch`` returns :class:`Candidates`."""

    def __init__(self, engine: Sam2Engine, settings: AutoSettings) -> None:
        super().__init__(engine, settings)
        self._decoder_of: tuple[Embedding, PointDecoder] | None = None

    def _decoder(self, embedding: Embedding) -> PointDecoder:
        """The decoder of the crop being worked on (a crop's batches come one after another,
        so only the last one is kept: 14 MiB of image tensors)."""
        if self._decoder_of is None or self._decoder_of[0] is not embedding:
            model = self.engine.predictor.model
            self.engine.use_embedding(embedding, self.gen.predictor)  # checks the model
            image = ImageTensors(model, embedding.features, sam2_compat.dense_pe(model))
            self._decoder_of = (embedding, PointDecoder(model, image))
        return self._decoder_of[1]

    def batch(self, embedding: Embedding, crop: CropPlan, index: int,
              orig_size: tuple[int, int]) -> Candidates:
        """The masks of point batch ``index`` of ``crop`` that pass the IoU, stability and
        crop-edge filters (``_process_batch``'s), on the crop's embedding."""
        import torch

        with self.engine._inference():
            dec = self._decoder(embedding)
            device = self.engine.predictor.device
            points = torch.as_tensor(crop.batches[index], dtype=torch.float32, device=device)
            coords = sam2_compat.transforms(self.gen.predictor).transform_coords(
                points, normalize=True, orig_hw=embedding.orig_hw)
            parts = []
            for start in range(0, len(coords), POINTS_PER_PASS):
                part = coords[start:start + POINTS_PER_PASS, None, :]
                labels = torch.ones(part.shape[:2], dtype=torch.int, device=device)
                parts += self._pass(dec, dec.tokens(part, labels), embedding.orig_hw,
                                    list(crop.box), orig_size)
        return Candidates.cat(parts, orig_size)

    def _pass(self, dec: PointDecoder, tokens: Any, crop_hw: tuple[int, int],
              crop_box: list[int], orig_size: tuple[int, int]) -> list[Candidates]:
        """Each point's passing masks: upscaled, stability-filtered, thresholded, boxed,
        crop-edge-filtered, packed; SAM2's order (point, then mask 1..3)."""
        import torch
        from sam2.utils.amg import batched_mask_to_box, calculate_stability_score, is_box_near_crop_edge

        gen = self.gen
        passing = (tokens.iou > gen.pred_iou_thresh if gen.pred_iou_thresh > 0.0
                   else torch.ones_like(tokens.iou, dtype=torch.bool))
        out = []
        for p in torch.nonzero(passing.any(1)).flatten().tolist():
            sel = torch.nonzero(passing[p]).flatten()
            low = dec.masks(tokens, torch.tensor([p], device=sel.device))[:, sel]
            logits = torch.nn.functional.interpolate(low, crop_hw, mode="bilinear",
                                                     align_corners=False)[0]
            stability = calculate_stability_score(logits, gen.mask_threshold,
                                                  gen.stability_score_offset)
            iou = tokens.iou[p, sel]
            if gen.stability_score_thresh > 0.0:
                keep = stability >= gen.stability_score_thresh
                logits, stability, iou = logits[keep], stability[keep], iou[keep]
            masks = logits > gen.mask_threshold
            boxes = batched_mask_to_box(masks)
            keep = ~is_box_near_crop_edge(boxes, crop_box, [0, 0, orig_size[1], orig_size[0]])
            masks, boxes, stability, iou = masks[keep], boxes[keep], stability[keep], iou[keep]
            if not len(masks):
                continue
            packed = PackedMasks(orig_size)
            host = masks.cpu().numpy()
            for m, box in zip(host, boxes.tolist()):
                packed.add(m, box, (crop_box[1], crop_box[0]))
            out.append(Candidates(boxes.float().cpu(), iou.float().cpu(), stability.float().cpu(),
                                  host.sum(axis=(1, 2), dtype=np.int64), packed))
        return out

    def finish_crop(self, batches: list[Candidates], crop: CropPlan) -> Candidates:
        """Box NMS within the crop, then boxes in image coordinates (``_process_crop``)."""
        import torch
        from torchvision.ops.boxes import batched_nms

        data = Candidates.cat(batches, batches[0].masks.shape)
        keep = batched_nms(data.boxes, data.iou, torch.zeros_like(data.boxes[:, 0]),
                           iou_threshold=self.gen.box_nms_thresh)
        data = data.take(keep)
        x0, y0 = crop.box[0], crop.box[1]
        data.boxes = data.boxes + torch.tensor([x0, y0, x0, y0], dtype=data.boxes.dtype)
        data.crop_box = crop.box
        self._decoder_of = None
        return data

    def finish(self, crops: list[Candidates]) -> GeneratedMasks:
        """NMS across crops by 1 / crop area (``_generate_masks``), and the records."""
        import torch
        from torchvision.ops.boxes import batched_nms

        shape = crops[0].masks.shape
        data = Candidates.cat(crops, shape)
        if len(crops) > 1:
            areas = [float((b[2] - b[0]) * (b[3] - b[1]))
                     for c in crops if (b := c.crop_box) for _ in range(len(c.areas))]
            scores = 1 / torch.tensor(areas, dtype=torch.float32)
            keep = batched_nms(data.boxes, scores, torch.zeros_like(data.boxes[:, 0]),
                               iou_threshold=self.gen.crop_nms_thresh)
            data = data.take(keep)
        return GeneratedMasks(rles=None, areas=data.areas,
                              scores=data.iou.double().cpu().numpy().reshape(-1),
                              stability=data.stability.double().cpu().numpy().reshape(-1),
                              packed=data.masks)
