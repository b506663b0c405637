"""The embedding cache's disk tier and its derived entries, through the real daemon and model:
a daemon restarted with the same ``--cache-dir`` answers an image the first one embedded
without encoding it, with the same masks bit for bit; and an ``auto`` request with crops
does not evict an interactive user's image embedding."""

from __future__ import annotations

import base64
import stat

import pytest
import skimage.data

from sam2_service.client import Client

from .conftest import encode_image, start_daemon
from .test_cache_daemon import small

pytestmark = pytest.mark.model

BOX = {"x1": 40, "y1": 20, "x2": 250, "y2": 200}
POINT = [{"x": 150, "y": 120, "label": 1}]


def _ask(client: Client, **fields) -> dict:
    reply = client.request({"requestId": "t", **fields})
    assert "error" not in reply, reply
    return reply


def test_a_restarted_daemon_answers_a_seen_image_from_disk_with_the_same_masks(
        tmp_path, checkpoint):
    folder = tmp_path / "embeddings"
    image = small(skimage.data.astronaut(), 300)
    h, w = image.shape[:2]
    b64 = base64.b64encode(encode_image(image, "PNG")).decode()
    args = ("--checkpoint", str(checkpoint), "--cache-dir", str(folder))
    (tmp_path / "first").mkdir()
    first = start_daemon(tmp_path / "first", *args)
    try:
        with Client(first.socket_path, timeout=120) as c:
            box = _ask(c, width=w, height=h, imageBase64=b64, bbox=BOX)
            point = _ask(c, width=w, height=h, imageId=box["imageId"], points=POINT,
                         maskEncoding="rle", multimask=True)
            disk = c.info()["diskCache"]
    finally:
        assert first.stop() == 0, first.output()
    assert box["cached"] is False and box["timingsMs"]["encode"] > 0
    assert disk["enabled"] is True and disk["directory"] == str(folder)
    (file,) = folder.glob("*.emb")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(file.stat().st_mode) == 0o600

    (tmp_path / "second").mkdir()
    second = start_daemon(tmp_path / "second", *args)
    try:
        with Client(second.socket_path, timeout=120) as c:
            by_id = _ask(c, width=w, height=h, imageId=box["imageId"], bbox=BOX)
            again = _ask(c, width=w, height=h, imageBase64=b64, points=POINT,
                         maskEncoding="rle", multimask=True)
            info = c.info()
    finally:
        assert second.stop() == 0, second.output()
    assert by_id["cached"] is True and by_id["timingsMs"]["encode"] == 0
    assert by_id["maskBase64"] == box["maskBase64"] and by_id["score"] == box["score"]
    assert again["cached"] is True and again["maskRle"] == point["maskRle"]
    assert [(m["score"], m["maskRle"]) for m in again["candidates"]] == \
        [(m["score"], m["maskRle"]) for m in point["candidates"]]
    assert info["diskCache"]["hits"] == 1 and info["diskCache"]["entries"] == 1
    assert info["diskCache"]["discarded"] == 0 and info["cache"]["entries"] == 1


def test_auto_crops_do_not_evict_an_interactive_image(tmp_path, checkpoint):
    """Room for two image embeddings (16 MiB each); an auto request with one crop layer
    makes five (its image and four crops). Its crops must not push out the image someone
    embedded before; the disk tier is off so that only memory could answer."""
    daemon = start_daemon(tmp_path, "--checkpoint", str(checkpoint), "--cache-mb", "40",
                          "--cache-disk-mb", "0")
    interactive = base64.b64encode(encode_image(small(skimage.data.coffee(), 160), "PNG")).decode()
    other = small(skimage.data.chelsea(), 128)
    try:
        with Client(daemon.socket_path, timeout=300) as c:
            embedded = _ask(c, op="embed", imageBase64=interactive)
            auto = _ask(c, op="auto", width=other.shape[1], height=other.shape[0],
                        imageBase64=base64.b64encode(encode_image(other, "PNG")).decode(),
                        pointsPerSide=2, cropNLayers=1, predIouThresh=0,
                        stabilityScoreThresh=0)
            info = c.info()
            after = c.request({"requestId": "a", "width": embedded["width"],
                               "height": embedded["height"], "imageId": embedded["imageId"],
                               "bbox": {"x1": 10, "y1": 10, "x2": 100, "y2": 80}})
    finally:
        assert daemon.stop() == 0, daemon.output()
    assert auto["timingsMs"]["encode"] > 0 and info["diskCache"]["enabled"] is False
    assert info["cache"]["evictions"] == 0, info["cache"]
    assert "error" not in after, after
    assert after["cached"] is True
