"""The plugin in a headless napari viewer against the real daemon (random-weight SAM2.1-tiny):
prompts become labels equal to the daemon's own masks for the same prompts, at the right pixels
whatever the layer's scale, translate or slice; ids, refine modes, names, exports, undo,
auto-segment, and the npe2 manifest."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from sam2_service.client import Client
from sam2_service.napari import logic
from sam2_service.napari.controller import AUTO, BOX, POINTS

from .conftest import wait_idle

tifffile = pytest.importorskip("tifffile", reason="pip install -e '.[napari]'")
pytestmark = pytest.mark.model


def scene(h: int = 64, w: int = 80, seed: int = 0) -> np.ndarray:
    """A greyscale uint8 image: a bright disk and a mid-grey rectangle on noise."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 40, (h, w)).astype(np.uint8)
    yy, xx = np.mgrid[:h, :w]
    img[(yy - 20) ** 2 + (xx - 28) ** 2 < 100] = 230
    img[38:56, 45:72] = 150
    return img


def rectangle(r1: float, c1: float, r2: float, c2: float, lead: tuple = ()) -> np.ndarray:
    return np.array([[*lead, r1, c1], [*lead, r1, c2], [*lead, r2, c2], [*lead, r2, c1]], float)


def daemon_mask(socket_path: str, image: np.ndarray, **prompts: Any) -> Any:
    with Client(socket_path) as c:
        return c.segment(image, **prompts)


def first_nonempty(socket_path: str, img: np.ndarray, candidates: list) -> tuple[tuple, np.ndarray]:
    """The first (row, col) whose one-point mask from the daemon is not empty (random weights
    leave some points with none), and that mask as bool."""
    for r, c in candidates:
        mask = daemon_mask(socket_path, img, points=[(c + 0.5, r + 0.5, 1)]).mask > 0
        if mask.any():
            return (r, c), mask
    raise AssertionError("no candidate point gives a mask")


def test_point_and_boxes_give_the_daemons_masks_with_new_ids(widget, viewer, daemon, qtbot) -> None:
    img = scene()
    viewer.add_image(img, name="cells")
    widget.use_image()
    spots = [(46, 58), (20, 28), (10, 10), (30, 60), (50, 20), (5, 70)]
    (r, c), want = first_nonempty(daemon.socket_path, img, spots)
    viewer.layers[POINTS].add([[r, c]])  # (row, col) = (y, x)
    wait_idle(qtbot, widget)
    got = np.asarray(viewer.layers["Points_mask"].data)
    assert np.array_equal(got == 1, want) and set(np.unique(got)) == {0, 1}

    boxes = viewer.layers[BOX]
    boxes.add_rectangles(rectangle(10, 15, 30, 40))
    wait_idle(qtbot, widget)
    boxes.add_rectangles(rectangle(37, 44, 56, 72))
    wait_idle(qtbot, widget)
    ref = daemon_mask(daemon.socket_path, img, boxes=[(15.5, 10.5, 40.5, 30.5), (44.5, 37.5, 72.5, 56.5)])
    expect = np.zeros(img.shape, np.uint16)
    for k, m in enumerate(ref.masks, start=1):
        expect[m.mask > 0] = k
    assert expect.any() and np.array_equal(np.asarray(viewer.layers["Box_mask"].data), expect)

    widget.ctl.new_object()  # keep these; the next point is a new object with the next id
    assert len(viewer.layers[POINTS].data) == 0
    (r2, c2), want2 = first_nonempty(daemon.socket_path, img, [p for p in spots if p != (r, c)])
    viewer.layers[POINTS].add([[r2, c2]])
    wait_idle(qtbot, widget)
    got = np.asarray(viewer.layers["Points_mask"].data)
    assert got.max() == 2 and np.array_equal(got == 2, want2)
    assert np.array_equal(got == 1, want & ~want2)  # the new label lies on top
    assert widget.ctl.undo() and np.array_equal(np.asarray(viewer.layers["Points_mask"].data) == 1, want)


