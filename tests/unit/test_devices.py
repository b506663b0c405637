"""One model per device (``--device`` lists) with fake engines as "devices" on the CPU: ``--device``
lists and ``cuda:all``, and the pool's routing through the dispatcher: a known image goes to
the worker that holds it, a new one to the least-loaded worker, ``release`` reaches every
worker and ``info`` lists every device."""

from __future__ import annotations

import asyncio
import base64
import time

import numpy as np
import orjson
import pytest

from sam2_service.daemon.auto import runner as auto_mod
from sam2_service.daemon.config import ServiceConfig, StartupError
from sam2_service.daemon.inference import devices as devices_mod
from sam2_service.daemon.inference.devices import DevicePool
from sam2_service.daemon.inference.hardware import expand_devices
from sam2_service.daemon.inference.worker import InferenceWorker
from sam2_service.daemon.serving.dispatch import Dispatcher
from sam2_service.wire.codecs import compute_image_id, encode_png
from sam2_service.wire.schema import EmbedRequest
from tests.fake_engine import FakeEngine
from tests.unit.test_auto_runner import FakeGenerator
from tests.unit.test_config import from_cli

# -- --device -------------------------------------------------------------------------------


@pytest.mark.parametrize("text, devices", [
    ("cpu", ["cpu"]),
    ("cpu,cpu", ["cpu", "cpu"]),
    ("cuda:0,cuda:1", ["cuda:0", "cuda:1"]),
    ("cuda:0,cuda:0", ["cuda:0", "cuda:0"]),
    ("auto,cpu,mps,cuda", ["auto", "cpu", "mps", "cuda"]),
    ("cuda:all", ["cuda:all"]),
])
def test_device_lists_are_accepted(text, devices):
    config = ServiceConfig(device=text)
    assert config.device == text and config.devices == devices


@pytest.mark.parametrize("text", ["cpu,", ",cpu", "cpu,,cpu", "cpu, cpu", "cuda:all,cpu",
                                  "cpu,cuda:all", "cuda:all:0", "cuda:ALL", "gpu,cpu", ","])
def test_bad_device_lists_name_the_field(text):
    with pytest.raises(ValueError, match="device must be .*cuda:all"):
        ServiceConfig(device=text)


def test_device_list_from_flag_and_environment():
    assert from_cli(["--device", "cpu,cpu"]).devices == ["cpu", "cpu"]
    assert from_cli([], env={"SAM2_SERVICE_DEVICE": "cuda:all"}).devices == ["cuda:all"]


def test_cuda_all_expands_to_every_visible_device():
    assert expand_devices(["cuda:all"], lambda: 3) == ["cuda:0", "cuda:1", "cuda:2"]
    assert expand_devices(["cuda:all"], lambda: 1) == ["cuda:0"]
    with pytest.raises(StartupError, match="cuda:all: no CUDA device"):
        expand_devices(["cuda:all"], lambda: 0)


def test_other_lists_are_not_expanded():
    def never() -> int:
        raise AssertionError("no device count needed")

    assert expand_devices(["cuda:1", "cuda:1"], never) == ["cuda:1", "cuda:1"]
    assert expand_devices(["cpu"], never) == ["cpu"]


# -- routing ----------------------------------------------------------------------------------


def png(seed: int, w: int = 8, h: int = 6) -> str:
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return base64.b64encode(encode_png(img)).decode()


def image_id(text: str) -> str:
    return compute_image_id(base64.b64decode(text))


BOX = {"x1": 0, "y1": 0, "x2": 8, "y2": 6}


class Devices:
    """A dispatcher over ``n`` workers with fake engines (device names ``fake:i``)."""

    def __init__(self, n: int = 2, **settings) -> None:
        self.engines = [FakeEngine() for _ in range(n)]
        for i, engine in enumerate(self.engines):
            engine.device = f"fake:{i}"
        self.config = ServiceConfig(warmup=False, **settings)
        self.workers = [InferenceWorker(e, self.config.max_image_pixels, cache_bytes=10**6)
                        for e in self.engines]
        self.pool = DevicePool(self.workers)
        self.dispatcher = Dispatcher(self.config, self.pool)

    async def ask(self, obj: dict) -> dict:
        return await self.dispatcher.respond(orjson.dumps(obj), time.monotonic())

    def close(self) -> None:
        assert self.pool.close(5)


def run(test, n: int = 2, **settings):
    devices = Devices(n, **settings)

    async def main():
        try:
            return await test(devices)
        finally:
            for e in devices.engines:
                e.gate.set()
            devices.close()

    return asyncio.run(main())


async def wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


