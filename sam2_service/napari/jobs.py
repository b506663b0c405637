"""The dock widget's long-running jobs, as a mixin of :class:`.widget.SegmentWidget`: the
Propagate group (:class:`.tracker.Propagator`), "Batch folder..." (:mod:`.batch_job` over
:func:`sam2_service.batch.run`) with "Open result...", and the generator thread worker with
its progress bar and Cancel that both use. Also the small Qt helpers the widget builds with.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
)

from . import batch_job


def button(text: str, slot: Callable[[], Any], tip: str = "") -> QPushButton:
    """A push button calling ``slot()`` when clicked."""
    b = QPushButton(text)
    b.clicked.connect(lambda *_: slot())
    b.setToolTip(tip)
    return b


def spin(lo: float, hi: float, value: float, decimals: int = 0) -> QSpinBox | QDoubleSpinBox:
    """An integer spin box, or a float one with ``decimals`` places."""
    s = QDoubleSpinBox() if decimals else QSpinBox()
    if decimals:
        s.setDecimals(decimals)
        s.setSingleStep(10 ** -decimals)
    s.setRange(lo, hi)
    s.setValue(value)
    return s


class JobControls:
    """Propagation and batch controls; the widget provides ``viewer``, ``ctl``, ``tracker``,
    ``busy``, the Automatic spin boxes, ``job_bar``, ``cancel_button``, ``_status`` and
    ``_finished``."""

    def _propagate_box(self) -> QGroupBox:
        box = QGroupBox("Propagate (3-D / time)")
        form = QFormLayout(box)
        self.all_check = QCheckBox("all slices")
        self.all_check.setChecked(True)
        self.from_spin, self.to_spin = spin(0, 0, 0), spin(0, 0, 0)
        self.all_check.toggled.connect(lambda on: [s.setEnabled(not on) for s in (self.from_spin, self.to_spin)])
        self.all_check.toggled.emit(True)
        row = QHBoxLayout()
        for w in (self.all_check, QLabel("from"), self.from_spin, QLabel("to"), self.to_spin):
            row.addWidget(w)
        self.direction_combo = QComboBox()
        self.direction_combo.addItems(["both", "forward", "backward"])
        form.addRow("Slices", row)
        form.addRow("Direction", self.direction_combo)
        row = QHBoxLayout()
        row.addWidget(button("PROPAGATE", self.propagate, "fill the prompted labels through the slices"))
        row.addWidget(button("Reset propagation", lambda: self._status(self.tracker.reset()),
                              "forget this image's objects and prompts"))
        form.addRow(row)
        return box

    def propagate(self) -> None:
        """Fill the prompted labels through all slices or the chosen range."""
        whole = self.all_check.isChecked()
        self.tracker.propagate(None if whole else int(self.from_spin.value()),
                               None if whole else int(self.to_spin.value()),
                               self.direction_combo.currentText())

    def cancel_job(self) -> None:
        self.tracker.cancel()
        self.batch_cancel.set()

    # -- batch --------------------------------------------------------------------------------
    def batch_dialog(self) -> None:
        src = QFileDialog.getExistingDirectory(self, "Batch: folder of images")
        dst = QFileDialog.getExistingDirectory(self, "Batch: output folder") if src else ""
        if src and dst:
            self.batch(src, dst)

    def batch(self, src: str, dst: str) -> None:
        """Segment every image under ``src`` into ``dst`` with the Automatic settings
        (:func:`sam2_service.batch.run`, daemon engine) in a thread worker."""
        from .. import batch

        tile = int(self.tile_spin.value())
        settings = {"points_per_side": int(self.pps_spin.value()),
                    "pred_iou_thresh": float(self.iou_spin.value()),
                    "stability_score_thresh": float(self.stab_spin.value()),
                    "tile_shape": (tile, tile) if tile else None,
                    "halo": (int(self.halo_spin.value()),) * 2 if tile else None}
        sock = self.ctl.client.socket_path if self.ctl.client else self.socket_edit.text().strip() or None
        self.batch_cancel = cancel = threading.Event()

        def job() -> Any:
            return (yield from batch_job.with_progress(batch.run, [src], dst, settings,
                                                       socket_path=sock, cancel=cancel))

        def item(p: Any) -> None:
            self._job_progress(p.done + p.skipped + p.failed, p.total)
            self._status(batch_job.progress_text(p))

        def done(result: Any) -> None:
            if isinstance(result, Exception):
                self._status(f"Batch failed: {result}")
                return
            self.batch_dirs = (src, dst)
            self.open_result_button.setEnabled(bool(batch_job.results(dst)))
            self._status(batch_job.summary_text(result))

        self._job_progress(0, 0)
        self._status(f"Batch: {src} -> {dst} ...")
        self._stream(job, item, done)

    def open_result_dialog(self) -> None:
        if self.batch_dirs is None:
            return
        path, _ = QFileDialog.getOpenFileName(self, "Open a batch result",
                                              str(Path(self.batch_dirs[1]) / "labels"),
                                              "Label maps (*.png)")
        if path:
            self.open_result(path)

    def open_result(self, path: str) -> None:
        """Load a batch label map as a Labels layer, over its input image (when found)."""
        from PIL import Image

        src, dst = self.batch_dirs or ("", str(Path(path).parent))
        image = batch_job.image_for(path, dst, src) if src else None
        name = Path(path).stem
        if image is not None:
            with Image.open(image) as im:
                self.viewer.add_image(np.asarray(im), name=name, rgb=im.mode in ("RGB", "RGBA"))
        self.viewer.add_labels(batch_job.read_label_map(path), name=f"{name} labels")
        self._status(f"Opened {path}" + (f" over {image}" if image else " (its image was not found)"))

    def _stream(self, job: Callable[[], Any], item: Callable[[Any], None],
                done: Callable[[Any], None]) -> None:
        """Run the generator ``job`` in a napari thread worker: ``item`` gets each yielded
        value and ``done`` the return value (or exception) on the GUI thread; the job bar and
        Cancel show meanwhile."""
        from napari.qt.threading import create_worker

        worker = create_worker(job)
        worker.yielded.connect(item)
        worker.returned.connect(done)
        worker.errored.connect(done)
        worker.finished.connect(self._finished)
        worker.finished.connect(lambda: self._show_job(False))
        self.busy += 1
        self._show_job(True)
        worker.start()

    def _job_progress(self, done: int, total: int) -> None:
        self.job_bar.setRange(0, total)  # total 0: busy until the first count
        self.job_bar.setValue(done)

    def _show_job(self, on: bool) -> None:
        self.job_bar.setVisible(on)
        self.cancel_button.setVisible(on)
