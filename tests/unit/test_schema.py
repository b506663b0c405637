"""parse_request, read_request_id and the response builders (protocol v1)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sam2_service.wire.errors import InvalidRequest, ServiceError, UnknownOp
from sam2_service.wire.schema import (
    BBox,
    EmbedRequest,
    InfoRequest,
    PingRequest,
    Point,
    ReleaseRequest,
    SegmentRequest,
    embed_response,
    error_response,
    parse_request,
    ping_response,
    read_request_id,
    release_response,
    segment_response,
)

MAX_POINTS = 64
SRV_ID = re.compile(r"^srv-[0-9a-f]{16}$")


def seg(**overrides):
    req = {"requestId": "r1", "width": 4, "height": 3, "imageBase64": "AAAA"}
    req.update(overrides)
    return req


def parse(obj, max_points=MAX_POINTS):
    return parse_request(obj, max_points=max_points)


def invalid(obj, field, max_points=MAX_POINTS):
    with pytest.raises(InvalidRequest) as info:
        parse(obj, max_points)
    assert info.value.code == "invalid_request"
    assert info.value.field == field
    assert field in info.value.message
    return info.value


# --- happy paths ------------------------------------------------------------------------


def test_segment_minimal():
    req = parse(seg())
    assert req == SegmentRequest("r1", 4, 3, "AAAA", None, ())


def test_segment_with_explicit_op_bbox_and_points():
    req = parse(seg(op="segment", bbox={"x1": 1, "y1": 0.5, "x2": 3, "y2": 2},
                    points=[{"x": 1, "y": 2, "label": 0}, {"x": 2.5, "y": 1}]))
    assert isinstance(req, SegmentRequest)
    assert req.bbox == BBox(1.0, 0.5, 3.0, 2.0)
    assert all(isinstance(v, float) for v in (req.bbox.x1, req.bbox.y1, req.bbox.x2, req.bbox.y2))
    assert req.points == (Point(1.0, 2.0, 0), Point(2.5, 1.0, 1))


def test_segment_null_bbox_and_points_mean_absent():
    req = parse(seg(bbox=None, points=None))
    assert req.bbox is None
    assert req.points == ()


def test_unknown_fields_ignored():
    req = parse(seg(extra={"anything": [1, 2]}, clientVersion="9"))
    assert isinstance(req, SegmentRequest)


def test_ping():
    assert parse({"op": "ping", "requestId": "p1"}) == PingRequest("p1")


def test_info():
    assert parse({"op": "info", "requestId": "i1"}) == InfoRequest("i1")


def test_ping_without_request_id_gets_made_up_id():
    req = parse({"op": "ping"})
    assert isinstance(req, PingRequest)
    assert SRV_ID.match(req.request_id)


def test_ping_does_not_need_image_fields():
    assert isinstance(parse({"op": "ping", "width": "bad"}), PingRequest)


# --- op / requestId ---------------------------------------------------------------------


@pytest.mark.parametrize("op", ["segmnt", "PING", "", "shutdown"])
def test_unknown_op(op):
    with pytest.raises(UnknownOp) as info:
        parse({"op": op, "requestId": "r"})
    assert info.value.code == "unknown_op"
    assert info.value.field == "op"


@pytest.mark.parametrize("op", [1, None, True, ["ping"], {"op": "ping"}])
def test_op_not_a_string(op):
    err = invalid({"op": op, "requestId": "r"}, "op")
    assert not isinstance(err, UnknownOp)


@pytest.mark.parametrize("rid", [1, None, 2.5, ["r"], {"id": "r"}, True])
def test_request_id_not_a_string(rid):
    invalid(seg(requestId=rid), "requestId")


def test_request_id_not_a_string_on_ping():
    invalid({"op": "ping", "requestId": 7}, "requestId")


def test_request_id_longest_accepted():
    assert parse({"op": "ping", "requestId": "r" * 256}) == PingRequest("r" * 256)


@pytest.mark.parametrize("op", ["ping", "segment"])
def test_request_id_too_long(op):
    err = invalid(seg(op=op, requestId="r" * 257), "requestId")
    assert "257 characters" in err.message and "256" in err.message
    assert SRV_ID.match(read_request_id({"requestId": "r" * 257}))  # never echoed


# --- width / height ---------------------------------------------------------------------


@pytest.mark.parametrize("key", ["width", "height"])
@pytest.mark.parametrize("value", [None, True, False, 4.0, 4.5, 0, -1, "4", [4]])
def test_bad_width_height(key, value):
    invalid(seg(**{key: value}), key)


@pytest.mark.parametrize("key", ["width", "height"])
def test_missing_width_height(key):
    obj = seg()
    del obj[key]
    err = invalid(obj, key)
    assert "null" in err.message


# --- imageBase64 ------------------------------------------------------------------------


def test_image_missing():
    obj = seg()
    del obj["imageBase64"]
    invalid(obj, "imageBase64")


def test_image_empty():
    err = invalid(seg(imageBase64=""), "imageBase64")
    assert "empty" in err.message


@pytest.mark.parametrize("value", [None, 1, b"AAAA", ["AAAA"], {"data": "AAAA"}])
def test_image_not_a_string(value):
    invalid(seg(imageBase64=value), "imageBase64")


# --- bbox -------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [[0, 0, 1, 1], "0,0,1,1", 5, True])
def test_bbox_not_an_object(value):
    invalid(seg(bbox=value), "bbox")


GOOD_BOX = {"x1": 0, "y1": 0, "x2": 2, "y2": 2}


@pytest.mark.parametrize("key", ["x1", "y1", "x2", "y2"])
def test_bbox_field_missing(key):
    box = dict(GOOD_BOX)
    del box[key]
    invalid(seg(bbox=box), f"bbox.{key}")


@pytest.mark.parametrize("key", ["x1", "y1", "x2", "y2"])
@pytest.mark.parametrize("value", ["1", None, True, [1], {"v": 1}])
def test_bbox_field_not_a_number(key, value):
    invalid(seg(bbox={**GOOD_BOX, key: value}), f"bbox.{key}")


@pytest.mark.parametrize("key", ["x1", "y1", "x2", "y2"])
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_bbox_field_not_finite(key, value):
    err = invalid(seg(bbox={**GOOD_BOX, key: value}), f"bbox.{key}")
    assert "finite" in err.message


def test_bbox_x2_named_in_message():
    err = invalid(seg(bbox={**GOOD_BOX, "x2": float("inf")}), "bbox.x2")
    assert "bbox.x2" in str(err)


# --- points -----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [{"x": 1, "y": 1}, "1,1", 3, True])
def test_points_not_a_list(value):
    invalid(seg(points=value), "points")


@pytest.mark.parametrize("value", [[1, 1], "p", 3, None])
def test_point_not_an_object(value):
    invalid(seg(points=[{"x": 0, "y": 0}, value]), "points[1]")


@pytest.mark.parametrize("label", [2, -1, True, False, "1", None, 0.5, [1]])
def test_bad_label(label):
    invalid(seg(points=[{"x": 0, "y": 0, "label": label}]), "points[0].label")


def test_label_defaults_to_foreground():
    req = parse(seg(points=[{"x": 1, "y": 1}]))
    assert req.points[0].label == 1
    assert isinstance(req.points[0].label, int)


def test_label_zero_kept():
    assert parse(seg(points=[{"x": 1, "y": 1, "label": 0}])).points[0].label == 0


@pytest.mark.parametrize("key", ["x", "y"])
@pytest.mark.parametrize("value", [None, "1", True, float("nan"), float("inf")])
def test_point_coordinate_bad(key, value):
    point = {"x": 1, "y": 1, key: value}
    invalid(seg(points=[{"x": 0, "y": 0}, point]), f"points[1].{key}")


def test_point_coordinate_missing():
    invalid(seg(points=[{"y": 1}]), "points[0].x")


def test_points_at_limit_accepted():
    pts = [{"x": 0, "y": 0}] * 5
    assert len(parse(seg(points=pts), max_points=5).points) == 5


def test_more_than_max_points_rejected():
    pts = [{"x": 0, "y": 0}] * 6
    err = invalid(seg(points=pts), "points", max_points=5)
    assert "6" in err.message and "5" in err.message


def test_empty_points_list():
    assert parse(seg(points=[])).points == ()


# --- read_request_id --------------------------------------------------------------------


def test_read_request_id_present():
    assert read_request_id({"requestId": "abc"}) == "abc"


@pytest.mark.parametrize("obj", [{}, {"requestId": ""}, {"requestId": 5}, {"requestId": None},
                                 {"requestId": ["a"]}, [], "text", None, 42])
def test_read_request_id_made_up(obj):
    rid = read_request_id(obj)
    assert SRV_ID.match(rid), rid


def test_read_request_id_made_up_ids_are_unique():
    assert len({read_request_id({}) for _ in range(100)}) == 100


# --- responses --------------------------------------------------------------------------


@pytest.mark.parametrize("code", ["invalid_request", "image_decode", "internal"])
def test_error_response_shape(code):
    resp = error_response("r9", code, "width is wrong")
    assert resp == {"requestId": "r9", "error": "width is wrong", "code": code,
                    "maskWidth": 0, "maskHeight": 0, "maskBase64": ""}


def test_segment_response_shape():
    resp = segment_response("r1", width=4, height=3, mask_base64="AAA=", score=0.75,
                            image_id="0f" * 32, cached=False,
                            timings={"decode": 1.23456, "predict": 2.0, "queue": 5.0,
                                     "total": 12.34567})
    assert resp == {"requestId": "r1", "maskWidth": 4, "maskHeight": 3, "maskBase64": "AAA=",
                    "score": 0.75, "imageId": "0f" * 32, "cached": False,
                    "inferenceTimeMs": 3.235,
                    "timingsMs": {"decode": 1.235, "predict": 2.0, "queue": 5.0,
                                  "total": 12.346}}
    assert "error" not in resp


def test_embed_and_release_response_shapes():
    assert embed_response("e", width=4, height=3, image_id="a" * 64, cached=True,
                          timings={"total": 1.00049}) == {
        "requestId": "e", "ok": True, "imageId": "a" * 64, "width": 4, "height": 3,
        "cached": True, "timingsMs": {"total": 1.0}}
    assert release_response("r", image_id="b" * 64, released=False) == {
        "requestId": "r", "ok": True, "imageId": "b" * 64, "released": False}


# --- imageId, embed, release ----------------------------------------------------------

IMAGE_ID = "0123456789abcdef" * 4


def test_segment_by_image_id():
    req = parse({"requestId": "r", "width": 4, "height": 3, "imageId": IMAGE_ID})
    assert isinstance(req, SegmentRequest)
    assert req.image_id == IMAGE_ID and req.image_base64 is None


@pytest.mark.parametrize("bad", ["", "abc", "A" * 64, "g" * 64, "0" * 63, "0" * 65, 7, None,
                                 ["0" * 64]])
def test_bad_image_id(bad):
    with pytest.raises(InvalidRequest, match="imageId must be 64 lowercase hex") as info:
        parse({"width": 4, "height": 3, "imageId": bad})
    assert info.value.field == "imageId"


def test_image_and_image_id_together_is_invalid():
    with pytest.raises(InvalidRequest, match="either imageBase64 or imageId") as info:
        parse({"width": 4, "height": 3, "imageId": IMAGE_ID, "imageBase64": "AAAA"})
    assert info.value.field == "imageId"


def test_segment_by_image_id_still_needs_size():
    with pytest.raises(InvalidRequest, match="width"):
        parse({"imageId": IMAGE_ID, "height": 3})


def test_embed_request():
    assert parse({"op": "embed", "requestId": "e", "imageBase64": "AAAA"}) == \
        EmbedRequest("e", "AAAA", None, None)
    assert parse({"op": "embed", "requestId": "e", "imageBase64": "AAAA", "width": 5,
                  "height": 2}) == EmbedRequest("e", "AAAA", 5, 2)


@pytest.mark.parametrize("obj, field", [({"op": "embed"}, "imageBase64"),
                                        ({"op": "embed", "imageBase64": "AA==", "width": 0},
                                         "width"),
                                        ({"op": "embed", "imageId": IMAGE_ID}, "imageBase64"),
                                        ({"op": "release"}, "imageId"),
                                        ({"op": "release", "imageId": "x"}, "imageId")])
def test_embed_release_errors_name_the_field(obj, field):
    with pytest.raises(InvalidRequest) as info:
        parse(obj)
    assert info.value.field == field


def test_release_request():
    assert parse({"op": "release", "requestId": "q", "imageId": IMAGE_ID}) == \
        ReleaseRequest("q", IMAGE_ID)


def test_ping_response_shape():
    assert ping_response("p") == {"requestId": "p", "ok": True}


# --- property ---------------------------------------------------------------------------

FIELDS = ["op", "requestId", "width", "height", "imageBase64", "imageId", "bbox", "points",
          "x1", "y1", "x2", "y2", "x", "y", "label"]
OPS = st.sampled_from(["segment", "ping", "info", "embed", "release", "other"])

# orjson (the only source of request objects on the wire) yields integers in
# [-2**63, 2**64 - 1]; larger literals come back as floats.
json_scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
                | st.floats() | st.text(max_size=8) | OPS)
keys = st.sampled_from(FIELDS) | st.text(max_size=6)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(keys, children, max_size=4),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(keys, json_values, max_size=7))
def test_property_parse_request_returns_request_or_service_error(obj):
    try:
        req = parse(obj, max_points=3)
    except ServiceError as exc:
        assert exc.code in ("invalid_request", "unknown_op")
        assert exc.message
    else:
        assert isinstance(req, (SegmentRequest, PingRequest, InfoRequest))
        assert isinstance(req.request_id, str) and req.request_id


@st.composite
def plausible_segment(draw):
    """Near-valid segment requests, so that the deeper checks are reached too."""
    num = st.integers(-5, 50) | st.floats() | json_scalars
    obj = {"width": draw(st.integers(-1, 10) | json_scalars),
           "height": draw(st.integers(-1, 10) | json_scalars),
           "imageBase64": draw(st.just("AAAA") | json_scalars)}
    if draw(st.booleans()):
        obj["bbox"] = draw(st.fixed_dictionaries(
            {}, optional={k: num for k in ("x1", "y1", "x2", "y2")}) | json_values)
    if draw(st.booleans()):
        obj["points"] = draw(st.lists(
            st.fixed_dictionaries({}, optional={"x": num, "y": num, "label": num}) | json_values,
            max_size=4) | json_values)
    return obj


@settings(max_examples=200, deadline=None)
@given(plausible_segment())
def test_property_plausible_segment_requests(obj):
    try:
        req = parse(obj, max_points=3)
    except ServiceError as exc:
        assert exc.code == "invalid_request"
        assert exc.field is not None
    else:
        assert isinstance(req, SegmentRequest)
        assert req.width > 0 and req.height > 0
        assert len(req.points) <= 3
        assert all(p.label in (0, 1) for p in req.points)


def test_each_op_makes_its_request_type_and_the_union_holds_them_all():
    import typing

    from sam2_service.wire.auto import AutoRequest
    from sam2_service.wire.schema import OPS, REQUEST_TYPES, Request

    assert set(REQUEST_TYPES) == set(OPS)
    assert set(typing.get_args(Request)) == set(REQUEST_TYPES.values())
    assert AutoRequest in typing.get_args(Request)
    objs = {"segment": seg(), "embed": {"imageBase64": "AAAA"}, "release": {"imageId": "a" * 64},
            "ping": {}, "info": {}, "auto": {"width": 4, "height": 3, "imageBase64": "AAAA"}}
    for op, obj in objs.items():
        assert type(parse({**obj, "op": op})) is REQUEST_TYPES[op]


def test_a_request_id_read_once_is_the_one_the_request_keeps():
    made_up = read_request_id({})
    assert parse_request({"op": "ping"}, max_points=1, request_id=made_up).request_id == made_up
    assert parse_request({"op": "ping", "requestId": "x"}, max_points=1,
                         request_id="x").request_id == "x"
    assert SRV_ID.match(parse({"op": "ping"}).request_id)  # not given: read (made up) here


def test_the_shared_field_validators_name_their_field():
    from sam2_service.wire import fields

    assert fields.number({"x": 2}, "x", "bbox.x") == 2.0
    assert fields.positive_int({"width": 3}, "width") == 3
    assert fields.image_id({"imageId": "0" * 64}) == "0" * 64
    assert fields.rounded_timings({"a": 1.23456}) == {"a": 1.235}
    for call, field in ((lambda: fields.number({"x": True}, "x", "p.x"), "p.x"),
                        (lambda: fields.number({"x": float("nan")}, "x", "p.x"), "p.x"),
                        (lambda: fields.positive_int({"width": 0}, "width"), "width"),
                        (lambda: fields.image_base64({"imageBase64": ""}), "imageBase64"),
                        (lambda: fields.image_id({"imageId": "A" * 64}), "imageId")):
        with pytest.raises(InvalidRequest) as info:
            call()
        assert info.value.field == field
