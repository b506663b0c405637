"""The pure parts of propagation and of the batch folder (no Qt, no daemon): the frames of a
stack, the slice range, prompts of one slice as (frame, x, y), which label a prompt fills, the
label <-> object table, writing a propagated mask without erasing other labels, and the batch
job's progress stream, summary and result lookup."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from sam2_service.napari import batch_job
from sam2_service.napari import propagate as prop


def test_volume_frames_takes_one_leading_axis_and_drops_alpha() -> None:
    grey = np.zeros((4, 6, 8), np.uint16)
    assert prop.volume_frames(grey, rgb=False) is not None and prop.volume_frames(grey, False).shape == (4, 6, 8)
    rgba = np.zeros((3, 6, 8, 4), np.uint8)
    assert prop.volume_frames(rgba, rgb=True).shape == (3, 6, 8, 3)
    for bad, rgb in ((np.zeros((6, 8)), False), (np.zeros((2, 3, 6, 8)), False), (np.zeros((6, 8, 3)), True)):
        with pytest.raises(ValueError, match="propagation needs a 3-D"):
            prop.volume_frames(bad, rgb)


def test_frame_range_defaults_to_all_and_checks_bounds() -> None:
    assert prop.frame_range(6) == (0, 5)
    assert prop.frame_range(6, 2, None) == (2, 5) and prop.frame_range(6, None, 3) == (0, 3)
    with pytest.raises(ValueError, match="after the last"):
        prop.frame_range(6, 4, 2)
    with pytest.raises(ValueError, match="inside 0..5"):
        prop.frame_range(6, 0, 6)


def test_to_frame_xy_rounds_the_slice_and_swaps_to_x_y() -> None:
    assert prop.to_frame_xy((2.2, 3.0, 8.0)) == (2, 8.5, 3.5)


def test_slice_prompts_map_world_to_frame_pixels_and_keep_only_that_slice() -> None:
    # scale (1, 2, 3), translate (0, 10, -5): data (z 2, row 4, col 6) is world (2, 18, 13)
    scale, translate = (1.0, 2.0, 3.0), (0.0, 10.0, -5.0)
    points = np.array([[2, 18, 13], [1, 18, 13], [2, 10, -5]], float)
    rect = np.array([[2, 10, -5], [2, 10, 25], [2, 30, 25], [2, 30, -5]], float)  # data rows 0..10, cols 0..10
    other = rect.copy()
    other[:, 0] = 3
    sp = prop.slice_prompts(2, points, [True, True, False], [rect, other], scale, translate, 8, 8)
    assert sp.frame == 2
    assert sp.points == ((6.5, 4.5, 1), (0.5, 0.5, 0))  # the point on slice 1 is left out
    assert sp.boxes == ((0.5, 0.5, 8.0, 8.0),)  # clipped to the 8x8 frame; slice 3's box left out


def test_choose_labels_add_keeps_live_ids_and_refine_uses_target() -> None:
    assert prop.choose_labels("add", 9, 3, [4], 7) == [4, 7, 8]
    assert prop.choose_labels("add", 9, 2, [], 1) == [1, 2]
    assert prop.choose_labels("add", 9, 2, [5], 3) == [5, 6]  # never below a live id
    assert prop.choose_labels("union", 9, 1, [4], 7) == [9]
    with pytest.raises(ValueError, match="one rectangle"):
        prop.choose_labels("overwrite", 9, 2, [], 1)
    with pytest.raises(ValueError, match="unknown mode"):
        prop.choose_labels("xor", 1, 1, [], 1)


def test_object_table_maps_layer_and_label_to_stable_ids() -> None:
    t = prop.ObjectTable()
    assert t.object_id("Points_mask", 3) == 1
    assert t.object_id("Box_mask", 3) == 2  # the same label in another layer: another object
    assert t.object_id("Points_mask", 3) == 1
    assert t.label_of(2) == ("Box_mask", 3) and t.label_of(7) is None
    t.clear()
    assert t.object_id("Box_mask", 1) == 1


PLANE = np.array([[1, 1, 0, 0],
                  [1, 1, 2, 0],
                  [0, 0, 2, 3]], np.uint16)
MASK = np.array([[0, 1, 1, 0],
                 [0, 1, 1, 0],
                 [0, 0, 0, 1]], np.uint8) * 255


@pytest.mark.parametrize("mode, expected", [
    # label 1's pixels become the mask's, but label 2's pixel (1, 2) and 3's (2, 3) stay
    ("add", [[0, 1, 1, 0], [0, 1, 2, 0], [0, 0, 2, 3]]),
    ("overwrite", [[0, 1, 1, 0], [0, 1, 2, 0], [0, 0, 2, 3]]),
    ("union", [[1, 1, 1, 0], [1, 1, 2, 0], [0, 0, 2, 3]]),
    ("intersection", [[0, 1, 0, 0], [0, 1, 2, 0], [0, 0, 2, 3]]),
])
def test_write_label_never_erases_other_labels(mode: str, expected: list) -> None:
    before = PLANE.copy()
    assert prop.write_label(PLANE, MASK, 1, mode).tolist() == expected
    assert (PLANE == before).all()


def test_write_label_checks_mode_and_shape() -> None:
    with pytest.raises(ValueError, match="unknown mode"):
        prop.write_label(PLANE, MASK, 1, "xor")
    with pytest.raises(ValueError, match="shape"):
        prop.write_label(PLANE, MASK[:2], 1, "add")


def test_write_frame_lower_label_keeps_an_overlap() -> None:
    empty = np.zeros((2, 3), np.uint16)
    a = np.array([[1, 1, 0], [0, 0, 0]], bool)
    b = np.array([[0, 1, 1], [0, 0, 1]], bool)
    assert prop.write_frame(empty, {5: b, 4: a}, "add").tolist() == [[4, 4, 5], [0, 0, 5]]


# -- batch folder --------------------------------------------------------------------------


def fake_run(inputs, output, settings=None, *, progress=None, cancel=None, **kw):
    """:func:`sam2_service.batch.run`'s shape: progress after each image, stops on cancel."""
    for k in range(3):
        if cancel is not None and cancel.is_set():
            return SimpleNamespace(done=k, cancelled=True)
        progress(SimpleNamespace(done=k + 1, total=3, current=f"im{k}.png", skipped=0, failed=0))
    return SimpleNamespace(done=3, cancelled=False, settings=settings, inputs=inputs)