def test_an_image_id_goes_to_the_worker_that_holds_it():
    async def test(d: Devices):
        img = png(1)
        # the image is embedded on device 1 only (sent to that worker directly)
        await d.workers[1].embed(EmbedRequest("e", img))
        reply = await d.ask({"requestId": "s", "width": 8, "height": 6,
                             "imageId": image_id(img), "bbox": BOX})
        assert reply["imageId"] == image_id(img) and reply["cached"] is True
        assert [e.predicts for e in d.engines] == [0, 1]
        # and one that no device holds is the usual unknown_image
        reply = await d.ask({"requestId": "u", "width": 8, "height": 6,
                             "imageId": "0" * 64, "bbox": BOX})
        assert reply["code"] == "unknown_image"

    run(test)


def test_a_resent_image_goes_to_its_holder_even_when_another_is_idle():
    async def test(d: Devices):
        img = png(2)
        await d.workers[1].embed(EmbedRequest("e", img))
        reply = await d.ask({"requestId": "s", "width": 8, "height": 6, "imageBase64": img,
                             "bbox": BOX})
        assert reply["cached"] is True
        assert [e.embeds for e in d.engines] == [0, 1]
        assert [e.predicts for e in d.engines] == [0, 1]
        reply = await d.ask({"op": "embed", "requestId": "e2", "imageBase64": img})
        assert reply["cached"] is True and [e.embeds for e in d.engines] == [0, 1]

    run(test)


def test_a_new_image_goes_to_the_least_loaded_worker():
    async def test(d: Devices):
        first, second, third = png(3), png(4), png(5)
        d.engines[0].gate.clear()  # device 0 holds its first job
        held = asyncio.ensure_future(d.ask({"op": "embed", "requestId": "a",
                                            "imageBase64": first}))
        await asyncio.to_thread(d.engines[0].started.wait, 5)  # ties go to index 0
        reply = await d.ask({"op": "embed", "requestId": "b", "imageBase64": second})
        assert reply["imageId"] == image_id(second)
        assert d.engines[1].embeds == 1 and d.engines[0].embeds == 0
        # the same new image again, while its first request still runs: the same worker
        # (it is not embedded twice), although device 1 is idle
        again = asyncio.ensure_future(d.ask({"op": "embed", "requestId": "a2",
                                             "imageBase64": first}))
        await wait_until(lambda: d.workers[0].waiting == 1)
        d.engines[0].gate.set()
        assert (await held)["cached"] is False and (await again)["cached"] is True
        assert [e.embeds for e in d.engines] == [1, 1]
        # both idle again: a third image goes to index 0
        await d.ask({"op": "embed", "requestId": "c", "imageBase64": third})
        assert [e.embeds for e in d.engines] == [2, 1]

    run(test)


def test_release_reaches_every_worker():
    async def test(d: Devices):
        img = png(6)
        for w in d.workers:
            await w.embed(EmbedRequest("e", img))
        reply = await d.ask({"op": "release", "requestId": "r", "imageId": image_id(img)})
        assert reply["released"] is True
        assert not any(w.holds(image_id(img)) for w in d.workers)
        reply = await d.ask({"op": "release", "requestId": "r2", "imageId": image_id(img)})
        assert reply["released"] is False

    run(test)


def test_info_lists_every_device_and_its_top_level_is_the_first():
    async def test(d: Devices):
        await d.workers[2].embed(EmbedRequest("e", png(7)))
        info = await d.ask({"op": "info", "requestId": "i"})
        assert info["device"] == "fake:0" and info["cache"]["entries"] == 0
        assert [x["device"] for x in info["devices"]] == ["fake:0", "fake:1", "fake:2"]
        assert [x["index"] for x in info["devices"]] == [0, 1, 2]
        assert [x["cache"]["entries"] for x in info["devices"]] == [0, 0, 1]
        assert info["devices"][2]["cache"]["bytes"] == 8 * 6 * 3
        assert all(x["dtype"] == "float32" and x["loadTimeMs"] == 0.0
                   and x["queue"] == {"waiting": 0, "running": False, "requests": 0}
                   for x in info["devices"])

    run(test, 3)


def test_one_device_info_lists_it_and_computes_no_image_id(monkeypatch):
    def no_hash(text):
        raise AssertionError("one device: the image id is not computed for routing")

    monkeypatch.setattr(devices_mod, "read_image", no_hash)

    async def test(d: Devices):
        reply = await d.ask({"requestId": "s", "width": 8, "height": 6, "imageBase64": png(8),
                             "bbox": BOX})
        assert "error" not in reply
        info = await d.ask({"op": "info", "requestId": "i"})
        assert len(info["devices"]) == 1 and info["devices"][0]["cache"]["entries"] == 1

    run(test, 1)