def test_moving_a_point_replaces_its_result_and_background_points(widget, viewer, daemon, qtbot) -> None:
    img = scene(seed=1)
    viewer.add_image(img, name="cells")
    widget.use_image()
    pts = viewer.layers[POINTS]
    pts.add([[46, 58]])
    wait_idle(qtbot, widget)
    widget.toggle()
    assert pts.feature_defaults["label"][0] == "background"
    pts.add([[20, 28]])
    wait_idle(qtbot, widget)
    assert np.allclose(pts.face_color[-1], [1, 0, 0, 1])  # the background point is red
    want = daemon_mask(daemon.socket_path, img, points=[(58.5, 46.5, 1), (28.5, 20.5, 0)]).mask > 0
    got = np.asarray(viewer.layers["Points_mask"].data)
    assert np.array_equal(got > 0, want) and got.max() <= 1  # same object: same id
    pts.data = np.array([[40.0, 50.0], [20.0, 28.0]])  # the first point moved
    wait_idle(qtbot, widget)
    want = daemon_mask(daemon.socket_path, img, points=[(50.5, 40.5, 1), (28.5, 20.5, 0)]).mask > 0
    got = np.asarray(viewer.layers["Points_mask"].data)
    assert np.array_equal(got > 0, want) and got.max() <= 1
    assert len(widget.ctl.undo_stack) == 1  # re-runs replace the object's edit


def test_scaled_translated_layer_and_stack_slice_map_prompts(widget, viewer, daemon, qtbot) -> None:
    stack = np.stack([scene(seed=s) for s in (3, 4, 2)]).astype(np.uint16) * 200
    viewer.add_image(stack, name="stack", scale=(1.0, 2.0, 3.0), translate=(0.0, 10.0, -5.0))
    widget.image_combo.setCurrentText("stack")
    widget.use_image()
    viewer.dims.set_point(0, 2)
    # data (row 20, col 28) of slice 2 in world coordinates
    viewer.layers[POINTS].add([[2, 20 * 2 + 10, 28 * 3 - 5]])
    wait_idle(qtbot, widget)
    want = daemon_mask(daemon.socket_path, logic.to_uint8(stack[2]), points=[(28.5, 20.5, 1)]).mask > 0
    labels = np.asarray(viewer.layers["Points_mask"].data)
    assert labels.shape == stack.shape
    assert np.array_equal(labels[2] == 1, want) and not labels[:2].any()


def test_refine_modes_change_only_the_target(widget, viewer, qtbot) -> None:
    viewer.add_image(np.zeros((4, 4), np.uint8), name="blank")
    widget.use_image()
    layer = viewer.layers["Points_mask"]
    layer.data[:] = np.array([[1, 1, 0, 0], [1, 1, 2, 0], [0, 0, 2, 0], [0, 0, 0, 0]])
    mask = np.zeros((4, 4), np.uint8)
    mask[0:2, 1:3] = 255
    plane = widget.ctl.plane()
    expected = {"union": [[1, 1, 1, 0], [1, 1, 1, 0]], "intersection": [[0, 1, 0, 0], [0, 1, 2, 0]],
                "overwrite": [[0, 1, 1, 0], [0, 1, 1, 0]]}
    for mode, top in expected.items():
        widget.mode_combo.setCurrentText(mode)
        widget.target_spin.setValue(1)
        widget.ctl._live = {}
        result = SimpleNamespace(mask=mask, masks=(), score=1.0, inference_time_ms=1.0)
        widget.ctl._segmented(POINTS, plane, result, widget.ctl.tickets[POINTS].take())
        assert np.asarray(layer.data)[:2].tolist() == top, mode
        widget.ctl.undo()


