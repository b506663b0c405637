"""The dock widget: Qt controls wired to :class:`.controller.Controller` (which holds the
layer logic), :class:`.tracker.Propagator` (propagation through a stack) and
:mod:`.batch_job` (a batch folder). Requests run in napari thread workers with a busy progress
bar (propagation and batches: a progress bar with Cancel), so the viewer never freezes while
the daemon works.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Callable

from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QVBoxLayout,
    QWidget,
)

from ..client import default_socket_path
from . import logic
from .controller import AUTO, BOX, MASKS, POINTS, Controller
from .jobs import JobControls
from .jobs import button as _button
from .jobs import spin as _spin
from .names import name_label
from .tracker import Propagator


class SegmentWidget(JobControls, QWidget):
    """SAM2 segmentation: connection, prompts, modes, auto-segment, names, export, undo.

    Args:
        napari_viewer: the viewer (npe2 passes it by this parameter name).
    """

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.busy = 0
        self.ctl = Controller(napari_viewer, self._run)
        self.ctl.status = self._status
        self.tracker = Propagator(self.ctl)
        self.tracker.stream, self.tracker.progress = self._stream, self._job_progress
        self.batch_cancel = threading.Event()
        self.batch_dirs: tuple[str, str] | None = None  # (input, output) of the last batch
        lay = QVBoxLayout(self)
        for group in (self._connection_box(), self._prompt_box(), self._propagate_box(),
                      self._auto_box(), self._names_box()):
            lay.addWidget(group)
        self.progress = QProgressBar()
        self.progress.setRange(0, 0)  # busy indicator
        self.progress.setVisible(False)
        self.job_bar = QProgressBar()  # propagation and batch: done / total, with Cancel
        self.cancel_button = _button("Cancel", self.cancel_job, "stop after the slice or image in flight")
        row = QHBoxLayout()
        row.addWidget(self.job_bar)
        row.addWidget(self.cancel_button)
        self._show_job(False)
        self.message = QLabel("")
        self.message.setWordWrap(True)
        lay.addWidget(self.progress)
        lay.addLayout(row)
        lay.addWidget(self.message)
        lay.addStretch()
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(lambda e: self.tracker.drop(e.value))
        self._refresh_layers()

    # -- building -----------------------------------------------------------------------------
    def _connection_box(self) -> QGroupBox:
        box = QGroupBox("Daemon")
        form = QFormLayout(box)
        self.socket_edit = QLineEdit(default_socket_path())
        self.conn_label = QLabel("Not connected")
        self.conn_label.setWordWrap(True)
        form.addRow("Socket", self.socket_edit)
        form.addRow(_button("Connect", self.connect_daemon, "ask the daemon for its model (op info)"))
        form.addRow(self.conn_label)
        return box

    def _prompt_box(self) -> QGroupBox:
        box = QGroupBox("Prompts")
        form = QFormLayout(box)
        self.image_combo = QComboBox()
        self.mode_combo = QComboBox()
        self.mode_combo.addItems(["add", "union", "intersection", "overwrite"])
        self.mode_combo.setToolTip("add: a new label on top; union/intersection/overwrite: refine "
                                   "the target label")
        self.mode_combo.currentTextChanged.connect(lambda m: setattr(self.ctl, "mode", m))
        self.target_spin = _spin(1, 65535, 1)
        self.target_spin.valueChanged.connect(lambda v: setattr(self.ctl, "target", int(v)))
        form.addRow("Image", self.image_combo)
        form.addRow(_button("Add prompt layers", self.use_image, f"{POINTS} and {BOX} layers"))
        self.fg_button = _button("Points: foreground (T)", self.toggle, "toggle foreground/background")
        form.addRow(self.fg_button)
        form.addRow("Mode", self.mode_combo)
        form.addRow("Target label", self.target_spin)
        row = QHBoxLayout()
        for text, slot in (("SEGMENT", self.segment), ("New object", self.ctl.new_object),
                           ("Undo", self.ctl.undo)):
            row.addWidget(_button(text, slot))
        form.addRow(row)
        return box

    def _auto_box(self) -> QGroupBox:
        box = QGroupBox("Automatic")
        form = QFormLayout(box)
        self.pps_spin = _spin(1, 64, 16)
        self.iou_spin = _spin(0, 1, 0.8, 2)
        self.stab_spin = _spin(0, 1, 0.95, 2)
        self.tile_spin = _spin(0, 8192, 0)
        self.halo_spin = _spin(0, 1024, 64)
        self.tile_spin.setToolTip("0: no tiling; else tiles of this many pixels for larger images")
        for name, w in (("Points per side", self.pps_spin), ("Pred IoU thresh", self.iou_spin),
                        ("Stability thresh", self.stab_spin), ("Tile (px)", self.tile_spin),
                        ("Halo (px)", self.halo_spin)):
            form.addRow(name, w)
        form.addRow(_button("AUTO-SEGMENT", self.auto_segment, f"fill {AUTO}"))
        row = QHBoxLayout()
        row.addWidget(_button("Batch folder...", self.batch_dialog,
                              "segment every image of a folder into an output folder"))
        self.open_result_button = _button("Open result...", self.open_result_dialog,
                                          "load a label map of the last batch with its image")
        self.open_result_button.setEnabled(False)
        row.addWidget(self.open_result_button)
        form.addRow(row)
        return box

    def _names_box(self) -> QGroupBox:
        box = QGroupBox("Names and export")
        form = QFormLayout(box)
        self.labels_combo = QComboBox()
        self.name_id_spin = _spin(1, 65535, 1)
        self.name_edit = QLineEdit()
        form.addRow("Label layer", self.labels_combo)
        form.addRow("Label id", self.name_id_spin)
        form.addRow("Name", self.name_edit)
        form.addRow(_button("NAME LABEL", self.name_label))
        row = QHBoxLayout()
        for fmt in ("PNG", "TIFF", "JSON"):
            row.addWidget(_button(f"Export {fmt}", lambda f=fmt: self.export_dialog(f)))
        form.addRow(row)
        return box

    # -- actions ------------------------------------------------------------------------------
    def connect_daemon(self) -> str:
        text = self.ctl.connect(self.socket_edit.text().strip())
        self.conn_label.setText(text)
        return text

    def use_image(self) -> None:
        name = self.image_combo.currentText()
        if not name:
            self._status("Open an image first.")
            return
        self.ctl.use_image(self.viewer.layers[name])
        self._refresh_layers()
        shape = self.ctl._shape()
        for spin in (self.from_spin, self.to_spin):
            spin.setRange(0, max(shape[0] - 1, 0) if len(shape) == 3 else 0)
        self.to_spin.setValue(self.to_spin.maximum())

    def toggle(self) -> None:
        if POINTS in self.viewer.layers:
            self.fg_button.setText(f"Points: {self.ctl.toggle_point_label()} (T)")

    def segment(self) -> None:
        for kind in (POINTS, BOX):
            if kind in self.viewer.layers and len(self.viewer.layers[kind].data):
                self.ctl.segment(kind)

    def auto_segment(self) -> None:
        self.ctl.auto_settings = {"points_per_side": int(self.pps_spin.value()),
                                  "pred_iou_thresh": float(self.iou_spin.value()),
                                  "stability_score_thresh": float(self.stab_spin.value())}
        self.ctl.tile, self.ctl.halo = int(self.tile_spin.value()), int(self.halo_spin.value())
        self.ctl.auto_segment()

    def name_label(self) -> None:
        name = self.labels_combo.currentText()
        if name in self.viewer.layers:
            index = self.ctl.plane().index if self.ctl.image is not None else ()
            name_label(self.viewer, self.viewer.layers[name], int(self.name_id_spin.value()),
                       self.name_edit.text().strip(), index)

    def export(self, fmt: str, path: str) -> str:
        """Export the chosen label layer (PNG/TIFF, 16-bit) or its names and table (JSON)."""
        layer = self.viewer.layers[self.labels_combo.currentText()]
        if fmt == "JSON":
            out = logic.export_table(layer.data, layer.metadata.get("names", {}), path)
        else:
            out = logic.export_labels(layer.data, path)
        self._status(f"Wrote {out}")
        return str(out)

    def export_dialog(self, fmt: str) -> None:
        if self.labels_combo.currentText() not in self.viewer.layers:
            return
        suffix = {"PNG": ".png", "TIFF": ".tif", "JSON": ".json"}[fmt]
        default = os.path.join(os.getcwd(), self.labels_combo.currentText() + suffix)
        path, _ = QFileDialog.getSaveFileName(self, f"Export {fmt}", default)
        if path:
            try:
                self.export(fmt, path)
            except (OSError, ValueError) as exc:
                self._status(f"Export failed: {exc}")

    # -- plumbing -----------------------------------------------------------------------------
    def _refresh_layers(self, *_: Any) -> None:
        from napari.layers import Image, Labels

        for combo, kind in ((self.image_combo, Image), (self.labels_combo, Labels)):
            current = combo.currentText()
            names = [lay.name for lay in self.viewer.layers if isinstance(lay, kind)]
            combo.clear()
            combo.addItems(names)
            if current in names:
                combo.setCurrentText(current)
            elif kind is Labels and MASKS[POINTS] in names:
                combo.setCurrentText(MASKS[POINTS])

    def _run(self, job: Callable[[], Any], done: Callable[[Any], None]) -> None:
        """Run ``job`` in a napari thread worker; ``done`` gets its result or exception on
        the GUI thread."""
        from napari.qt.threading import create_worker

        worker = create_worker(job)
        worker.returned.connect(done)
        worker.errored.connect(done)
        worker.finished.connect(self._finished)
        self.busy += 1
        self.progress.setVisible(True)
        worker.start()

    def _finished(self) -> None:
        self.busy -= 1
        self.progress.setVisible(self.busy > 0)

    def closeEvent(self, event: Any) -> None:  # noqa: N802 (Qt's name)
        """Close the video sessions with the widget."""
        self.tracker.close_all()
        super().closeEvent(event)

    def _status(self, text: str) -> None:
        self.message.setText(text)
