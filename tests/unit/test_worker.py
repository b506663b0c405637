"""InferenceWorker with a fake engine: cache use, queue bound, deadlines, cancellation,
shutdown and out-of-memory handling, without loading SAM2."""

from __future__ import annotations

import asyncio
import base64
import time

import numpy as np
import pytest

from sam2_service.daemon.inference.worker import InferenceWorker
from sam2_service.wire.codecs import compute_image_id as image_id
from sam2_service.wire.codecs import encode_png
from sam2_service.wire.errors import (
    Busy,
    ImageDecodeError,
    InvalidRequest,
    OutOfMemory,
    RequestTimeout,
    ShuttingDown,
    UnknownImage,
)
from sam2_service.wire.schema import BBox, EmbedRequest, SegmentRequest
from tests.fake_engine import FakeEngine, FakeOOM


def png(seed: int, w: int = 8, h: int = 6) -> str:
    rng = np.random.default_rng(seed)
    return base64.b64encode(encode_png(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))).decode()


def seg(image_b64: str | None = None, *, image_id_: str | None = None, w: int = 8, h: int = 6,
        bbox=(0, 0, 8, 6), rid: str = "r") -> SegmentRequest:
    return SegmentRequest(rid, w, h, image_b64, BBox(*bbox), (), image_id_)


def make_worker(engine: FakeEngine, **kw) -> InferenceWorker:
    kw.setdefault("cache_bytes", 10_000)
    return InferenceWorker(engine, 1_000_000, **kw)


def run(coro):
    return asyncio.run(coro)


# --- cache ----------------------------------------------------------------------------------


def test_resent_image_reuses_its_embedding_and_gives_the_same_mask():
    eng = FakeEngine()

    async def main():
        w = make_worker(eng)
        first = await w.segment(seg(png(1)))
        second = await w.segment(seg(png(1)))
        w.close()
        return first, second

    first, second = run(main())
    assert (first.cached, second.cached) == (False, True)
    assert eng.embeds == 1 and eng.predicts == 2
    assert np.array_equal(first.mask, second.mask)
    assert first.image_id == second.image_id == image_id(base64.b64decode(png(1)))
    assert second.timings["encode"] == 0.0 and first.timings["encode"] == 1.0
    assert set(second.timings) == {"decode", "encode", "predict", "queue"}
    assert first.mask.dtype == bool and first.mask.shape == (6, 8)


def test_segment_by_image_id_and_unknown_image():
    eng = FakeEngine()

    async def main():
        w = make_worker(eng)
        out = await w.segment(seg(png(2)))
        by_id = await w.segment(seg(image_id_=out.image_id, bbox=(1, 1, 5, 4)))
        with pytest.raises(UnknownImage, match="send the image") as info:
            await w.segment(seg(image_id_="f" * 64))
        w.close()
        return out, by_id, info.value

    out, by_id, exc = run(main())
    assert by_id.cached and by_id.image_id == out.image_id and eng.embeds == 1
    assert exc.code == "unknown_image" and exc.field == "imageId"
    mask = by_id.mask
    assert not mask[:, 5:].any() and not mask[:1].any()  # outside the box: background


def test_by_id_checks_the_size_against_the_cached_image():
    eng = FakeEngine()

    async def main():
        w = make_worker(eng)
        out = await w.segment(seg(png(3)))
        with pytest.raises(InvalidRequest, match="width"):
            await w.segment(seg(image_id_=out.image_id, w=9))
        w.close()

    run(main())


def test_eviction_by_bytes_makes_an_old_id_unknown():
    eng = FakeEngine()  # each 8x6x3 image embeds as 144 bytes

    async def main():
        w = make_worker(eng, cache_bytes=300)
        ids = [(await w.segment(seg(png(s)))).image_id for s in (10, 11, 12)]
        with pytest.raises(UnknownImage):
            await w.segment(seg(image_id_=ids[0]))
        again = await w.segment(seg(image_id_=ids[2]))
        stats = w.cache_stats()
        w.close()
        return again, stats

    again, stats = run(main())
    assert again.cached and stats.entries == 2 and stats.bytes == 288 and stats.evictions == 1


