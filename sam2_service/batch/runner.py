"""``run``: automatic segmentation of many images into label maps and one COCO file.

Per image ``DIR/labels/<name without suffix>.png`` (the 16-bit label map ``auto`` returns),
with ``overlay`` also ``DIR/overlays/<...>.png``; ``DIR/annotations.json`` (COCO, every
image done so far, rewritten atomically); ``DIR/manifest.jsonl`` (:mod:`.manifest`: what is
done, by content hash and settings, so a rerun skips it). Engines: :mod:`.engines`
(``daemon``) and :mod:`.ray_engine` (``ray``).
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from PIL import Image

from ..client.auto import AUTO_KEYWORDS, AutoResult, label_overlay
from ..client.images import read_rgb
from ..wire.auto import AUTO_DEFAULTS, AUTO_FIELDS, parse_auto_request
from ..wire.errors import ServiceError
from .coco import object_annotations, write_atomic, write_coco
from .engines import DaemonEngine, Failure, Job, failure_of
from .inputs import InputImage, collect_inputs
from .manifest import Manifest, file_sha256

log = logging.getLogger("sam2_service.batch")

COCO_NAME = "annotations.json"
#: ``annotations.json`` is rewritten after an image unless the last write took more than
#: this share of the time since (then it waits; it is always written at the end).
COCO_TIME_SHARE = 0.1
#: Error codes worth another try on a rerun (the image itself was not at fault).
TRANSIENT_CODES = frozenset({"busy", "timeout", "out_of_memory", "shutting_down", "internal",
                             "unknown_image", "unreadable"})
#: Keywords of the ray engine besides the model's (ServiceConfig) settings.
RAY_OPTIONS = ("actor_class", "address", "workers", "gpus_per_worker", "num_cpus",
               "cpus_per_worker")


@dataclass(frozen=True)
class Progress:
    """After each image: ``done`` (segmented in this run), ``total`` (images of the
    inputs), ``current`` (the name of the image just finished; None before the first),
    ``skipped`` (already done by an earlier run), ``failed``; ``failure`` is the image's
    :class:`Failure` when it failed, else None."""

    done: int
    total: int
    current: str | None
    skipped: int
    failed: int
    failure: Failure | None = None


@dataclass(frozen=True)
class Summary:
    """A run's result: images ``done`` (this run), ``skipped``, ``failed`` (their
    :class:`Failure`), ``objects`` (annotations of the images done this run), ``seconds``
    (wall time), ``cancelled`` (stopped by ``cancel`` before the end) and ``output`` (DIR)."""

    done: int
    skipped: int
    failed: list[Failure]
    objects: int
    seconds: float
    cancelled: bool
    output: Path


def auto_request(settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """The :meth:`Client.auto` keywords of ``settings`` (its keywords: ``points_per_side``...,
    ``tile_shape``, ``halo``; None values dropped), checked as the daemon checks them.

    Raises:
        ValueError: an unknown keyword or a value the daemon would refuse (named).
    """
    request = {k: v for k, v in (settings or {}).items() if v is not None}
    unknown = set(request) - set(AUTO_KEYWORDS) - {"tile_shape", "halo"}
    if unknown:
        raise ValueError(f"unknown auto settings: {', '.join(sorted(unknown))}")
    for key in ("tile_shape", "halo"):
        if key in request:
            request[key] = [int(v) for v in request[key]]
    wire = {AUTO_KEYWORDS[k]: v for k, v in request.items() if k in AUTO_KEYWORDS}
    wire.update({"tileShape": request.get("tile_shape"), "halo": request.get("halo")})
    try:
        parse_auto_request({"width": 1, "height": 1, "imageId": "0" * 64, **wire}, "check")
    except ServiceError as exc:
        raise ValueError(exc.message) from None
    return request


def manifest_settings(request: Mapping[str, Any], model: Mapping[str, Any]) -> dict[str, Any]:
    """What the manifest's header holds: every auto setting (defaults filled in), the
    tiling and the model's identity."""
    auto = {name: request.get(name, AUTO_DEFAULTS[wire]) for wire, (name, *_) in AUTO_FIELDS.items()}
    return {"auto": auto, "tile_shape": request.get("tile_shape"),
            "halo": request.get("halo") if request.get("tile_shape") else None, **model}


