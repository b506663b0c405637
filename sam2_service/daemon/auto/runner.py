"""``{"op": "auto"}``: automatic mask generation as a sequence of inference-worker jobs.

The work is cut into steps, each its own job on the inference thread (so a waiting
segment request, queued while a step runs, goes before the next step): decoding the image,
then per tile and per crop one embedding (from the embedding cache when there) and one job
per ``pointsPerBatch`` points, then the crop's NMS. Painting and stitching run on a
thread off the model's. Each step is logged as ``Auto progress`` (done/total) and shown
in ``info``'s ``auto`` list. A client hanging up cancels the coroutine, so no further step
is queued; the request's deadline is ``--auto-timeout`` from its arrival. Each step
takes a place in the worker's queue like any request, so with ``--max-queue`` requests
already waiting the auto request fails with ``busy`` at its next step.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...wire.auto import MAX_LABELS, AutoRequest
from ...wire.errors import InvalidRequest, RequestTimeout, UnknownImage
from ..inference.engine import Embedding, Sam2Engine
from ..inference.imaging import decode_image
from ..inference.prompts import check_size
from ..inference.worker import ImageBytes, InferenceWorker, read_image
from ..ops.logs import event
from .fastgen import FastStepGenerator, supports
from .generator import GeneratedMasks, StepGenerator
from .labels import Tile, label_stats, paint_patches, stitch_tiles, tile_grid
from .masks import object_rles

log = logging.getLogger("sam2_service.auto")


@dataclass
class AutoProgress:
    """One running auto request: steps ``done`` of ``total`` (total is 0 until planned)."""

    request_id: str
    done: int = 0
    total: int = 0


@dataclass(frozen=True)
class AutoOutcome:
    """The label map (HxW uint16), its table (wire ``labels`` entries), the ``imageId`` and
    ms by stage: ``decode``, ``encode`` (embeddings computed), ``generate`` (mask decoder
    and filtering), ``paint`` (painting, stitching, table), ``queue`` (time waiting for the
    inference thread between steps)."""

    labels: np.ndarray
    table: list[dict[str, Any]]
    image_id: str
    timings: dict[str, float]


class AutoRunner:
    """Runs auto requests step by step on ``worker``, at most ``step_points`` grid points
    per step (``--auto-step-points``); ``running`` lists their progress."""

    def __init__(self, worker: InferenceWorker, step_points: int = 16) -> None:
        self.worker = worker
        self.step_points = step_points
        self.running: dict[int, AutoProgress] = {}

    async def run(self, request: AutoRequest, deadline: float,
                  image: ImageBytes | None = None, step_points: int | None = None) -> AutoOutcome:
        """Answer ``request`` by ``deadline`` (``time.monotonic()``); ``image`` is its
        ``imageBase64`` already read (the device pool's), or None to read it in its first
        step; ``step_points``: at most this many grid points a step (None:
        ``self.step_points``; fewer for a large image, to bound its working memory).

        Raises:
            InvalidRequest: imageId with tiling or crops, size mismatch, too many labels.
            UnknownImage: imageId not cached.
            RequestTimeout, Busy, ShuttingDown, OutOfMemory: from the worker.
        """
        progress = AutoProgress(request.request_id)
        self.running[id(progress)] = progress
        timings = {"decode": 0.0, "encode": 0.0, "generate": 0.0, "paint": 0.0, "queue": 0.0}
        try:
            pixels, hw, image_id = await self._step(self._load, request, image, timings,
                                                    "decode", deadline=deadline)
            gen = await self._step(_generator, self.worker.engine, request.settings,
                                   timings, "generate", deadline=deadline)
            tiles = (tile_grid(hw[0], hw[1], request.tile_shape, request.halo)
                     if request.tile_shape else tile_grid(hw[0], hw[1], hw, (0, 0)))
            step = min(self.step_points, step_points or self.step_points)
            plans = [gen.plan(t.outer[1] - t.outer[0], t.outer[3] - t.outer[2], step)
                     for t in tiles]
            progress.total = sum(len(p) + sum(len(c.batches) for c in p) for p in plans)
            results = []
            for tile, plan in zip(tiles, plans):
                results.append(await self._tile(gen, pixels, image_id, tile, plan, progress,
                                                timings, deadline))
            t0 = time.perf_counter()
            labels, table = await asyncio.to_thread(_assemble, hw, tiles, results,
                                                    request.object_masks)
            timings["paint"] += (time.perf_counter() - t0) * 1000
        except RequestTimeout:
            raise RequestTimeout(f"the auto request did not finish within --auto-timeout of its "
                                 f"arrival ({progress.done} of {progress.total} steps done); "
                                 "tile the image, lower pointsPerSide or raise --auto-timeout"
                                 ) from None
        finally:
            del self.running[id(progress)]
        return AutoOutcome(labels, table, image_id, timings)

    async def _step(self, fn: Any, *args: Any, deadline: float) -> Any:
        """Run ``fn(*args[:-2])`` as one worker job (:meth:`InferenceWorker.run_job`, out of
        memory guarded) and return its result; ``args[-2]`` is the timings dict, ``args[-1]``
        the stage that gets the job's run time (its wait for the inference thread goes to
        ``queue``)."""
        *fn_args, timings, stage = args
        done = await self.worker.run_job(fn, *fn_args, deadline=deadline)
        timings["queue"] += done.queue_ms
        timings[stage] += done.run_ms
        return done.value

    def _load(self, request: AutoRequest, image: ImageBytes | None
              ) -> tuple[np.ndarray | None, tuple[int, int], str]:
        """Decode the image (inference thread): (HxWx3 uint8 or None for imageId, (H, W),
        imageId)."""
        if request.image_base64 is None:
            assert request.image_id is not None
            if request.tile_shape is not None or request.settings.crop_n_layers > 0:
                raise InvalidRequest("imageId works for auto only without tileShape and with "
                                     "cropNLayers 0 (the daemon keeps embeddings, not pixels); "
                                     "send imageBase64", field="imageId")
            emb = self.worker.cached_embedding(request.image_id)
            if emb is None:
                raise UnknownImage(f"imageId {request.image_id} is not cached (never sent, "
                                   "evicted or released): send the image as imageBase64",
                                   field="imageId")
            check_size(request.width, request.height, emb.orig_hw)
            return None, emb.orig_hw, request.image_id
        assert request.image_base64 is not None
        image = image or read_image(request.image_base64)
        pixels = decode_image(image.data, self.worker.max_image_pixels)
        check_size(request.width, request.height, pixels.shape[:2])
        return pixels, pixels.shape[:2], image.image_id

    def _embedding(self, image: np.ndarray | None, key: str,
                   box: tuple[int, int, int, int]) -> Embedding:
        """The cached embedding under ``key``, or that of ``image[y0:y1, x0:x1]`` (box is
        (y0, y1, x0, x1)), cached (inference thread).

        Raises:
            UnknownImage: not cached, and no pixels to embed (``imageId``).
        """
        emb = self.worker.cached_embedding(key)
        if emb is not None:
            return emb
        if image is None:
            raise UnknownImage(f"the embedding of imageId {key} was evicted during the "
                               "request: send the image as imageBase64", field="imageId")
        emb = self.worker.engine.embed(np.ascontiguousarray(image[box[0]:box[1], box[2]:box[3]]))
        self.worker.keep_embedding(key, emb)
        return emb

    async def _tile(self, gen: StepGenerator, image: np.ndarray | None, image_id: str, tile: Tile,
                    plan: list, progress: AutoProgress, timings: dict[str, float],
                    deadline: float) -> GeneratedMasks:
        """All steps of one tile; returns its masks (in the tile's outer region)."""
        oy0, oy1, ox0, ox1 = tile.outer
        size = (oy1 - oy0, ox1 - ox0)
        whole = image is None or size == image.shape[:2]
        crops = []
        for crop in plan:
            x0, y0, x1, y1 = crop.box
            box = (oy0 + y0, oy0 + y1, ox0 + x0, ox0 + x1)
            key = image_id if whole and crop.layer == 0 else f"{image_id}@{box}"
            emb = await self._step(self._embedding, image, key, box, timings, "encode",
                                   deadline=deadline)
            self._advance(progress)
            batches = []
            for i in range(len(crop.batches)):
                batches.append(await self._step(gen.batch, emb, crop, i, size, timings,
                                                "generate", deadline=deadline))
                self._advance(progress)
            crops.append(await self._step(gen.finish_crop, batches, crop, timings, "generate",
                                          deadline=deadline))
        return await self._step(gen.finish, crops, timings, "generate", deadline=deadline)

    def _advance(self, progress: AutoProgress) -> None:
        progress.done += 1
        event(log, "Auto progress", requestId=progress.request_id, done=progress.done,
              total=progress.total)


def _generator(engine: Any, settings: Any) -> StepGenerator:
    """:class:`~.fastgen.FastStepGenerator` where it gives the request's masks
    (:func:`~.fastgen.supports`), else SAM2's own steps (:class:`~.generator.StepGenerator`)."""
    fast = isinstance(engine, Sam2Engine) and supports(engine, settings)
    return (FastStepGenerator if fast else StepGenerator)(engine, settings)


def _assemble(hw: tuple[int, int], tiles: list[Tile], results: list[GeneratedMasks],
              object_masks: bool = False) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Paint each tile's masks, stitch the tiles, and build the label table (with each
    label's whole mask as ``maskRle`` when ``object_masks``)."""
    maps, kept = [], []
    try:
        for tile, masks in zip(tiles, results):
            shape = (tile.outer[1] - tile.outer[0], tile.outer[3] - tile.outer[2])
            m, k = paint_patches(shape, masks.areas, masks.patch)
            maps.append(m)
            kept.append(k)
        if len(tiles) == 1:
            labels = maps[0]
            source = np.stack([np.zeros(len(kept[0]), np.int64),
                               np.arange(1, len(kept[0]) + 1)], axis=1)
        else:
            labels, source = stitch_tiles(hw, tiles, maps)
    except ValueError as exc:
        raise InvalidRequest(f"{exc} (at most {MAX_LABELS}); raise predIouThresh or "
                             "stabilityScoreThresh, or lower pointsPerSide",
                             field="pointsPerSide") from None
    areas, boxes = label_stats(labels)
    table = []
    for k, (t, local) in enumerate(source.tolist()):
        i = int(kept[t][local - 1])
        x1, y1, x2, y2 = boxes[k].tolist()
        table.append({"id": k + 1, "score": float(results[t].scores[i]),
                      "stabilityScore": float(results[t].stability[i]), "area": int(areas[k]),
                      "bbox": {"x1": x1, "y1": y1, "x2": x2, "y2": y2}})
    if object_masks:
        for entry, rle in zip(table, object_rles(labels, tiles, maps, kept, results)):
            entry["maskRle"] = rle
    return labels, table