def test_another_model_identity_never_reuses_an_entry():
    eng = FakeEngine()

    async def main():
        w = make_worker(eng)
        out = await w.segment(seg(png(4)))
        eng.model_id = ("tiny", "other-checkpoint", "float32", "cpu")
        with pytest.raises(UnknownImage):
            await w.segment(seg(image_id_=out.image_id))
        again = await w.segment(seg(png(4)))
        w.close()
        return again

    again = run(main())
    assert not again.cached and eng.embeds == 2


def test_embed_then_release():
    eng = FakeEngine()

    async def main():
        w = make_worker(eng)
        e1 = await w.embed(EmbedRequest("e", png(5)))
        e2 = await w.embed(EmbedRequest("e", png(5), 8, 6))
        by_id = await w.segment(seg(image_id_=e1.image_id))
        released = w.release(e1.image_id), w.release(e1.image_id)
        with pytest.raises(UnknownImage):
            await w.segment(seg(image_id_=e1.image_id))
        w.close()
        return e1, e2, by_id, released

    e1, e2, by_id, released = run(main())
    assert (e1.cached, e2.cached, by_id.cached) == (False, True, True)
    assert (e1.width, e1.height) == (8, 6) and eng.embeds == 1
    assert released == (True, False)


def test_bad_input_is_refused_before_the_costly_encoding():
    eng = FakeEngine()

    async def main():
        w = make_worker(eng)
        with pytest.raises(InvalidRequest, match="bbox"):
            await w.segment(seg(png(6), bbox=(5, 5, 1, 1)))
        with pytest.raises(InvalidRequest, match="width is 9"):
            await w.embed(EmbedRequest("e", png(6), 9, 6))
        with pytest.raises(ImageDecodeError):
            await w.segment(seg("bm90IGFuIGltYWdl"))
        w.close()

    run(main())
    assert eng.embeds == 0


def test_cache_off_still_answers():
    eng = FakeEngine()

    async def main():
        w = make_worker(eng, cache_bytes=0)
        a = await w.segment(seg(png(7)))
        b = await w.segment(seg(png(7)))
        w.close()
        return a, b

    a, b = run(main())
    assert not a.cached and not b.cached and eng.embeds == 2 and np.array_equal(a.mask, b.mask)


# --- queue, deadlines, cancellation ---------------------------------------------------------


async def _blocked(eng: FakeEngine, w: InferenceWorker) -> asyncio.Task:
    """A job running on the worker, held inside the engine until eng.gate is set."""
    eng.gate.clear()
    eng.started.clear()
    task = asyncio.ensure_future(w.segment(seg(png(100))))
    assert await asyncio.to_thread(eng.started.wait, 5)
    return task


def test_busy_beyond_max_queue_is_immediate():
    eng = FakeEngine()

    async def main():
        w = make_worker(eng, max_queue=2)
        running = await _blocked(eng, w)
        waiting = [asyncio.ensure_future(w.segment(seg(png(s)))) for s in (20, 21)]
        await asyncio.sleep(0.05)
        assert w.waiting == 2
        t0 = time.perf_counter()
        with pytest.raises(Busy, match="max queue 2"):
            await w.segment(seg(png(22)))
        busy_s = time.perf_counter() - t0
        eng.gate.set()
        results = await asyncio.gather(running, *waiting)
        w.close()
        return busy_s, results

    busy_s, results = run(main())
    assert busy_s < 0.5
    assert len(results) == 3 and eng.embeds == 3


def test_deadline_passed_while_waiting_gives_timeout_and_the_job_never_runs():
    eng = FakeEngine()

    async def main():
        w = make_worker(eng)
        running = await _blocked(eng, w)
        with pytest.raises(RequestTimeout):
            await w.segment(seg(png(30)), deadline=time.monotonic() + 0.1)
        assert w.waiting == 0
        eng.gate.set()
        await running
        ok = await w.segment(seg(png(31)))
        w.close()
        return ok

    ok = run(main())
    assert eng.embeds == 2 and not ok.cached  # png(30) was never embedded