def _make_engine(engine: str, request: dict[str, Any], socket_path: str | None,
                 timeout: float | None, options: dict[str, Any]) -> Any:
    if engine == "daemon":
        if options:
            raise TypeError(f"the daemon engine takes no {', '.join(sorted(options))}")
        return DaemonEngine(request, socket_path, timeout)
    if engine == "ray":
        from .ray_engine import RayEngine

        ray_kw = {k: options.pop(k) for k in RAY_OPTIONS if k in options}
        if "actor_class" not in ray_kw:
            raise ValueError("the ray engine needs actor_class (the daemon's AutoActor, "
                             "sam2_service.daemon.batch.actor; the CLI passes it)")
        return RayEngine(request, config=options, **ray_kw)
    raise ValueError(f"unknown engine {engine!r}: daemon or ray")


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


class _Writer:
    """The output folder: label maps, overlays, the manifest and the COCO file."""

    def __init__(self, out: Path, manifest: Manifest, overlay: bool) -> None:
        self.out, self.manifest, self.overlay = out, manifest, overlay
        self.coco_ms, self.coco_at = 0.0, 0.0

    def labels_path(self, image: InputImage) -> Path:
        return self.out / "labels" / f"{image.stem}.png"

    def image_done(self, job: Job, result: AutoResult) -> int:
        """Write one image's files and its manifest line; returns its objects."""
        image = job.image
        for path, data in self._files(image, result):
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, data)
        objects = object_annotations(result.table)
        h, w = result.labels.shape
        self.manifest.add({"name": image.name, "sha256": job.sha256, "status": "done",
                           "width": w, "height": h, "objects": objects})
        return len(objects)

    def _files(self, image: InputImage, result: AutoResult) -> list[tuple[Path, bytes]]:
        files = [(self.labels_path(image),
                  _png(np.ascontiguousarray(result.labels, dtype=np.uint16)))]
        if self.overlay:
            rgb = np.asarray(read_rgb(image.path))
            files.append((self.out / "overlays" / f"{image.stem}.png",
                          _png(label_overlay(rgb, result.labels))))
        return files

    def image_failed(self, job: Job, failure: Failure) -> None:
        self.manifest.add({"name": job.image.name, "sha256": job.sha256, "status": "failed",
                           "code": failure.code, "message": failure.message})

    def coco(self, force: bool = False) -> None:
        """Rewrite ``annotations.json`` unless current; unless ``force``, not before the
        last write's time / :data:`COCO_TIME_SHARE` has passed."""
        now = time.monotonic()
        if self.manifest.coco_current and (self.out / COCO_NAME).exists():
            return
        if not force and (now - self.coco_at) * 1000 * COCO_TIME_SHARE < self.coco_ms:
            return
        write_coco(self.out / COCO_NAME, self.manifest.done_images())
        self.manifest.coco_written()
        self.coco_at = time.monotonic()
        self.coco_ms = (self.coco_at - now) * 1000


def _plan(images: list[InputImage], writer: _Writer, force: bool
          ) -> tuple[list[Job], list[InputImage], list[Failure]]:
    """(jobs to do, images skipped, failures: files that cannot be read, and images that
    failed in an earlier run with the same content and an error not in
    :data:`TRANSIENT_CODES`, which are not retried without ``force``)."""
    jobs, skipped, unreadable = [], [], []
    for img in images:
        try:
            sha = file_sha256(img.path)
        except OSError as exc:
            unreadable.append(failure_of(img.name, exc))
            continue
        rec = writer.manifest.records.get(img.name)
        if force or not rec or rec["sha256"] != sha:
            jobs.append(Job(img, sha))
        elif rec["status"] == "done" and writer.labels_path(img).exists():
            skipped.append(img)
        elif rec["status"] == "failed" and rec["code"] not in TRANSIENT_CODES:
            unreadable.append(Failure(img.name, rec["code"], rec["message"]))
        else:
            jobs.append(Job(img, sha))
    return jobs, skipped, unreadable


