"""CI smoke of fuzz/fuzz_pipeline.py (the full run is `make fuzz`, 10 minutes), plus
regression tests for the bugs the fuzz target and the hostile-input review found."""

from __future__ import annotations

import importlib.util
import io
import sys
import zlib
from pathlib import Path

import hypothesis
import numpy as np
import pytest
from PIL import Image

from sam2_service.daemon.inference.imaging import decode_image
from sam2_service.daemon.inference.prompts import validate
from sam2_service.wire.errors import ImageTooLarge, InvalidRequest
from sam2_service.wire.schema import BBox, SegmentRequest

FUZZ_FILE = Path(__file__).resolve().parents[2] / "fuzz" / "fuzz_pipeline.py"
SMOKE_SECONDS = 15.0


def load_fuzz_module():
    spec = importlib.util.spec_from_file_location("fuzz_pipeline", FUZZ_FILE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fuzz_module():
    return load_fuzz_module()


@pytest.fixture
def ci_profile():
    """hypothesis's "ci" profile (derandomize=True), which it loads by itself wherever a CI
    variable is set: the smoke must reach every stage there too, not replay one batch."""
    before = hypothesis.settings.get_current_profile_name()
    hypothesis.settings.load_profile("ci")
    yield
    hypothesis.settings.load_profile(before)


def test_fuzz_target_runs_clean_for_a_while(fuzz_module, ci_profile):
    result = fuzz_module.fuzz(SMOKE_SECONDS, batch=100, verbose=False)
    assert result.failure is None, result.failure
    assert result.examples > 150
    s = result.stats
    # the mutations reach every stage and every outcome, not just the first parser
    assert s.frames > result.examples // 2
    assert s.too_large > 0
    assert s.images_decoded > 10
    assert s.prompts_validated > 10
    assert {"ok", "invalid_request", "image_decode", "image_too_large", "unknown_op"} <= s.codes.keys()


def test_fuzz_property_catches_an_escaping_exception(fuzz_module, monkeypatch):
    """The harness must report a non-ServiceError escaping the pipeline as a failure."""
    def broken(payload):
        raise KeyError("boom")

    from sam2_service.daemon.serving import dispatch

    monkeypatch.setattr(dispatch, "decode_message", broken)
    result = fuzz_module.fuzz(5.0, batch=20, verbose=False)
    assert result.failure is not None and "KeyError" in result.failure


def test_reference_frames_matches_the_decoder_contract(fuzz_module):
    wire = b"\x02\x00\x00\x00ab" + b"\x00\x00\x00\x00" + b"\x09\x00\x00\x00abc"
    assert fuzz_module.reference_frames(wire, 100) == ([b"ab", b""], False)
    assert fuzz_module.reference_frames(wire, 1) == ([], True)
    stats = fuzz_module.Stats()
    fuzz_module.run_stream([wire[:3], wire[3:9], wire[9:]], 100, 400, 64, stats)
    assert stats.frames == 2 and stats.too_large == 0
    assert stats.codes == {"invalid_request": 2}  # b"ab" is not JSON; b"" is an empty frame


# --- regressions ------------------------------------------------------------------------


def test_16_bit_greyscale_png_is_scaled_not_clipped():
    # Pillow's convert("RGB") of mode I;16 clips at 255: every sample above 255 came out white
    grey = np.array([[0, 255, 256, 0x8000, 0xFFFF]], dtype=np.uint16)
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, format="PNG")
    out = decode_image(buf.getvalue(), 100)
    assert out.shape == (1, 5, 3) and out.dtype == np.uint8
    assert out[0, :, 0].tolist() == [0, 0, 1, 128, 255]
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    assert out.flags.writeable


def _request(bbox: BBox) -> SegmentRequest:
    return SegmentRequest(request_id="r", width=10, height=10, image_base64="x", bbox=bbox,
                          points=())


def test_bbox_with_area_only_in_float64_is_rejected():
    # found by the fuzz target: y2 = 2.7e-225 > y1 = 0 passed, but SAM2 got the float32
    # box (0, 0, 1, 0), which has no area
    with pytest.raises(InvalidRequest) as info:
        validate(_request(BBox(0, 0, 1, 2.6561597456344714e-225)), (10, 10))
    assert info.value.field == "bbox" and "no area" in info.value.message


def test_tiny_but_float32_representable_bbox_still_accepted():
    prompts = validate(_request(BBox(0, 0, 1, 1e-3)), (10, 10))
    assert prompts.box.dtype == np.float32
    assert prompts.box[3] > prompts.box[1]


def test_pillow_bomb_guard_message_names_the_configured_limit():
    # a header over twice Pillow's MAX_IMAGE_PIXELS is refused by Pillow itself; the message
    # used to name only Pillow's 178956970, not the daemon's --max-image-pixels
    data = io.BytesIO()
    Image.new("1", (1, 1)).save(data, format="PNG")
    png = bytearray(data.getvalue())
    png[16:24] = (20000).to_bytes(4, "big") * 2  # IHDR width and height
    png[29:33] = zlib.crc32(bytes(png[12:29])).to_bytes(4, "big")  # IHDR's CRC
    with pytest.raises(ImageTooLarge) as info:
        decode_image(bytes(png), 40_000_000)
    assert "40000000" in info.value.message
    assert info.value.message.endswith("send a smaller image")  # Pillow's guard is never lifted
