"""The protocol additions (maskEncoding, multimask, boxes, maskInput) in the client
(client/core.py) and the CLI, without a daemon: requests carry the new fields only when asked,
replies in every encoding decode to the same (H, W) uint8 mask, and candidates/masks/maskId
are exposed."""

from __future__ import annotations

import numpy as np
import pytest

from sam2_service import cli
from sam2_service.client import ClientError, ImageRef, MaskCandidate, build_segment_request
from sam2_service.client.core import parse_segment_response
from sam2_service.wire.codecs import encode_mask_as

REF = ImageRef("a" * 64, 8, 6)


def test_no_option_builds_the_v1_request():
    msg = build_segment_request(REF, bbox=(0, 0, 4, 4), request_id="r")
    assert set(msg) == {"requestId", "width", "height", "imageId", "bbox"}


def test_options_become_fields():
    msg = build_segment_request(REF, request_id="r", encoding="rle", multimask=True,
                                mask_input="m1")
    assert (msg["maskEncoding"], msg["multimask"], msg["maskInput"]) == ("rle", True, "m1")
    msg = build_segment_request(REF, request_id="r", boxes=[(0, 1, 2, 3), (4, 5, 6, 7.5)])
    assert msg["boxes"] == [{"x1": 0.0, "y1": 1.0, "x2": 2.0, "y2": 3.0},
                            {"x1": 4.0, "y1": 5.0, "x2": 6.0, "y2": 7.5}]


def reply(encoding: str, mask: np.ndarray, **extra) -> dict:
    key, value = encode_mask_as(mask, encoding)
    r = {"requestId": "r", "maskWidth": 8, "maskHeight": 6,
         "maskBase64": value if key == "maskBase64" else "", "score": 0.5, "imageId": "a" * 64,
         "cached": True, "inferenceTimeMs": 1.0, "timingsMs": {}, "maskEncoding": encoding,
         "maskId": "mtop", **extra}
    if key != "maskBase64":
        r[key] = value
    return r


@pytest.mark.parametrize("encoding", ["raw", "rle", "png"])
def test_every_encoding_decodes_to_the_same_array(encoding):
    mask = np.random.default_rng(1).random((6, 8)) > 0.5
    cands = [{"score": s, **dict([encode_mask_as(m, encoding)]), "maskId": f"m{i}"}
             for i, (s, m) in enumerate([(0.9, mask), (0.2, ~mask)])]
    result = parse_segment_response(reply(encoding, mask, candidates=cands))
    assert result.mask.dtype == np.uint8 and result.mask.shape == (6, 8)
    assert np.array_equal(result.mask, mask.astype(np.uint8) * 255)
    assert result.mask_id == "mtop" and result.masks == ()
    assert [c.score for c in result.candidates] == [0.9, 0.2]
    assert isinstance(result.candidates[1], MaskCandidate) and result.candidates[1].mask_id == "m1"
    assert np.array_equal(result.candidates[1].mask, (~mask).astype(np.uint8) * 255)
    assert not {"maskBase64", "maskRle", "maskPng", "candidates"} & set(result.response)


def test_old_reply_has_no_mask_id():
    r = reply("raw", np.zeros((6, 8), bool))
    del r["maskEncoding"], r["maskId"]
    result = parse_segment_response(r)
    assert result.mask_id is None and result.candidates == () and result.masks == ()
    assert set(result.response) == {"requestId", "maskWidth", "maskHeight", "score", "imageId",
                                    "cached", "inferenceTimeMs", "timingsMs"}


def test_malformed_rle_is_a_client_error():
    r = reply("rle", np.zeros((6, 8), bool))
    r["maskRle"]["counts"] = [47]
    with pytest.raises(ClientError, match="malformed"):
        parse_segment_response(r)


def test_cli_flags():
    ns = cli.parse_args(["segment", "--image", "x.png", "--encoding", "rle", "--multimask",
                         "--box", "0,0,5,5", "--box", "-3,1,4,9", "--mask-input", "mabc"])
    assert (ns.encoding, ns.multimask, ns.mask_input) == ("rle", True, "mabc")
    assert ns.boxes == [[0, 0, 5, 5], [-3, 1, 4, 9]]
    plain = cli.parse_args(["segment", "--image", "x.png"])  # raw: the reply has a maskId
    assert (plain.encoding, plain.multimask, plain.boxes, plain.mask_input) == ("raw", False,
                                                                                None, None)