def test_names_are_stored_shown_and_exported(widget, viewer, tmp_path: Path) -> None:
    viewer.add_image(np.zeros((8, 9), np.uint8), name="blank")
    widget.use_image()
    layer = viewer.layers["Box_mask"]
    layer.data[1:4, 2:6] = 1
    layer.data[6:8, 0:2] = 2
    widget.labels_combo.setCurrentText("Box_mask")
    widget.name_id_spin.setValue(2)
    widget.name_edit.setText("nucleus")
    widget.name_label()
    assert layer.metadata["names"] == {2: "nucleus"}
    text = viewer.layers["Box_mask names"]
    assert list(text.features["name"]) == ["nucleus"]
    assert layer.data[tuple(int(v) for v in text.data[0])] == 2  # drawn on its region
    back = np.asarray(tifffile.imread(widget.export("TIFF", str(tmp_path / "m.tif"))))
    assert np.array_equal(back, layer.data)
    from PIL import Image

    png = np.asarray(Image.open(widget.export("PNG", str(tmp_path / "m.png"))))
    assert png.dtype == np.uint16 and np.array_equal(png, layer.data)
    doc = json.loads(Path(widget.export("JSON", str(tmp_path / "m.json"))).read_text())
    assert doc["names"] == {"2": "nucleus"} and [r["id"] for r in doc["labels"]] == [1, 2]


