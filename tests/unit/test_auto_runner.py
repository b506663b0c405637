"""AutoRunner's stepping with a fake generator and FakeEngine (no model): segment jobs go
between steps, cancelling stops it, the deadline is its own, tiles are cached and stitched."""

from __future__ import annotations

import asyncio
import base64
import time

import numpy as np
import pytest

from sam2_service.daemon.auto import runner as auto_mod
from sam2_service.daemon.auto.generator import CropPlan, GeneratedMasks
from sam2_service.daemon.inference.worker import InferenceWorker
from sam2_service.wire.auto import AutoRequest, AutoSettings
from sam2_service.wire.codecs import encode_png
from sam2_service.wire.errors import RequestTimeout
from tests.fake_engine import FakeEngine

STEP_S = 0.03


class FakeGenerator:
    """One crop per tile, 5 batches; each batch sleeps STEP_S; masks: the tile's bright
    pixels as one mask (so identical tiles give identical masks)."""

    def __init__(self, engine, settings) -> None:
        self.batches = 0

    def plan(self, h, w, step_points):
        return [CropPlan((0, 0, w, h), 0, tuple(np.zeros((1, 2)) for _ in range(5)))]

    def batch(self, emb, crop, index, orig_size):
        time.sleep(STEP_S)
        return emb

    def finish_crop(self, batches, crop):
        return batches[0]

    def finish(self, crops):
        img = crops[0].features["image"][..., 0] > 127
        mask = np.asfortranarray(img)
        return _Masks([], np.array([int(mask.sum())]), np.array([0.9]), np.array([0.8]), mask)


class _Masks(GeneratedMasks):
    def __init__(self, rles, areas, scores, stability, mask):
        super().__init__(rles, areas, scores, stability)
        self._mask = mask

    def mask(self, i):
        return self._mask


@pytest.fixture
def image() -> np.ndarray:
    img = np.zeros((40, 80, 3), np.uint8)
    img[10:30, 30:50] = 255  # one object crossing the vertical centre line
    return img


def _request(image, **kw) -> AutoRequest:
    h, w = image.shape[:2]
    return AutoRequest("a1", w, h, base64.b64encode(encode_png(image)).decode(), None,
                       AutoSettings(), **kw)


@pytest.fixture(autouse=True)
def fake_generator(monkeypatch):
    monkeypatch.setattr(auto_mod, "StepGenerator", FakeGenerator)


def test_segment_job_runs_between_auto_steps(image):
    async def main():
        worker = InferenceWorker(FakeEngine(), 1_000_000, cache_bytes=10**8)
        runner = auto_mod.AutoRunner(worker)
        task = asyncio.ensure_future(runner.run(_request(image), time.monotonic() + 30))
        while not runner.running or next(iter(runner.running.values())).done < 2:
            await asyncio.sleep(0.005)
        await worker.call(lambda: None)  # an interactive job: waits one step at most
        progress = next(iter(runner.running.values()))
        assert progress.done < progress.total == 6
        out = await task
        assert out.labels.max() == 1 and not runner.running
        worker.close(5)

    asyncio.run(main())


def test_cancel_stops_further_steps(image):
    async def main():
        engine = FakeEngine()
        worker = InferenceWorker(engine, 1_000_000, cache_bytes=10**8)
        runner = auto_mod.AutoRunner(worker)
        task = asyncio.ensure_future(runner.run(_request(image), time.monotonic() + 30))
        while not runner.running or next(iter(runner.running.values())).done < 2:
            await asyncio.sleep(0.005)
        progress = next(iter(runner.running.values()))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        done = progress.done
        await asyncio.sleep(5 * STEP_S)
        assert progress.done == done < progress.total and not runner.running
        worker.close(5)

    asyncio.run(main())


def test_deadline_is_the_auto_timeout(image):
    async def main():
        worker = InferenceWorker(FakeEngine(), 1_000_000)
        runner = auto_mod.AutoRunner(worker)
        with pytest.raises(RequestTimeout, match="--auto-timeout"):
            await runner.run(_request(image), time.monotonic() + 2.5 * STEP_S)
        worker.close(5)

    asyncio.run(main())


def test_tiles_are_embedded_once_cached_and_stitched(image):
    async def main():
        engine = FakeEngine()
        worker = InferenceWorker(engine, 1_000_000, cache_bytes=10**8)
        runner = auto_mod.AutoRunner(worker)
        req = _request(image, tile_shape=(40, 40), halo=(0, 8))
        out = await runner.run(req, time.monotonic() + 30)
        assert engine.embeds == 2
        assert out.labels.max() == 1 and out.labels[20, 40] == 1  # one id across the border
        assert out.table[0]["area"] == 400
        assert out.table[0]["bbox"] == {"x1": 30, "y1": 10, "x2": 50, "y2": 30}
        await runner.run(req, time.monotonic() + 30)
        assert engine.embeds == 2  # both tiles' embeddings came from the cache
        worker.close(5)

    asyncio.run(main())


def test_more_than_65535_masks_is_a_clear_invalid_request():
    from sam2_service.daemon.auto.labels import tile_grid
    from sam2_service.wire.errors import InvalidRequest

    n = 65536
    masks = _Masks([], np.ones(n, np.int64), np.zeros(n), np.zeros(n), None)
    masks.mask = lambda i: np.arange(n).reshape(1, n) == i  # one pixel each, all visible
    with pytest.raises(InvalidRequest, match="65,535") as err:
        auto_mod._assemble((1, n), tile_grid(1, n, (1, n), (0, 0)), [masks])
    assert err.value.field == "pointsPerSide"
