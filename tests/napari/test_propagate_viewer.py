"""Propagation in a headless napari viewer: with a fake video session (which slices, which
labels, what is sent, cancel, undo, sessions opened once and closed with their layer), and on
a real MRI volume against the real daemon, where every slice's labels equal the client's own
propagation for the same prompts."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from sam2_service.napari.controller import BOX, POINTS, Controller
from sam2_service.napari.tracker import PROPAGATION, Propagator, stream_inline

from .conftest import wait_idle
from .test_viewer import BoxesTooClient, rectangle

FRAMES, H, W = 6, 20, 24


class FakeSession:
    """A video session whose object ``k`` covers a k-pixel-wide column strip starting at
    column ``frame`` on every frame; records what it is sent."""

    def __init__(self, frames: np.ndarray) -> None:
        self.frames, self.prompts, self.runs, self.closed, self.iter_closed = frames, [], [], False, False

    def add_prompt(self, frame: int, object_id: int, points=(), box=None, mask=None) -> np.ndarray:
        self.prompts.append((frame, object_id, tuple(points), box))
        return self.mask(frame, object_id)

    def mask(self, frame: int, object_id: int) -> np.ndarray:
        m = np.zeros(self.frames.shape[1:3], np.uint8)
        m[object_id:object_id + 4, frame:frame + object_id] = 255
        return m

    def propagate(self, direction="both", start=None, end=None) -> Iterator[Any]:
        self.runs.append((direction, start, end))
        objects = sorted({o for _, o, _, _ in self.prompts})
        try:
            for f in range(start, end + 1):
                yield f, {o: self.mask(f, o) for o in objects}
        finally:
            self.iter_closed = True

    def close(self) -> None:
        self.closed = True


class FakeVideoClient(BoxesTooClient):
    """The test_viewer fake client plus ``open_video``."""

    socket_path = "/nowhere"

    def __init__(self) -> None:
        super().__init__()
        self.sessions: list[FakeSession] = []

    def open_video(self, frames: np.ndarray) -> FakeSession:
        self.sessions.append(FakeSession(frames))
        return self.sessions[-1]


def setup(viewer: Any, shape: tuple = (FRAMES, H, W), name: str = "vol"
          ) -> tuple[Controller, Propagator, list[str]]:
    ctl = Controller(viewer, lambda job, done: done(job()))
    ctl.client = FakeVideoClient()
    said: list[str] = []
    ctl.status = said.append
    viewer.add_image(np.arange(np.prod(shape), dtype=np.uint16).reshape(shape), name=name)
    ctl.use_image(viewer.layers[name])
    return ctl, Propagator(ctl), said


def test_points_fill_their_label_through_all_slices_without_erasing_others(viewer) -> None:
    ctl, tracker, said = setup(viewer)
    labels = viewer.layers["Points_mask"]
    labels.data[4, 0:3, 3:6] = 9  # another label, partly under the object: kept
    viewer.dims.set_point(0, 2)
    viewer.layers[POINTS].add([[2, 5, 6]])  # add mode: the point's result is label 1 on slice 2
    assert labels.data[2, 5, 6] == 1
    tracker.propagate()
    session = ctl.client.sessions[0]
    assert session.frames.shape == (FRAMES, H, W)
    assert session.prompts == [(2, 1, ((6.5, 5.5, 1),), None)] and session.runs == [("both", 0, FRAMES - 1)]
    got = np.asarray(labels.data)
    other = np.zeros((H, W), bool)
    other[0:3, 3:6] = True
    for f in range(FRAMES):
        want = (session.mask(f, 1) > 0) & ~(other if f == 4 else False)
        assert np.array_equal(got[f] == 1, want), f
    assert (got[4] == 9).sum() == 9 and (session.mask(4, 1) > 0)[other].any()
    assert said[-1] == f"Propagated label 1 (Points_mask) through slices 0..{FRAMES - 1} ({FRAMES} slices)."
    assert ctl.undo_stack[-1].kind == PROPAGATION and ctl.undo()
    back = np.asarray(labels.data)
    assert (back == 1).sum() == 1 and (back[4] == 9).sum() == 9  # as before the propagation


def test_range_refine_mode_boxes_and_one_session_per_layer(viewer) -> None:
    ctl, tracker, said = setup(viewer)
    viewer.dims.set_point(0, 3)
    ctl.mode, ctl.target = "overwrite", 5
    boxes = viewer.layers[BOX]
    boxes.add_rectangles(rectangle(2, 3, 8, 9, lead=(3,)))
    tracker.propagate(1, 4, "forward")
    session = ctl.client.sessions[0]
    assert session.prompts == [(3, 1, (), (3.5, 2.5, 9.5, 8.5))] and session.runs == [("forward", 1, 4)]
    got = np.asarray(viewer.layers["Box_mask"].data)
    assert not got[[0, 5]].any() and all(np.array_equal(got[f] == 5, session.mask(f, 1) > 0) for f in (1, 2, 3, 4))
    tracker.propagate()  # the same prompt again: not sent again, the same session
    assert len(ctl.client.sessions) == 1 and len(session.prompts) == 1
    boxes.add_rectangles(rectangle(10, 3, 15, 9, lead=(3,)))
    tracker.propagate()
    assert said[-1].startswith("Not propagated: overwrite refines one label")
    ctl.mode = "add"  # each rectangle its own label and object
    tracker.propagate()
    assert ctl.undo_stack[-1].ids == [6, 7]  # new ids above the layer's largest (5)
    assert [p[1] for p in session.prompts[1:]] == [2, 3]  # two new objects of the session
    viewer.layers["vol"].data = np.zeros((FRAMES, H, W), np.uint16)  # new content: a new session
    tracker.propagate()
    assert len(ctl.client.sessions) == 2 and session.closed


def test_cancel_stops_after_the_slice_in_flight(viewer) -> None:
    ctl, tracker, said = setup(viewer)
    viewer.dims.set_point(0, 0)
    viewer.layers[POINTS].add([[0, 5, 6]])
    seen: list[int] = []

    def progress(done: int, total: int) -> None:
        seen.append(done)
        if done == 2:
            tracker.cancel()

    tracker.progress = progress
    tracker.propagate()
    assert ctl.client.sessions, said
    session = ctl.client.sessions[0]
    got = np.asarray(viewer.layers["Points_mask"].data)
    assert seen == [0, 1, 2] and session.iter_closed and not got[3:].any()
    assert said[-1] == "Propagation cancelled: label 1 (Points_mask) written in 2 of slices 0..5."


def test_a_2d_image_or_no_prompt_says_why(viewer) -> None:
    ctl, tracker, said = setup(viewer)
    viewer.dims.set_point(0, 0)
    tracker.propagate()
    assert said[-1] == "Not propagated: put points or a rectangle on slice 0 first."
    ctl2, tracker2, said2 = setup(viewer, (H, W), name="flat")
    tracker2.propagate()
    assert said2[-1].startswith("Not propagated: propagation needs a 3-D")


def test_the_widget_closes_a_layers_session_when_the_layer_goes(viewer, qtbot) -> None:
    from sam2_service.napari.widget import SegmentWidget

    w = SegmentWidget(viewer)
    qtbot.addWidget(w)
    w.ctl.client, w.ctl.run = FakeVideoClient(), lambda job, done: done(job())
    w.tracker.stream = stream_inline
    viewer.add_image(np.zeros((FRAMES, H, W), np.uint8), name="vol")
    w.use_image()
    viewer.dims.set_point(0, 0)
    assert w.to_spin.maximum() == FRAMES - 1 and w.to_spin.value() == FRAMES - 1
    viewer.layers[POINTS].add([[0, 5, 6]])
    w.all_check.setChecked(False)
    w.from_spin.setValue(0)
    w.to_spin.setValue(2)
    w.propagate()
    session = w.ctl.client.sessions[0]
    assert session.runs == [("both", 0, 2)] and not session.closed
    viewer.layers.remove("vol")
    assert session.closed and not w.tracker.tracks


# -- the real daemon on a real volume ------------------------------------------------------

pytest.importorskip("nibabel", reason="the test extra installs nibabel (its MRI test volumes)")


def mri_volume() -> np.ndarray:
    """Four slices of nibabel's example4d MRI (first time point), (Z, Y, X) int16, halved
    (each frame costs an encode: 1.5-3 s on the 2-core CPU)."""
    import nibabel

    path = Path(nibabel.__file__).parent / "tests" / "data" / "example4d.nii.gz"
    data = np.asanyarray(nibabel.load(path).dataobj)[..., 0]  # (X, Y, Z)
    return np.ascontiguousarray(data.transpose(2, 1, 0)[10:14, ::2, ::2])  # (4, 48, 64)


@pytest.fixture(scope="module")
def video_daemon(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path) -> Iterator[Any]:
    """A daemon on the random checkpoint with the object-score bias at +20 (objects appear)."""
    import torch

    from tests.integration.conftest import start_daemon
    from tests.video.conftest import OBJ_SCORE_BIAS

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state["model"][OBJ_SCORE_BIAS].fill_(20.0)
    path = tmp_path_factory.mktemp("napari-vckpt") / "video.pt"
    torch.save(state, path)
    d = start_daemon(tmp_path_factory.mktemp("napari-vdaemon"), "--checkpoint", str(path))
    yield d
    d.stop()


@pytest.mark.model
def test_propagated_labels_equal_the_clients_propagation(display, make_napari_viewer, video_daemon,
                                                         qtbot) -> None:
    from sam2_service.client import Client
    from sam2_service.napari.widget import SegmentWidget

    vol = mri_volume()
    frame, (row, col), box = 1, (24, 30), (12.5, 10.5, 40.5, 30.5)  # box: x1, y1, x2, y2
    with Client(video_daemon.socket_path) as c, c.open_video(vol) as ref:
        ref.add_prompt(frame, 1, points=[(col + 0.5, row + 0.5, 1)])
        ref.add_prompt(frame, 2, box=box)
        want = dict(ref.propagate("both"))
    assert sorted(want) == list(range(len(vol)))  # both ways from slice 1
    assert all(any(want[f][obj].any() for f in want) for obj in (1, 2))  # neither object empty

    viewer = make_napari_viewer(show=False)
    w = SegmentWidget(viewer)
    viewer.window.add_dock_widget(w, name="SAM2")
    w.socket_edit.setText(video_daemon.socket_path)
    assert w.connect_daemon().startswith("Connected")
    viewer.add_image(vol, name="mri")
    w.use_image()
    viewer.dims.set_point(0, frame)
    w.mode_combo.setCurrentText("overwrite")
    w.target_spin.setValue(3)
    viewer.layers[POINTS].add([[frame, row, col]])
    wait_idle(qtbot, w)
    viewer.layers[BOX].add_rectangles(rectangle(10, 12, 30, 40, lead=(frame,)))
    wait_idle(qtbot, w)
    w.propagate()
    wait_idle(qtbot, w, 300)
    assert w.message.text().startswith("Propagated label 3 (Points_mask), 3 (Box_mask)"), w.message.text()
    points, boxes = np.asarray(viewer.layers["Points_mask"].data), np.asarray(viewer.layers["Box_mask"].data)
    for f in range(len(vol)):
        assert np.array_equal(points[f] == 3, want[f][1] > 0), f
        assert np.array_equal(boxes[f] == 3, want[f][2] > 0), f
    assert set(np.unique(points)) <= {0, 3} and set(np.unique(boxes)) <= {0, 3}
    w.close()
    assert not w.tracker.tracks