def test_auto_segment_fills_the_label_map(widget, viewer, daemon, qtbot) -> None:
    img = np.stack([scene(seed=5)] * 3, axis=-1)  # RGB
    rgba = np.concatenate([img, np.full(img.shape[:2] + (1,), 255, np.uint8)], axis=-1)
    viewer.add_image(rgba, name="rgba", rgb=True)
    widget.use_image()
    widget.pps_spin.setValue(4)
    widget.iou_spin.setValue(0)
    widget.stab_spin.setValue(0)
    widget.auto_segment()
    wait_idle(qtbot, widget, 300)
    with Client(daemon.socket_path) as c:
        want, _ = c.auto(img, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    got = np.asarray(viewer.layers[AUTO].data)
    assert got.shape == img.shape[:2] and got.max() > 0
    assert np.array_equal(got, want)


def test_not_running_says_how_to_start(viewer, tmp_path: Path) -> None:
    from sam2_service.napari.widget import SegmentWidget

    w = SegmentWidget(viewer)
    w.socket_edit.setText(str(tmp_path / "none.sock"))
    text = w.connect_daemon()
    assert text.startswith("Not connected") and "make run" in text and "none.sock" in text


def test_npe2_manifest_opens_the_widget(npe2pm, viewer) -> None:
    """The manifest the ``napari.manifest`` entry point names is valid, and napari opens its
    widget from it (npe2pm: napari's plugin manager with only this plugin registered)."""
    import npe2

    tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads pyproject.toml")

    root = Path(__file__).resolve().parents[2]
    entry = tomllib.loads((root / "pyproject.toml").read_text())["project"]["entry-points"]["napari.manifest"]
    module, _, resource = entry["sam2-service"].partition(":")
    path = root.joinpath(*module.split("."), resource)
    manifest = npe2.PluginManifest.from_file(path)
    assert [w.display_name for w in manifest.contributions.widgets] == ["SAM2"]
    npe2pm.register(manifest)
    dock, widget = viewer.window.add_plugin_dock_widget("sam2-service", "SAM2")
    assert type(widget).__name__ == "SegmentWidget"  # (napari hands it a proxy of the viewer)
    # the dock's title is "<widget> (<plugin>)": short, so the dock does not cut it off
    assert viewer.window.dock_widgets["SAM2 (sam2-service)"] is widget


def test_napari_runs_on_a_supported_qt_binding(viewer) -> None:
    """Not PyQt5: napari 0.9 deprecates it and shows a toast on the canvas saying so (its
    ``SHOW_QT_WARNING`` flag, raised only for Qt 5)."""
    import qtpy
    from napari._qt import qt_main_window

    assert qtpy.API_NAME in ("PyQt6", "PySide6") and qtpy.QT6
    assert not qt_main_window.SHOW_QT_WARNING


class FakeClient:
    """Records requests; segment answers a mask that is one pixel at the last point."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    def embed(self, image: np.ndarray) -> Any:
        self.calls.append(("embed", {"shape": image.shape}))
        return SimpleNamespace(image_id="x", width=image.shape[1], height=image.shape[0])

    def segment(self, ref: Any, **kw: Any) -> Any:
        self.calls.append(("segment", kw))
        mask = np.zeros((ref.height, ref.width), np.uint8)
        x, y, _ = kw["points"][-1]
        mask[int(y), int(x)] = 255
        return SimpleNamespace(mask=mask, masks=(), score=1.0, inference_time_ms=1.0)

    def auto(self, ref: Any, **kw: Any) -> Any:
        self.calls.append(("auto", kw))
        return SimpleNamespace(labels=np.ones((ref.height, ref.width), np.uint16), table=[{}])


def test_only_the_latest_prompt_is_written_and_images_embed_once(viewer) -> None:
    """Replies arriving out of order: the older one is dropped. The image is embedded once;
    auto with a tile smaller than the image asks for tiles with the halo."""
    from sam2_service.napari.controller import Controller

    jobs: list = []
    ctl = Controller(viewer, lambda job, done: jobs.append((job, done)))
    ctl.client = FakeClient()
    viewer.add_image(np.zeros((40, 50), np.uint8), name="img")
    ctl.use_image(viewer.layers["img"])
    viewer.layers[POINTS].add([[5, 6]])
    viewer.layers[POINTS].add([[30, 40]])  # moves on before the first reply
    (job1, done1), (job2, done2) = jobs
    r1, r2 = job1(), job2()
    done2(r2)
    done1(r1)  # stale: dropped
    labels = np.asarray(viewer.layers["Points_mask"].data)
    assert labels[30, 40] == 1 and labels.sum() == 1  # the latest prompt's mask only
    ctl.tile, ctl.halo, ctl.auto_settings = 32, 8, {"points_per_side": 4}
    ctl.auto_segment()
    job, done = jobs[-1]
    done(job())
    assert [c for c, _ in ctl.client.calls].count("embed") == 1
    assert ctl.client.calls[-1] == ("auto", {"points_per_side": 4, "tile_shape": (32, 32), "halo": (8, 8)})
    assert np.asarray(viewer.layers[AUTO].data).all()


def fake_controller(viewer: Any, image: np.ndarray) -> tuple[Any, list]:
    """A Controller on ``image`` with :class:`FakeClient`; its jobs are queued, not run."""
    from sam2_service.napari.controller import Controller

    jobs: list = []
    ctl = Controller(viewer, lambda job, done: jobs.append((job, done)))
    ctl.client = FakeClient()
    viewer.add_image(image, name="img")
    ctl.use_image(viewer.layers["img"])
    return ctl, jobs


def test_an_edited_layer_is_embedded_again(viewer) -> None:
    """Embeddings are keyed by the plane's content, not the layer: the same content reuses its
    embedding, an edit of the layer's data gives a new one."""
    ctl, jobs = fake_controller(viewer, np.zeros((40, 50), np.uint8))
    viewer.layers[POINTS].add([[5, 6]])
    viewer.layers[POINTS].add([[7, 8]])
    edited = np.zeros((40, 50), np.uint8)
    edited[10:20, 10:20] = 200
    viewer.layers["img"].data = edited
    viewer.layers[POINTS].add([[9, 10]])
    for job, done in jobs:
        done(job())
    embeds = [kw for c, kw in ctl.client.calls if c == "embed"]
    assert len(embeds) == 2 and [c for c, _ in ctl.client.calls].count("segment") == 3
    labels = np.asarray(viewer.layers["Points_mask"].data)
    assert labels[9, 10] == 1 and labels.sum() == 1


class BoxesTooClient(FakeClient):
    """:class:`FakeClient` that also answers a ``boxes`` request: one pixel at each box's corner."""

    def segment(self, ref: Any, **kw: Any) -> Any:
        if "points" in kw:
            return super().segment(ref, **kw)
        self.calls.append(("segment", kw))
        masks = []
        for x1, y1, _, _ in kw["boxes"]:
            m = np.zeros((ref.height, ref.width), np.uint8)
            m[int(y1), int(x1)] = 255
            masks.append(SimpleNamespace(mask=m))
        return SimpleNamespace(mask=masks[0].mask, masks=masks, score=1.0, inference_time_ms=1.0)


def test_points_and_boxes_results_do_not_drop_each_other(viewer) -> None:
    """Latest wins per prompt layer: a boxes request sent after a points request does not make
    the points reply stale (SEGMENT runs both)."""
    ctl, jobs = fake_controller(viewer, np.zeros((40, 50), np.uint8))
    ctl.client = BoxesTooClient()
    viewer.layers[POINTS].add([[5, 6]])
    viewer.layers[BOX].add_rectangles(rectangle(20, 30, 25, 35))
    assert len(jobs) == 2
    for job, done in jobs:
        done(job())
    assert np.asarray(viewer.layers["Points_mask"].data)[5, 6] == 1
    assert np.asarray(viewer.layers["Box_mask"].data).any()


def test_a_point_outside_the_image_is_not_sent(viewer) -> None:
    """The protocol's point rule, checked before sending: a point past the image's right edge
    (x > W) sends nothing and says why; a point on the edge (x = W) is sent."""
    ctl, jobs = fake_controller(viewer, np.zeros((40, 50), np.uint8))
    said: list[str] = []
    ctl.status = said.append
    viewer.layers[POINTS].add([[5, 50]])  # data column 50: x = 50.5 > 50
    assert jobs == [] and "outside the 50x40 image" in said[-1]
    viewer.layers[POINTS].data = np.array([[5.0, 49.5]])  # x = 50.0: on the edge, inside
    assert len(jobs) == 1


def test_a_second_image_of_another_shape_gets_fresh_layers(widget, viewer) -> None:
    viewer.add_image(np.zeros((10, 12), np.uint8), name="small")
    widget.image_combo.setCurrentText("small")
    widget.use_image()
    viewer.add_image(np.zeros((3, 20, 30, 3), np.uint8), name="rgb stack", rgb=True)
    widget.image_combo.setCurrentText("rgb stack")
    widget.use_image()
    assert viewer.layers["Points_mask"].data.shape == (3, 20, 30)
    assert viewer.layers[POINTS].ndim == 3
    assert viewer.layers["Points_mask (earlier image)"].data.shape == (10, 12)


def test_prompt_layers_are_ready_to_click(viewer) -> None:
    """After "Add prompt layers" the points layer is the selected one, in add mode: a click on
    the image adds a point (not the last label layer added)."""
    fake_controller(viewer, np.zeros((40, 50), np.uint8))
    pts = viewer.layers[POINTS]
    assert viewer.layers.selection.active is pts and str(pts.mode) == "add"


def test_buttons_select_the_points_layer_and_undo_says_what_it_undid(viewer, qtbot) -> None:
    """"Add prompt layers" leaves Prompt Points selected in add mode. The Undo button's
    message: what was undone, where, and what is left; or that there is nothing to undo
    (instead of the last score staying on the message line); likewise when removing the
    plane's points removes their result."""
    from qtpy.QtWidgets import QPushButton

    from sam2_service.napari.widget import SegmentWidget

    w = SegmentWidget(viewer)
    qtbot.addWidget(w)
    w.ctl.client, w.ctl.run = FakeClient(), lambda job, done: done(job())
    viewer.add_image(np.zeros((3, 40, 50), np.uint8), name="img")
    button = {b.text(): b for b in w.findChildren(QPushButton)}
    button["Add prompt layers"].click()
    pts = viewer.layers[POINTS]
    assert viewer.layers.selection.active is pts and str(pts.mode) == "add"
    viewer.dims.set_point(0, 1)
    pts.add([[1, 5, 6]])
    assert w.message.text().startswith("Prompt Points: score")
    undo = button["Undo"]
    undo.click()
    assert w.message.text() == ("Undone: the Prompt Points result (label 1) in Points_mask, "
                                "slice 1. Nothing more to undo.")
    assert not np.asarray(viewer.layers["Points_mask"].data).any()
    undo.click()
    assert w.message.text() == "Nothing to undo."
    pts.add([[1, 5, 6]])
    pts.data = pts.data[:0]  # every point of the plane removed: so is their result
    assert w.message.text() == ("Removed (no Prompt Points left on this plane): the Prompt Points "
                                "result (label 1) in Points_mask, slice 1. Nothing more to undo.")
