"""COCO instance segmentation from auto replies, with pycocotools.

Each object of an image becomes one annotation: its whole mask (the auto reply's
``maskRle`` with ``objectMasks``, COCO's uncompressed RLE) compressed by
``pycocotools.mask.frPyObjects`` into ``{"size": [h, w], "counts": "<string>"}`` (the bytes
``pycocotools.mask.encode`` gives, as ASCII text), its ``area`` and ``bbox`` (XYWH pixels)
from ``pycocotools.mask.area`` and ``toBbox`` of that RLE, ``score`` (SAM2's predicted IoU),
``stability_score`` and ``label_id`` (its id in the image's label map). The file is written
atomically: a temporary file in the same folder, then renamed over the old one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping

import orjson

#: The one category of every annotation.
CATEGORIES = [{"id": 1, "name": "object"}]


def compress_rle(rle: Mapping[str, Any]) -> dict[str, Any]:
    """COCO compressed RLE (``counts`` a string) of an uncompressed one (``counts`` a list
    of run lengths, column-major, first run background; ``size`` [h, w])."""
    from pycocotools import mask as mask_utils

    h, w = rle["size"]
    compressed = mask_utils.frPyObjects({"size": [h, w], "counts": list(rle["counts"])}, h, w)
    return {"size": [int(h), int(w)], "counts": compressed["counts"].decode("ascii")}


def object_annotations(table: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One annotation per entry of an auto reply's ``labels`` (each with ``maskRle``),
    without ``id`` and ``image_id`` (given when the file is built): ``category_id`` 1,
    ``segmentation`` (compressed RLE), ``area`` (pixels of the whole mask), ``bbox`` [x, y,
    w, h] of the whole mask, ``iscrowd`` 0, ``score``, ``stability_score``, ``label_id``.

    Raises:
        KeyError: an entry without ``maskRle`` (the request lacked ``objectMasks``).
    """
    from pycocotools import mask as mask_utils

    out = []
    for entry in table:
        seg = compress_rle(entry["maskRle"])
        coded = {"size": seg["size"], "counts": seg["counts"].encode("ascii")}
        out.append({"category_id": 1, "segmentation": seg,
                    "area": int(mask_utils.area(coded)),
                    "bbox": [float(v) for v in mask_utils.toBbox(coded)], "iscrowd": 0,
                    "score": float(entry["score"]),
                    "stability_score": float(entry["stabilityScore"]),
                    "label_id": int(entry["id"])})
    return out


def coco_document(images: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The COCO file's object: ``images`` (``id`` 1.. in the order given, ``file_name``,
    ``width``, ``height``), ``annotations`` (``id`` 1.. in order) and ``categories``.

    Args:
        images: per image ``{"name", "width", "height", "objects": [annotation...]}``
            (:func:`object_annotations`' entries).
    """
    doc_images, annotations = [], []
    for image_id, img in enumerate(images, start=1):
        doc_images.append({"id": image_id, "file_name": img["name"], "width": img["width"],
                           "height": img["height"]})
        for obj in img["objects"]:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **obj})
    return {"info": {"description": "sam2-service batch: SAM2 automatic masks"},
            "images": doc_images, "annotations": annotations, "categories": CATEGORIES}


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in its folder, flushed to disk
    and renamed over ``path`` (so a reader sees the old file or the new one, whole).

    Raises:
        OSError: the folder cannot be written.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_coco(path: Path, images: Iterable[Mapping[str, Any]]) -> int:
    """Write :func:`coco_document` of ``images`` to ``path`` atomically; returns the number
    of annotations."""
    doc = coco_document(images)
    write_atomic(path, orjson.dumps(doc))
    return len(doc["annotations"])
