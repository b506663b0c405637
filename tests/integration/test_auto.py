"""``{"op": "auto"}`` against the real daemon with the random-weight checkpoint: the label
map against SAM2AutomaticMaskGenerator run in this process, the label table, tiling,
interleaving with segment requests, hang-up, bad settings."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
import skimage.data
from PIL import Image

from sam2_service.client import Client, RequestFailed, build_auto_request, prepare_image
from sam2_service.daemon.auto.labels import label_stats
from sam2_service.wire.frames import encode_message

from .conftest import connect_raw, encode_image, reference_inference, start_daemon

pytestmark = pytest.mark.model

#: Filters off, so that random weights give many masks (with SAM2AutomaticMaskGenerator's
#: defaults they give 0; with only the thresholds at 0, box NMS leaves 4 of 108); few points
#: to keep the test short. 36 points in batches of 32 for the reference; the daemon's steps
#: hold at most --auto-step-points (16) points, so its batches differ and must not matter.
SETTINGS = {"points_per_side": 6, "points_per_batch": 32, "pred_iou_thresh": 0.0,
            "stability_score_thresh": 0.0, "box_nms_thresh": 1.0}


@pytest.fixture(scope="module")
def coffee() -> bytes:
    return encode_image(skimage.data.coffee(), "PNG")  # 600x400


def paint_by_decreasing_area(records, shape) -> np.ndarray:
    """The issue's definition, written independently: paint largest first, ids in painting
    order, then drop ids left invisible and renumber keeping the order."""
    order = sorted(range(len(records)), key=lambda i: -records[i]["area"])  # stable
    labels = np.zeros(shape, np.int64)
    for k, i in enumerate(order):
        labels[records[i]["segmentation"]] = k + 1
    visible = np.unique(labels[labels > 0])
    lut = np.zeros(len(records) + 1, np.int64)
    lut[visible] = np.arange(1, len(visible) + 1)
    return lut[labels]


@pytest.fixture(scope="module")
def no_fastpath_daemon(tmp_path_factory, checkpoint):
    """A daemon with ``--no-fastpath``: auto runs SAM2's own steps (StepGenerator)."""
    d = start_daemon(tmp_path_factory.mktemp("nofast"), "--checkpoint", str(checkpoint),
                     "--no-fastpath")
    yield d
    d.stop()


@pytest.mark.parametrize("which", ["daemon", "no_fastpath_daemon"])
def test_label_map_equals_sam2_automatic_mask_generator(which, request, reference_model, coffee):
    """Both paths: the fast one (the default daemon: its own point decoder) and
    ``--no-fastpath`` (SAM2AutomaticMaskGenerator's own methods, step by step)."""
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    daemon = request.getfixturevalue(which)
    with Client(daemon.socket_path) as client:
        assert client.info()["fastpath"] is (which == "daemon")
        labels, table = client.auto(coffee, **SETTINGS)
    image = np.array(Image.open(io.BytesIO(coffee)).convert("RGB"))
    gen = SAM2AutomaticMaskGenerator(reference_model, **SETTINGS)
    with reference_inference():
        records = gen.generate(image)
    expected = paint_by_decreasing_area(records, image.shape[:2])
    assert expected.max() >= 3, "degenerate model: too few masks for the test to mean much"
    assert labels.dtype == np.uint16 and labels.shape == (400, 600)
    agree = float(np.mean(labels == expected))
    assert agree >= 0.999, f"{agree:.5f} of pixels agree"
    assert labels.max() == expected.max() == len(table)
    # the table matches the map, and the reference's scores
    areas, boxes = label_stats(labels)
    assert [e["id"] for e in table] == list(range(1, len(table) + 1))
    assert [e["area"] for e in table] == areas.tolist()
    assert [[e["bbox"][k] for k in ("x1", "y1", "x2", "y2")] for e in table] == boxes.tolist()
    ref_scores = sorted(r["predicted_iou"] for r in records)
    for e in table:
        assert min(abs(e["score"] - s) for s in ref_scores) < 1e-3
        assert 0.0 <= e["stabilityScore"] <= 1.0


def test_tiled_copies_side_by_side_get_consistent_unique_ids(daemon):
    half = np.array(Image.fromarray(skimage.data.astronaut()).resize((160, 160)))
    image = np.concatenate([half, half], axis=1)  # 160x320: two identical tiles
    with Client(daemon.socket_path) as client:
        labels, table = client.auto(image, tile_shape=(160, 160), halo=(0, 0), **SETTINGS)
    assert labels.shape == (160, 320) and labels.max() >= 2
    ids = np.unique(labels[labels > 0])
    assert ids.tolist() == list(range(1, len(table) + 1))  # 1..N, none missing
    left, right = labels[:, :160], labels[:, 160:]
    # the two tiles were segmented alike: the same partition of pixels on both sides
    pairs = np.unique(np.stack([left.ravel(), right.ravel()]), axis=1)
    assert pairs.shape[1] == len(np.unique(left)) == len(np.unique(right))
    # an id on both sides is one object stitched across the border: it touches it
    for i in set(np.unique(left)) & set(np.unique(right)) - {0}:
        assert (left[:, -1] == i).any() and (right[:, 0] == i).any()
    areas, _ = label_stats(labels)
    assert [e["area"] for e in table] == areas.tolist()