def test_deadline_passed_while_running_gives_timeout_and_worker_goes_on():
    eng = FakeEngine()

    async def main():
        w = make_worker(eng)
        eng.gate.clear()
        with pytest.raises(RequestTimeout):
            await w.segment(seg(png(40)), deadline=time.monotonic() + 0.2)
        eng.gate.set()
        return await w.segment(seg(png(40)))

    out = run(main())
    assert out.cached  # the timed-out job ran to its end; its embedding is kept


def test_cancelled_waiting_job_is_dropped():
    eng = FakeEngine()

    async def main():
        w = make_worker(eng)
        running = await _blocked(eng, w)
        gone = asyncio.ensure_future(w.segment(seg(png(50))))
        await asyncio.sleep(0.05)
        assert w.waiting == 1
        gone.cancel()
        await asyncio.sleep(0.05)
        assert w.waiting == 0
        eng.gate.set()
        await running
        await w.segment(seg(png(51)))
        w.close()

    run(main())
    assert eng.embeds == 2  # png(100) and png(51); png(50) never ran


def test_fail_waiting_answers_queued_jobs_and_lets_the_running_one_finish():
    eng = FakeEngine()

    async def main():
        w = make_worker(eng)
        running = await _blocked(eng, w)
        queued = [asyncio.ensure_future(w.segment(seg(png(s)))) for s in (60, 61)]
        await asyncio.sleep(0.05)
        assert w.fail_waiting() == 2
        for q in queued:
            with pytest.raises(ShuttingDown):
                await q
        with pytest.raises(ShuttingDown):
            await w.segment(seg(png(62)))
        eng.gate.set()
        return await running

    out = run(main())
    assert out.width == 8 and eng.embeds == 1


def test_out_of_memory_frees_caches_and_the_worker_goes_on():
    eng = FakeEngine()

    async def main():
        w = make_worker(eng)
        await w.segment(seg(png(70)))
        eng.fail_with = FakeOOM("CUDA out of memory. Tried to allocate 2.00 GiB")
        with pytest.raises(OutOfMemory, match="ran out of memory") as info:
            await w.segment(seg(png(71)))
        eng.fail_with = None
        stats = w.cache_stats()
        after = await w.segment(seg(png(70)))
        w.close()
        return info.value, stats, after

    exc, stats, after = run(main())
    assert exc.code == "out_of_memory"
    assert eng.freed == 1 and stats.entries == 0 and stats.bytes == 0
    assert not after.cached  # the cache was emptied to free memory


def test_other_engine_errors_pass_through_unchanged():
    eng = FakeEngine()

    async def main():
        w = make_worker(eng)
        eng.fail_with = ValueError("a bug")
        with pytest.raises(ValueError, match="a bug"):
            await w.segment(seg(png(80)))
        w.close()

    run(main())
    assert eng.freed == 0


# --- failures free their request; shutdown with a job running ---------------------------------


def test_failed_request_is_freed_without_a_garbage_collection():
    """A failed job's exception must not sit in a reference cycle with its request (each
    held a 60 MB image until a GC ran)."""
    import gc
    import weakref

    eng = FakeEngine()

    async def main():
        w = make_worker(eng)
        request = seg(base64.b64encode(b"not an image" * 1000).decode())
        ref = weakref.ref(request)
        try:
            await w.segment(request)
        except ImageDecodeError:
            pass
        del request
        w.close(5)
        return ref

    gc.collect()
    gc.disable()
    try:
        ref = run(main())
        assert ref() is None, gc.get_referrers(ref())
    finally:
        gc.enable()


def test_unexpected_error_keeps_the_inference_threads_traceback():
    import traceback

    eng = FakeEngine()
    eng.fail_with = RuntimeError("a bug")

    async def main():
        w = make_worker(eng)
        try:
            await w.segment(seg(png(70)))
        except RuntimeError as exc:
            return "".join(traceback.format_exception(exc))
        finally:
            w.close(5)

    assert "in embed" in run(main())  # the fake engine's frame, from the inference thread


