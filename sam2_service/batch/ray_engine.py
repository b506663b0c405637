"""The ``ray`` engine: Ray Data reads the images and an actor pool segments them.

Ray Data reads the files (``read_binary_files``), each row's image is made ready as the
client does it (:func:`request_row`: PNG and JPEG as they are, other formats converted to a
PNG, the size checked from the header) into the same auto request frame the daemon engine
sends, and a pool of actors answers them, one SAM2 model each: the actor class is the
daemon's engine without its socket (``sam2_service.daemon.batch.actor.AutoActor``, handed in
by the composition root, so that this package never imports the daemon). Replies come back
to the driver in the jobs' order and are read as the daemon's are. Ray is imported here
only, lazily: the daemon engine does not need it.
"""

from __future__ import annotations

import functools
import os
import threading
from typing import Any, Iterator, Sequence

import orjson

from ..client import ClientError, RequestFailed
from ..client.auto import build_auto_request, parse_auto_response
from ..client.images import prepare_image
from ..wire.limits import DEFAULT_MAX_IMAGE_PIXELS
from .engines import Failure, Job, Outcome, failure_of


def request_row(row: dict[str, Any], request: dict[str, Any], max_pixels: int
                ) -> dict[str, Any]:
    """Ray Data row ``{"bytes", "path"}`` -> ``{"path", "request"}``: the auto request's
    JSON bytes, or empty ``request`` with ``code`` and ``message`` when the image cannot be
    read (``image_unreadable``, ``image_too_large``, as the daemon engine's client says)."""
    try:
        prepared = prepare_image(bytes(row["bytes"]), max_pixels)
        msg = build_auto_request(prepared, object_masks=True, **request)
        return {"path": row["path"], "request": orjson.dumps(msg), "code": "", "message": ""}
    except (ClientError, OSError, ValueError) as exc:
        f = failure_of(row["path"], exc)
        message = f.message.replace("the image bytes", str(row["path"]))
        return {"path": row["path"], "request": b"", "code": f.code, "message": message}


class RayEngine:
    """Auto requests answered by ``workers`` Ray actors of ``actor_class``.

    Args:
        request: :meth:`Client.auto` keywords (settings, ``tile_shape``, ``halo``).
        actor_class: the per-actor model (``AutoActor``: ``actor_class(config)``, then
            row -> row with ``reply``).
        config: the model's settings for ``actor_class`` (``model``, ``checkpoint``,
            ``device``, ``dummy_weights``...: ServiceConfig keywords).
        address: ``ray.init`` address of a running cluster (None: start a local Ray).
        workers: actors in the pool (default: 1 per GPU of the cluster, else 1).
        gpus_per_worker: GPUs each actor asks for (default 1 when the cluster has GPUs).
        num_cpus: CPUs of a local Ray started here (None: Ray's default, every core).
        cpus_per_worker: CPUs each actor asks for (default 1).
    """

    name = "ray"

    def __init__(self, request: dict[str, Any], *, actor_class: type, config: dict[str, Any],
                 address: str | None = None, workers: int | None = None,
                 gpus_per_worker: float | None = None, num_cpus: int | None = None,
                 cpus_per_worker: float = 1.0) -> None:
        self.request = request
        self.actor_class = actor_class
        self.config = config
        self.address = address
        self.workers = workers
        self.gpus_per_worker = gpus_per_worker
        self.num_cpus = num_cpus
        self.cpus_per_worker = cpus_per_worker
        self._started = False

    def open(self) -> dict[str, Any]:
        """Start or join Ray; returns the model's identity for the manifest.

        Raises:
            ImportError: Ray is not installed (the ``[batch]`` extra).
            ConnectionError: ``address`` cannot be reached.
        """
        import ray

        if not ray.is_initialized():
            kw: dict[str, Any] = {"address": self.address, "log_to_driver": False}
            if self.address is None:
                # Ray starts its workers at nice 15: on a machine busy with other work, the
                # model's actor then all but stops. A local run is the user's own job.
                os.environ.setdefault("RAY_worker_niceness", "0")
                if self.num_cpus is not None:
                    kw["num_cpus"] = self.num_cpus
            ray.init(**kw)
            self._started = True
        gpus = float(ray.cluster_resources().get("GPU", 0))
        if self.gpus_per_worker is None:
            self.gpus_per_worker = 1.0 if gpus >= 1 else 0.0
        if self.workers is None:
            self.workers = max(1, int(gpus // self.gpus_per_worker) if self.gpus_per_worker else 1)
        ckpt = self.config.get("checkpoint")
        name = None if self.config.get("dummy_weights") else (
            str(ckpt).rsplit("/", 1)[-1] if ckpt else f"sam2.1_hiera_{self.config.get('model', 'tiny')}.pt")
        return {"model": self.config.get("model", "tiny"), "checkpoint": name}

    @property
    def devices(self) -> int:
        """Actors in the pool."""
        return self.workers or 1

    def run(self, jobs: Sequence[Job], cancel: threading.Event | None = None
            ) -> Iterator[Outcome]:
        """Outcomes of ``jobs`` in order; once ``cancel`` is set, no further one is taken
        (the pipeline is shut down)."""
        import ray

        if not jobs:
            return
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True
        ctx.enable_progress_bars = False
        by_path = {str(j.image.path.absolute()): j for j in jobs}
        max_pixels = int(self.config.get("max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS))
        ds = ray.data.read_binary_files(list(by_path), include_paths=True)
        ds = ds.map(functools.partial(request_row, request=self.request, max_pixels=max_pixels))
        ds = ds.map(self.actor_class, fn_constructor_kwargs={"config": self.config},
                    compute=ray.data.ActorPoolStrategy(size=self.devices),
                    num_gpus=self.gpus_per_worker or None, num_cpus=self.cpus_per_worker)
        rows = ds.iter_rows()
        try:
            for row in rows:
                job = by_path[_local(row["path"], by_path)]
                yield _outcome(job, row)
                if cancel is not None and cancel.is_set():
                    break
        finally:
            close = getattr(rows, "close", None)
            if close is not None:
                close()

    def close(self) -> None:
        """Shut down a local Ray this engine started."""
        if self._started:
            import ray

            ray.shutdown()
            self._started = False


def _local(path: str, known: dict[str, Job]) -> str:
    """The driver's path of a row's ``path`` (Ray may drop the leading ``/``)."""
    if path in known:
        return path
    return "/" + path.lstrip("/")


def _outcome(job: Job, row: dict[str, Any]) -> Outcome:
    if row.get("code"):
        return Outcome(job, None, Failure(job.image.name, row["code"], row["message"]))
    try:
        return Outcome(job, parse_auto_response(orjson.loads(row["reply"])), None)
    except RequestFailed as exc:
        return Outcome(job, None, failure_of(job.image.name, exc))