def _info(path: str) -> dict:
    with Client(path) as c:
        return c.info()


def test_segment_goes_between_auto_steps_and_hang_up_cancels(daemon, coffee):
    with Client(daemon.socket_path) as c:
        ref = c.embed(coffee)  # the auto's embedding is cached: its steps are batches
    msg = build_auto_request(prepare_image(coffee), request_id="auto-long", points_per_side=12,
                             points_per_batch=1, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    sock = connect_raw(daemon.socket_path)
    sock.sendall(encode_message(msg))
    deadline = time.monotonic() + 60
    while not [a for a in _info(daemon.socket_path)["auto"] if a["done"] >= 2]:
        assert time.monotonic() < deadline, "auto made no progress"
        time.sleep(0.05)
    with Client(daemon.socket_path) as c:
        t0 = time.monotonic()
        result = c.segment(ref, points=[(300, 200)])
        seg_s = time.monotonic() - t0
    assert result.mask.shape == (400, 600)
    running = _info(daemon.socket_path)["auto"]
    assert running and running[0]["done"] < running[0]["total"] == 144 + 1, running
    assert seg_s < 5.0
    sock.close()  # hang up: no further step runs
    deadline = time.monotonic() + 10
    while _info(daemon.socket_path)["auto"]:
        assert time.monotonic() < deadline, "auto still running after its client hung up"
        time.sleep(0.05)
    time.sleep(0.5)
    lines = [json.loads(line) for line in daemon.log_path.read_text().splitlines()
             if '"auto-long"' in line]
    done = [e["done"] for e in lines if e["msg"] == "Auto progress"]
    assert done and max(done) < 145  # progress logged, and the rest never ran
    assert not [e for e in lines if e["msg"] == "Auto complete"]


@pytest.mark.parametrize("field,value", [("pointsPerSide", 0), ("predIouThresh", 1.5),
                                         ("cropNLayers", 9), ("multimaskOutput", 1),
                                         ("tileShape", [10, 10]), ("halo", [-1, 0])])
def test_bad_settings_are_invalid_request_naming_the_field(daemon, field, value):
    msg = {"op": "auto", "requestId": "auto-bad", "width": 2, "height": 2,
           "imageBase64": "AAAA", field: value}
    with Client(daemon.socket_path) as c:
        reply = c.request(msg)
    assert reply["code"] == "invalid_request" and reply["requestId"] == "auto-bad"
    assert field in reply["error"]


def test_image_id_with_tiling_is_refused(daemon, coffee):
    with Client(daemon.socket_path) as c:
        ref = c.embed(coffee)
        with pytest.raises(RequestFailed, match="imageId") as err:
            c.auto(ref, tile_shape=(256, 256), **SETTINGS)
    assert err.value.code == "invalid_request"


def test_async_client_auto_equals_sync(daemon, coffee):
    import asyncio

    from sam2_service.client import AsyncClient

    async def run():
        async with AsyncClient(daemon.socket_path) as c:
            return await c.auto(coffee, **SETTINGS)

    labels, table = asyncio.run(run())
    with Client(daemon.socket_path) as c:
        labels2, table2 = c.auto(coffee, **SETTINGS)
    assert np.array_equal(labels, labels2) and table == table2


def test_cli_writes_16_bit_label_png_and_overlay(daemon, coffee, tmp_path, capsys):
    from sam2_service import cli
    from sam2_service.client.auto import label_colours

    src = tmp_path / "coffee.png"
    src.write_bytes(coffee)
    out, overlay = tmp_path / "labels.png", tmp_path / "overlay.png"
    assert cli.main(["auto", "--socket", daemon.socket_path, "--image", str(src), "--output",
                     str(out), "--overlay", str(overlay), "--points-per-side", "6",
                     "--points-per-batch", "32", "--pred-iou-thresh", "0",
                     "--stability-score-thresh", "0", "--box-nms-thresh", "1"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    with Client(daemon.socket_path) as c:
        labels, _ = c.auto(coffee, **SETTINGS)
    with Image.open(out) as im:
        assert im.mode in ("I;16", "I") and im.format == "PNG"
        assert np.array_equal(np.asarray(im).astype(np.uint16), labels)
    image = skimage.data.coffee()
    drawn = np.asarray(Image.open(overlay).convert("RGB"))
    assert np.array_equal(drawn[labels == 0], image[labels == 0])
    k = int(labels.max())
    where = labels == k
    expected = np.round(0.5 * image[where] + 0.5 * label_colours(k)[k]).astype(np.uint8)
    assert np.abs(drawn[where].astype(int) - expected).max() <= 1