def logged(caplog, msg: str) -> list[dict]:
    return [r.fields for r in caplog.records if r.getMessage() == msg]


@pytest.mark.parametrize("n", [1, 2])
def test_request_logs_name_the_device_when_there_are_several(n, caplog):
    async def test(d: Devices):
        img = png(9)
        await d.workers[n - 1].embed(EmbedRequest("e", img))  # held by the last device
        for extra in ({}, {"maskEncoding": "rle"}):  # the plain and the extended reply
            reply = await d.ask({"requestId": "s", "width": 8, "height": 6,
                                 "imageId": image_id(img), "bbox": BOX, **extra})
            assert "error" not in reply, reply
        reply = await d.ask({"op": "embed", "requestId": "e2", "imageBase64": img})
        assert reply["cached"] is True

    caplog.set_level("INFO", logger="sam2_service")
    run(test, n)
    lines = logged(caplog, "Inference complete") + logged(caplog, "Image embedded")
    assert len(lines) == 3
    want = {"device": f"fake:{n - 1}", "deviceIndex": n - 1} if n > 1 else {}
    for fields in lines:
        assert {k: fields[k] for k in ("device", "deviceIndex") if k in fields} == want


def test_bad_base64_is_the_usual_error_with_several_devices():
    async def test(d: Devices):
        reply = await d.ask({"requestId": "s", "width": 8, "height": 6,
                             "imageBase64": "not base64!", "bbox": BOX})
        assert reply["requestId"] == "s" and reply["code"] == "image_decode"
        assert d.pool._pending == {} and d.pool._active == [0, 0]

    run(test)


def test_auto_runs_on_the_holder_of_its_image(monkeypatch):
    monkeypatch.setattr(auto_mod, "StepGenerator", FakeGenerator)

    async def test(d: Devices):
        img = png(9, 80, 40)
        await d.workers[1].embed(EmbedRequest("e", img))
        reply = await d.ask({"op": "auto", "requestId": "a", "width": 80, "height": 40,
                             "imageId": image_id(img)})
        assert reply["imageId"] == image_id(img), reply
        reply = await d.ask({"op": "auto", "requestId": "b", "width": 80, "height": 40,
                             "imageBase64": img})
        assert "error" not in reply, reply
        assert [e.embeds for e in d.engines] == [0, 1]  # its embedding came from device 1

    run(test)


# -- lifecycle --------------------------------------------------------------------------------


def test_the_pool_fails_waiting_jobs_on_every_worker_and_closes_them_all():
    async def test(d: Devices):
        for e in d.engines:
            e.gate.clear()
        running = [asyncio.ensure_future(w.embed(EmbedRequest("r", png(10 + i))))
                   for i, w in enumerate(d.workers)]
        for e in d.engines:
            await asyncio.to_thread(e.started.wait, 5)
        waiting = [asyncio.ensure_future(w.embed(EmbedRequest("w", png(20 + i))))
                   for i, w in enumerate(d.workers)]
        await wait_until(lambda: all(w.waiting == 1 for w in d.workers))
        assert d.pool.fail_waiting() == 2
        for task in waiting:
            with pytest.raises(Exception, match="shutting down"):
                await task
        assert d.pool.stuck(60.0)[0] is False
        assert d.pool.stuck(0.0)[0] is True  # a job runs longer than a zero interval
        assert d.pool.close(0.0) is False  # the held jobs still run
        for e in d.engines:
            e.gate.set()
        await asyncio.gather(*running)
        assert d.pool.close(5) is True
        assert d.pool.stuck(60.0) == (True, None)  # their threads have exited

    run(test)


def test_a_pool_needs_a_worker():
    with pytest.raises(ValueError):
        DevicePool([])


def test_with_several_devices_an_image_is_read_once_and_handed_to_its_job(monkeypatch):
    from sam2_service.daemon.inference import worker as worker_mod

    reads = []
    real = worker_mod.read_image
    monkeypatch.setattr(devices_mod, "read_image", lambda t: reads.append("pool") or real(t))
    monkeypatch.setattr(worker_mod, "read_image", lambda t: reads.append("job") or real(t))

    async def test(d: Devices):
        img = png(30)
        seg = await d.ask({"requestId": "s", "width": 8, "height": 6, "imageBase64": img,
                           "bbox": BOX})
        emb = await d.ask({"op": "embed", "requestId": "e", "imageBase64": img})
        assert seg["imageId"] == emb["imageId"] == image_id(img) and emb["cached"]

    run(test)
    assert reads == ["pool", "pool"]