def run(inputs: Sequence[str | os.PathLike], output: str | os.PathLike,
        settings: Mapping[str, Any] | None = None, *, engine: str = "daemon",
        socket_path: str | None = None, force: bool = False, overlay: bool = False,
        progress: Callable[[Progress], None] | None = None,
        cancel: threading.Event | None = None, timeout: float | None = None,
        **engine_options: Any) -> Summary:
    """Segment every image of ``inputs`` into ``output`` (see the module docstring).

    Args:
        inputs: image files, folders, glob patterns, ``@list.txt`` (:mod:`.inputs`).
        output: the output folder DIR (made if missing).
        settings: :meth:`Client.auto` keywords (``points_per_side``..., ``tile_shape``,
            ``halo``); None: the defaults.
        engine: ``daemon`` (the daemon at ``socket_path``) or ``ray`` (``engine_options``:
            :data:`RAY_OPTIONS`, ``actor_class`` required, and the model's ServiceConfig
            keywords ``model``, ``checkpoint``, ``device``, ``dummy_weights``...).
        force: redo images the manifest has as done. overlay: also write ``overlays/``.
        progress: called after each image (skipped ones included) with :class:`Progress`.
        cancel: once set, no image is started; those in flight are finished and written.
        timeout: seconds to wait for one reply (None: the daemon's ``autoTimeout`` + 30 s).

    Raises:
        ValueError: bad inputs or settings; TypeError: an unknown engine option; OSError:
        DIR not writable; ClientError: no daemon, or lost midway; ImportError: no Ray.
    """
    t0 = time.monotonic()
    request = auto_request(settings)
    images = collect_inputs(inputs)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    eng = _make_engine(engine, request, socket_path, timeout, dict(engine_options))
    manifest = writer = None
    try:
        manifest = _open_manifest(out, manifest_settings(request, eng.open()))
        writer = _Writer(out, manifest, overlay)
        jobs, skipped, failed = _plan(images, writer, force)
        writer.coco(force=True)
        count = _Counter(progress, len(images), skipped, failed)
        processed, objects = _segment(eng, writer, jobs, failed, count, cancel)
    finally:
        if manifest is not None:
            try:
                if writer is not None:
                    writer.coco(force=True)
            finally:
                manifest.close()
        eng.close()
    return Summary(count.counts["done"], len(skipped), failed, objects, time.monotonic() - t0,
                   processed < len(jobs), out)


def _open_manifest(out: Path, settings: dict[str, Any]) -> Manifest:
    manifest = Manifest.open(out, settings)
    if manifest.changed:
        log.warning("the settings or the model differ from the last run in %s: "
                    "redoing every image", out)
    return manifest


def _segment(eng: Any, writer: _Writer, jobs: list[Job], failed: list[Failure],
             count: "_Counter", cancel: threading.Event | None) -> tuple[int, int]:
    """Run the jobs on the engine, writing each outcome; returns (images processed,
    objects written)."""
    processed = objects = 0
    for outcome in eng.run(jobs, cancel):
        processed += 1
        name = outcome.job.image.name
        if outcome.failure is not None:
            writer.image_failed(outcome.job, outcome.failure)
            failed.append(outcome.failure)
            count(name, "failed", outcome.failure)
        else:
            assert outcome.result is not None
            objects += writer.image_done(outcome.job, outcome.result)
            count(name, "done")
        writer.coco()
    return processed, objects


class _Counter:
    """Counts images by what became of them and calls ``progress`` after each."""

    def __init__(self, progress: Callable[[Progress], None] | None, total: int,
                 skipped: list[InputImage], failed: list[Failure]) -> None:
        self.progress, self.total = progress, total
        self.counts = {"done": 0, "skipped": 0, "failed": 0}
        for img in skipped:
            self(img.name, "skipped")
        for f in failed:
            self(f.path, "failed", f)

    def __call__(self, name: str, kind: str, failure: Failure | None = None) -> None:
        self.counts[kind] += 1
        if self.progress is not None:
            c = self.counts
            self.progress(Progress(c["done"], self.total, name, c["skipped"], c["failed"],
                                   failure))