def drain(gen):
    """The items a generator yields and its return value."""
    items = []
    try:
        while True:
            items.append(next(gen))
    except StopIteration as stop:
        return items, stop.value


def test_with_progress_yields_each_progress_then_returns_the_summary() -> None:
    items, summary = drain(batch_job.with_progress(fake_run, ["in"], "out", {"points_per_side": 4}))
    assert [p.done for p in items] == [1, 2, 3] and [p.current for p in items][-1] == "im2.png"
    assert summary.done == 3 and summary.settings == {"points_per_side": 4}
    assert batch_job.progress_text(items[1]) == "Batch: 2/3 images, last im1.png"


def test_with_progress_stops_on_cancel_and_raises_the_runs_error() -> None:
    cancel, first_read = threading.Event(), threading.Event()

    def run(*a, progress=None, cancel=None, **kw):  # waits until its first progress is read
        progress(SimpleNamespace(done=1))
        first_read.wait(10)
        return fake_run(*a, progress=progress, cancel=cancel, **kw)

    gen = batch_job.with_progress(run, ["in"], "out", cancel=cancel)
    next(gen)
    cancel.set()
    first_read.set()
    items, summary = drain(gen)
    assert summary.cancelled and summary.done == 0 and items == []

    def broken(*a, progress=None, **kw):
        raise OSError("output not writable")

    with pytest.raises(OSError, match="not writable"):
        drain(batch_job.with_progress(broken, ["in"], "out"))


def test_summary_text_names_counts_and_failures() -> None:
    s = SimpleNamespace(done=2, skipped=1, failed=[SimpleNamespace(path="bad.png", code="image_decode",
                                                                     message="not an image")],
                        objects=17, seconds=3.21, cancelled=False, output=Path("/out"))
    text = batch_job.summary_text(s)
    assert text.startswith("Batch done: 2 segmented, 1 skipped (done before), 1 failed, 17 objects, 3.2 s")
    assert "Failed: bad.png (image_decode): not an image" in text and "/out" in text


def test_results_and_image_for_follow_the_batch_layout(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    (src / "sub").mkdir(parents=True)
    (out / "labels" / "sub").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(src / "sub" / "a.jpg")
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(src / "b.tif")
    labels = np.array([[0, 1, 300, 0, 0]] * 4, np.uint16)
    Image.fromarray(labels).save(out / "labels" / "sub" / "a.png")
    Image.fromarray(labels).save(out / "labels" / "b.png")
    (out / "annotations.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "sub/a.jpg"}]}))
    found = batch_job.results(out)
    assert found == [out / "labels" / "b.png", out / "labels" / "sub" / "a.png"]
    assert batch_job.image_for(found[1], out, src) == src / "sub" / "a.jpg"  # from the COCO file
    assert batch_job.image_for(found[0], out, src) == src / "b.tif"  # by name when not listed
    assert batch_job.image_for(found[0], out, tmp_path / "elsewhere") is None
    back = batch_job.read_label_map(found[0])
    assert back.dtype == np.uint16 and np.array_equal(back, labels)
