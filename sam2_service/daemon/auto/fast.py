"""The fast path of ``{"op": "auto"}``: SAM2AutomaticMaskGenerator's masks without its waste.

sam2 1.1.0's ``SAM2AutomaticMaskGenerator._process_batch`` upsamples every candidate's
256x256 logits (3 per point) to the crop's size before filtering any, computes the
stability score and the boxes there, then run-length encodes the survivors in a Python loop
(``mask_to_rle_pytorch``); ``MaskData.cat`` deep-copies those RLE lists at every batch, and
the masks are decoded again from RLE, pixel run by pixel run, to be painted.
:func:`process_points` computes the same masks from the same logits:

1. the decoder's low-resolution logits (:func:`.decoder.decode_points`, the image side
   shared by the batch; predicted IoUs alike);
2. the predicted-IoU filter (``iou > pred_iou_thresh``) on those, before any upsampling: it
   reads only the IoUs, so the survivors are the same;
3. the survivors upsampled as sam2 does (``F.interpolate``, bilinear, to the crop's (H, W),
   in float32), a few at a time, each chunk giving its stability scores (sam2's
   ``calculate_stability_score`` on the same values), then its thresholded masks, boxes
   (``batched_mask_to_box``) and the crop-edge filter (``is_box_near_crop_edge``), exactly
   sam2's functions on exactly sam2's values;
4. each kept mask stored as its bounding box's pixels, bit-packed (:class:`PackedMasks`),
   instead of an RLE: what the box NMS, the areas and the painting need, in a fraction of
   the memory and time.

Box NMS within a crop (:func:`crop_nms`) and across crops (:func:`cross_crop_nms`) are
``_process_crop``'s and ``_generate_masks``' ``batched_nms`` on the same boxes and scores.
With the same logits the masks are then those of ``generate``, in the same order; what
differs is the decoder's float rounding (~1e-6 in the logits), which can flip a pixel whose
logit is that close to a threshold, or the order of two masks whose scores are that close.
Not used with ``minMaskRegionArea`` > 0 (sam2 then changes the upsampled logits in
``postprocess_masks``) nor with ``--no-fastpath``: :mod:`.generator` runs sam2's own code
then. torch is imported lazily; sam2 internals go through
:mod:`~sam2_service.daemon.inference.sam2_compat`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from ..inference import sam2_compat

#: Pixels upsampled at once (float32 logits, 64 MiB): candidates go through step 3 in
#: chunks of ``max(1, UPSAMPLE_PIXELS // (H * W))``.
UPSAMPLE_PIXELS = 16 * 2**20


@dataclasses.dataclass
class PackedMasks:
    """Masks stored by their bounding boxes, bit-packed.

    Attributes:
        shape: (H, W) of the frame the masks are in (the crop's, then the image's).
        offsets: Nx2 int64, (y, x) of each box's top-left corner in that frame.
        sizes: Nx2 int64, (h, w) of each box (0 x 0 for an empty mask).
        bits: per mask, ``np.packbits`` of its box's h x w bool pixels (row-major, y then x).
    """

    shape: tuple[int, int]
    offsets: np.ndarray
    sizes: np.ndarray
    bits: list[np.ndarray]

    @classmethod
    def empty(cls, shape: tuple[int, int]) -> "PackedMasks":
        return cls(shape, np.zeros((0, 2), np.int64), np.zeros((0, 2), np.int64), [])

    def __len__(self) -> int:
        return len(self.bits)

    def in_box(self, i: int) -> tuple[np.ndarray, tuple[int, int]]:
        """Mask ``i`` as (h x w bool, its box's pixels; (y0, x0) of the box in the frame)."""
        h, w = (int(v) for v in self.sizes[i])
        crop = np.unpackbits(self.bits[i], count=h * w).reshape(h, w).view(bool)
        return crop, (int(self.offsets[i, 0]), int(self.offsets[i, 1]))

    def full(self, i: int) -> np.ndarray:
        """Mask ``i`` as HxW bool in the frame."""
        crop, (y0, x0) = self.in_box(i)
        out = np.zeros(self.shape, dtype=bool)
        out[y0:y0 + crop.shape[0], x0:x0 + crop.shape[1]] = crop
        return out

    def take(self, index: np.ndarray) -> "PackedMasks":
        """The masks at ``index`` (int array), in that order."""
        return PackedMasks(self.shape, self.offsets[index], self.sizes[index],
                           [self.bits[int(i)] for i in index])

    def moved(self, shape: tuple[int, int], dy: int, dx: int) -> "PackedMasks":
        """The same masks in a frame of ``shape`` where this frame's origin is at (dy, dx)
        (sam2's ``uncrop_masks``, which pads each mask into the image)."""
        return PackedMasks(shape, self.offsets + np.array([[dy, dx]]), self.sizes, self.bits)

    @classmethod
    def concat(cls, parts: list["PackedMasks"], shape: tuple[int, int]) -> "PackedMasks":
        """``parts`` (all in frame ``shape``) one after another."""
        if not parts:
            return cls.empty(shape)
        return cls(shape, np.concatenate([p.offsets for p in parts]),
                   np.concatenate([p.sizes for p in parts]), [b for p in parts for b in p.bits])


def pack(masks: np.ndarray, boxes: np.ndarray) -> PackedMasks:
    """Pack KxHxW bool ``masks`` by their KxN4 int ``boxes`` (x0, y0, x1, y1), inclusive as
    sam2's ``batched_mask_to_box`` gives them ([0, 0, 0, 0] for an empty mask)."""
    k, h, w = masks.shape
    offsets, sizes, bits = np.zeros((k, 2), np.int64), np.zeros((k, 2), np.int64), []
    for i in range(k):
        x0, y0, x1, y1 = (int(v) for v in boxes[i])
        crop = masks[i, y0:y1 + 1, x0:x1 + 1]
        if not crop.any():  # an empty mask: its box [0, 0, 0, 0] holds nothing
            crop = crop[:0, :0]
        offsets[i], sizes[i] = (y0, x0), crop.shape
        bits.append(np.packbits(crop))
    return PackedMasks((h, w), offsets, sizes, bits)


@dataclasses.dataclass
class Candidates:
    """Masks of one crop, as sam2's ``MaskData`` holds them between ``_process_batch`` and
    ``_generate_masks``' end: per mask its box (Nx4 int64 tensor, (x0, y0, x1, y1)
    inclusive, in the frame of ``masks``), ``iou`` and ``stability`` (N float32 tensors),
    ``points`` (Nx2 float32 tensor, (x, y) pixels of its prompt), ``areas`` (N int64,
    pixels) and the masks; ``crop_boxes`` (Nx4 int tensor, the crop (x0, y0, x1, y1) each
    came from) once :func:`crop_nms` has put them in image coordinates."""

    boxes: Any
    iou: Any
    stability: Any
    points: Any
    areas: np.ndarray
    masks: PackedMasks
    crop_boxes: Any = None

    def take(self, keep: Any) -> "Candidates":
        """The candidates at ``keep`` (an int64 tensor of indices, in that order)."""
        idx = keep.cpu().numpy()
        return Candidates(self.boxes[keep], self.iou[keep], self.stability[keep],
                          self.points[keep], self.areas[idx], self.masks.take(idx),
                          None if self.crop_boxes is None else self.crop_boxes[keep])

    @classmethod
    def concat(cls, parts: list["Candidates"], shape: tuple[int, int]) -> "Candidates":
        """``parts`` one after another (``MaskData.cat``); all in frame ``shape``."""
        import torch

        def cat(name: str) -> Any:
            return torch.cat([getattr(p, name) for p in parts])

        crops = None if any(p.crop_boxes is None for p in parts) or not parts else cat("crop_boxes")
        if not parts:
            z = torch.zeros(0)
            return cls(torch.zeros((0, 4), dtype=torch.int64), z, z, torch.zeros((0, 2)),
                       np.zeros(0, np.int64), PackedMasks.empty(shape))
        return cls(cat("boxes"), cat("iou"), cat("stability"), cat("points"),
                   np.concatenate([p.areas for p in parts]),
                   PackedMasks.concat([p.masks for p in parts], shape), crops)


def _upsampled(gen: Any, low: Any, im_size: tuple[int, int], crop_box: list[int],
               orig_size: tuple[int, int]) -> tuple[Any, Any, Any, np.ndarray, np.ndarray]:
    """Step 3 for one chunk of Kx256x256 logits: sam2's ``postprocess_masks`` upsampling
    (without hole filling), stability filter, threshold, boxes and crop-edge filter, as in
    ``_process_batch``. Returns (keep K bool tensor, stability, boxes Kx4 of the kept,
    masks kept x H x W bool on the host, areas int64) of the kept."""
    import torch
    import torch.nn.functional as F
    from sam2.utils.amg import batched_mask_to_box, calculate_stability_score, is_box_near_crop_edge

    up = F.interpolate(low.float()[:, None], im_size, mode="bilinear", align_corners=False)[:, 0]
    stability = calculate_stability_score(up, gen.mask_threshold, gen.stability_score_offset)
    keep = (stability >= gen.stability_score_thresh if gen.stability_score_thresh > 0.0
            else torch.ones_like(stability, dtype=torch.bool))
    masks = up[keep] > gen.mask_threshold
    del up
    boxes = batched_mask_to_box(masks)
    inside = ~is_box_near_crop_edge(boxes, crop_box, [0, 0, orig_size[1], orig_size[0]])
    idx = torch.nonzero(keep).flatten()
    keep = torch.zeros_like(keep)
    keep[idx[inside]] = True
    masks, boxes = masks[inside], boxes[inside]
    areas = masks.flatten(1).sum(1, dtype=torch.int64).cpu().numpy()
    return keep, stability[keep], boxes, masks.cpu().numpy(), areas


def process_points(gen: Any, points: np.ndarray, im_size: tuple[int, int], crop_box: list[int],
                   orig_size: tuple[int, int], decode: Callable[..., tuple[Any, Any]]
                   ) -> Candidates:
    """``SAM2AutomaticMaskGenerator._process_batch(points, im_size, crop_box, orig_size,
    normalize=True)`` (sam2 1.1.0, ``use_m2m`` off, no hole filling), the fast way (see the
    module docstring); on the image set in ``gen.predictor``.

    Args:
        gen: the SAM2AutomaticMaskGenerator (its thresholds and predictor).
        points: Kx2 float64, (x, y) pixels in the crop.
        im_size: the crop's (H, W).
        crop_box: [x0, y0, x1, y1] of the crop in the image.
        orig_size: the image's (H, W).
        decode: :func:`.decoder.decode_points` or :func:`.decoder.sam2_decode`.

    Returns:
        The kept masks, in the crop's frame, in sam2's order.
    """
    import torch

    pred = gen.predictor
    pts = torch.as_tensor(points, dtype=torch.float32, device=pred.device)
    coords = sam2_compat.transforms(pred).transform_coords(pts, normalize=True, orig_hw=im_size)
    labels = torch.ones(coords.shape[0], dtype=torch.int, device=coords.device)
    low, iou = decode(pred, coords[:, None, :], labels[:, None], gen.multimask_output)
    per_point = low.shape[1]
    low, iou = low.flatten(0, 1), iou.flatten(0, 1)
    pts = pts.repeat_interleave(per_point, dim=0)
    if gen.pred_iou_thresh > 0.0:
        keep = iou > gen.pred_iou_thresh
        low, iou, pts = low[keep], iou[keep], pts[keep]
    step = max(1, UPSAMPLE_PIXELS // (im_size[0] * im_size[1]))
    parts = []
    for s in range(0, low.shape[0], step):
        keep, stability, boxes, masks, areas = _upsampled(gen, low[s:s + step], im_size,
                                                          crop_box, orig_size)
        parts.append(Candidates(boxes, iou[s:s + step][keep], stability,
                                pts[s:s + step][keep], areas, pack(masks, boxes.cpu().numpy())))
    return Candidates.concat(parts, im_size)


def crop_nms(gen: Any, batches: list[Candidates], crop_box: list[int],
             orig_size: tuple[int, int]) -> Candidates:
    """``_process_crop``'s end: box NMS within the crop (``batched_nms`` on the boxes and
    predicted IoUs, ``box_nms_thresh``), then boxes, points and masks into the image's
    frame and ``crop_boxes`` set."""
    import torch
    from sam2.utils.amg import uncrop_boxes_xyxy, uncrop_points
    from torchvision.ops.boxes import batched_nms

    x0, y0, x1, y1 = crop_box
    data = Candidates.concat(batches, (y1 - y0, x1 - x0))
    keep = batched_nms(data.boxes.float(), data.iou, torch.zeros_like(data.boxes[:, 0]),
                       iou_threshold=gen.box_nms_thresh)
    data = data.take(keep)
    data.boxes = uncrop_boxes_xyxy(data.boxes, crop_box)
    data.points = uncrop_points(data.points, crop_box)
    data.crop_boxes = torch.tensor([crop_box for _ in range(len(data.areas))]).reshape(-1, 4)
    data.masks = data.masks.moved(orig_size, y0, x0)
    return data


def cross_crop_nms(gen: Any, crops: list[Candidates], orig_size: tuple[int, int]) -> Candidates:
    """``_generate_masks``' end: with more than one crop, box NMS across crops preferring
    masks of smaller crops (scores ``1 / box_area(crop_box)``, ``crop_nms_thresh``)."""
    import torch
    from torchvision.ops.boxes import batched_nms, box_area

    data = Candidates.concat(crops, orig_size)
    if len(crops) > 1:
        scores = 1 / box_area(data.crop_boxes)
        keep = batched_nms(data.boxes.float(), scores.to(data.boxes.device),
                           torch.zeros_like(data.boxes[:, 0]), iou_threshold=gen.crop_nms_thresh)
        data = data.take(keep)
    return data
