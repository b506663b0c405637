"""Parsing of ``{"op": "auto"}`` (sam2_service.wire.auto) and the client's request building."""

from __future__ import annotations

import inspect

import pytest

from sam2_service.client.auto import build_auto_request
from sam2_service.client.core import ImageRef
from sam2_service.wire.auto import AUTO_DEFAULTS, AUTO_FIELDS, AutoRequest, AutoSettings
from sam2_service.wire.errors import InvalidRequest
from sam2_service.wire.schema import parse_request

BASE = {"op": "auto", "requestId": "a1", "width": 4, "height": 3, "imageBase64": "AAAA"}


def test_defaults_are_sam2_automatic_mask_generators():
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    params = inspect.signature(SAM2AutomaticMaskGenerator.__init__).parameters
    for wire, (name, *_) in AUTO_FIELDS.items():
        assert AUTO_DEFAULTS[wire] == params[name].default, wire


def test_parse_settings_tiles_and_defaults():
    req = parse_request({**BASE, "pointsPerSide": 8, "predIouThresh": 0, "multimaskOutput": False,
                         "tileShape": [512, 256], "halo": [32, 16]}, max_points=64)
    assert isinstance(req, AutoRequest)
    assert req.settings == AutoSettings(points_per_side=8, pred_iou_thresh=0.0,
                                        multimask_output=False)
    assert req.tile_shape == (512, 256) and req.halo == (32, 16)
    plain = parse_request(BASE, max_points=64)
    assert plain.settings == AutoSettings() and plain.tile_shape is None and plain.halo == (0, 0)


@pytest.mark.parametrize("field,value", [
    ("pointsPerSide", 0), ("pointsPerSide", 2.5), ("pointsPerBatch", 0), ("predIouThresh", -0.1),
    ("stabilityScoreThresh", 1.01), ("stabilityScoreOffset", -1), ("boxNmsThresh", "x"),
    ("cropNLayers", 4), ("minMaskRegionArea", -1), ("multimaskOutput", 1),
    ("tileShape", [32, 64]), ("tileShape", [64]), ("halo", [0, -1]), ("halo", [64, 0]),
])
def test_out_of_range_settings_name_their_field(field, value):
    extra = {"tileShape": [128, 128]} if field == "halo" else {}
    with pytest.raises(InvalidRequest) as err:
        parse_request({**BASE, **extra, field: value}, max_points=64)
    assert err.value.field == field and field in err.value.message


def test_image_and_image_id_are_exclusive():
    with pytest.raises(InvalidRequest) as err:
        parse_request({**BASE, "imageId": "0" * 64}, max_points=64)
    assert err.value.field == "imageId"


def test_client_builds_camel_case_request():
    msg = build_auto_request(ImageRef("ab" * 32, 10, 20), tile_shape=(64, 64), halo=(8, 8),
                             request_id="r", points_per_side=4, box_nms_thresh=None)
    assert msg == {"op": "auto", "requestId": "r", "width": 10, "height": 20, "imageId": "ab" * 32,
                   "pointsPerSide": 4, "tileShape": [64, 64], "halo": [8, 8]}
    with pytest.raises(TypeError, match="pointz"):
        build_auto_request(ImageRef("ab" * 32, 1, 1), pointz=3)
