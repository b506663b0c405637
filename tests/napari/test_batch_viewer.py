""""Batch folder..." in a headless viewer against the real daemon: a folder of real images
(skimage.data, one in a subfolder, and a file that is not an image) segmented with the
Automatic settings, label maps equal to ``Client.auto`` on each image, the summary shown, and a
result opened as layers over its image, and a rerun skipping both."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam2_service.client import Client

from .conftest import wait_idle

pytestmark = pytest.mark.model
skdata = pytest.importorskip("skimage.data", reason="the test extra installs scikit-image")


def image_folder(root: Path) -> list[Path]:
    """Two real images (coins, a crop of camera in ``sub/``) and a text file."""
    (root / "sub").mkdir(parents=True)
    paths = [root / "coins.png", root / "sub" / "cam.jpg"]
    Image.fromarray(skdata.coins()[:96, :128]).save(paths[0])
    Image.fromarray(skdata.camera()[100:228, 150:278]).save(paths[1], quality=92)
    (root / "notes.txt").write_text("not an image")
    return paths


def test_batch_folder_writes_the_auto_label_maps_and_opens_one(widget, viewer, daemon, qtbot,
                                                              tmp_path: Path) -> None:
    src, dst = tmp_path / "in", tmp_path / "out"
    paths = image_folder(src)
    widget.pps_spin.setValue(4)
    widget.iou_spin.setValue(0)
    widget.stab_spin.setValue(0)
    widget.batch(str(src), str(dst))
    assert not widget.job_bar.isHidden() and not widget.cancel_button.isHidden()  # while it runs
    wait_idle(qtbot, widget, 300)
    text = widget.message.text()
    assert text.startswith("Batch done: 2 segmented, 0 skipped (done before), 0 failed"), text
    with Client(daemon.socket_path) as c:
        for path, rel in zip(paths, ("coins", "sub/cam")):
            want, _ = c.auto(str(path), points_per_side=4, pred_iou_thresh=0.0,
                             stability_score_thresh=0.0)
            got = np.asarray(Image.open(dst / "labels" / f"{rel}.png"))
            assert want.max() > 0 and np.array_equal(got, want), rel
    assert widget.open_result_button.isEnabled() and widget.job_bar.isHidden()
    widget.open_result(str(dst / "labels" / "sub" / "cam.png"))
    assert np.array_equal(viewer.layers["cam"].data, np.asarray(Image.open(paths[1])))
    assert np.array_equal(viewer.layers["cam labels"].data, np.asarray(Image.open(dst / "labels/sub/cam.png")))
    widget.batch(str(src), str(dst))  # a rerun: both already done
    wait_idle(qtbot, widget, 300)
    assert widget.message.text().startswith("Batch done: 0 segmented, 2 skipped"), widget.message.text()