def test_fail_running_answers_the_running_jobs_caller_at_once():
    eng = FakeEngine()

    async def main():
        w = make_worker(eng)
        running = await _blocked(eng, w)
        w.fail_waiting()
        assert w.fail_running("shutdown timeout passed")
        with pytest.raises(ShuttingDown, match="shutdown timeout passed"):
            await asyncio.wait_for(running, 5)
        eng.gate.set()
        assert w.close(5)
        assert not w.fail_running("idle")

    run(main())


def test_close_waits_for_a_job_that_outlives_its_loop():
    """A client hung up (its job cancelled) and the loop closed while the job runs: close()
    reports the running thread, then its end; settling on the closed loop raises nothing."""
    import threading

    errors = []
    hook, threading.excepthook = threading.excepthook, errors.append
    eng = FakeEngine()

    async def main():
        w = make_worker(eng)
        running = await _blocked(eng, w)
        running.cancel()
        return w

    try:
        w = run(main())
        assert w.close(0.1) is False  # still inside the engine
        eng.gate.set()
        assert w.close(5) is True
    finally:
        threading.excepthook = hook
    assert errors == []


def test_shutdown_time_left_counts_from_closing():
    w = make_worker(FakeEngine())
    assert w.shutdown_time_left(30) == 30
    w.fail_waiting()
    assert 29 < w.shutdown_time_left(30) <= 30
    assert w.shutdown_time_left(0) == 0
    w.close()


def test_call_reports_queue_and_run_time_and_a_jobs_queue_timing_is_that():
    eng = FakeEngine()

    async def main():
        w = make_worker(eng)
        alone = await w.call(time.sleep, 0.05)
        running = asyncio.ensure_future(w.call(time.sleep, 0.2))
        await asyncio.sleep(0.02)  # the sleep has started: the segment job waits behind it
        out = await w.segment(seg(png(90)))
        await running
        w.close()
        return alone, out

    alone, out = run(main())
    assert alone.value is None and alone.run_ms >= 50 and alone.queue_ms < 50
    assert out.timings["queue"] >= 100
    assert list(out.timings) == ["decode", "encode", "predict", "queue"]


def test_an_image_read_before_the_job_is_not_read_again(monkeypatch):
    from sam2_service.daemon.inference import worker as worker_mod

    eng = FakeEngine()
    text = png(91)
    image = worker_mod.read_image(text)
    monkeypatch.setattr(worker_mod, "read_image", lambda t: pytest.fail("read twice"))

    async def main():
        w = make_worker(eng)
        out = await w.segment(seg(text), image=image)
        emb = await w.embed(EmbedRequest("e", text), image=image)
        w.close()
        return out, emb

    out, emb = run(main())
    assert out.image_id == emb.image_id == image.image_id == image_id(base64.b64decode(text))
    assert emb.cached and out.timings["decode"] >= image.read_ms


@pytest.mark.parametrize("index", [0, 2, None])
def test_host_logits_of_a_tensor_equal_those_of_an_array(index):
    """:meth:`MaskSet.host_logits` reads logits left on the model's device (a torch tensor)
    as it reads host ones: 1x256x256 float32, a copy; None is the element-wise maximum."""
    torch = pytest.importorskip("torch")
    from sam2_service.daemon.inference.engine import MaskSet

    logits = np.random.default_rng(0).normal(size=(3, 256, 256)).astype(np.float32)
    masks, scores = np.zeros((3, 4, 4), bool), np.zeros(3, np.float32)
    on_host = MaskSet(masks, scores, logits, 0.0).host_logits(index)
    on_device = MaskSet(masks, scores, torch.from_numpy(logits.copy()), 0.0).host_logits(index)
    want = logits.max(0) if index is None else logits[index]
    for got in (on_host, on_device):
        assert got.shape == (1, 256, 256) and got.dtype == np.float32
        np.testing.assert_array_equal(got[0], want)
    assert not np.shares_memory(on_host, logits)
