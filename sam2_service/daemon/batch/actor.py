"""One SAM2 model answering ``auto`` requests in-process: the daemon without its socket.

:class:`AutoActor` is what ``sam2-service batch --engine ray`` runs in each Ray actor (Ray
Data's ``map`` with a callable class): it builds the daemon's :class:`InferenceWorker` with a
:class:`Sam2Engine` loaded on its inference thread, warms it up, and answers each row's
request frame with the daemon's :class:`Dispatcher` (parsing, validation, the ``auto`` runner,
the reply), so that its replies are the daemon's for the same checkpoint and settings.
Ray is not imported here: the class is a plain callable, handed to Ray by the batch
front-end's Ray engine (composition root: ``sam2_service.cli_batch``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from typing import Any

import orjson

from ..config import ServiceConfig
from ..inference.devices import DevicePool
from ..inference.engine import Sam2Engine
from ..inference.worker import InferenceWorker
from ..serving.dispatch import Dispatcher


class AutoActor:
    """A loaded model answering request frames (bytes of a JSON request) with reply frames.

    Args:
        config: :class:`ServiceConfig` keywords (``model``, ``checkpoint``, ``device``,
            ``dummy_weights``, ``precision``, ``auto_timeout``...); the rest are the daemon's
            defaults. One device: the first of ``device`` (under Ray, ``cuda`` is the GPU
            Ray gave the actor: it sets ``CUDA_VISIBLE_DEVICES``).

    Raises:
        StartupError: the model cannot be built (checkpoint missing, bad device...).
    """

    def __init__(self, config: dict[str, Any]) -> None:
        fields = {f.name for f in dataclasses.fields(ServiceConfig)}
        self.config = ServiceConfig(**{k: v for k, v in config.items() if k in fields})
        cfg = self.config
        self.loop = asyncio.new_event_loop()
        self.worker = InferenceWorker(None, cfg.max_image_pixels, cache_bytes=cfg.cache_bytes,
                                      max_queue=cfg.max_queue,
                                      logits_entries=cfg.logits_cache_entries)
        self.loop.run_until_complete(self.worker.load(functools.partial(Sam2Engine.load, cfg)))
        if cfg.warmup:
            self.loop.run_until_complete(self.worker.warmup())
        self.dispatcher = Dispatcher(cfg, DevicePool([self.worker]))

    def respond(self, payload: bytes) -> dict[str, Any]:
        """The reply object to one request frame's payload, as the daemon would send it
        (:meth:`Dispatcher.respond`; errors are error replies with their ``code``)."""
        return self.loop.run_until_complete(self.dispatcher.respond(payload, time.monotonic()))

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        """Ray Data row -> row: ``row["request"]`` (bytes: a JSON request, or empty when the
        front-end already failed the image) becomes ``row["reply"]`` (bytes: the JSON reply);
        the other columns pass through."""
        request = row.get("request") or b""
        reply = self.respond(bytes(request)) if request else {}
        return {**{k: v for k, v in row.items() if k != "request"},
                "reply": orjson.dumps(reply)}
