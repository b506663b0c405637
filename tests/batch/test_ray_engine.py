"""``sam2-service batch --engine ray`` on a local Ray with 2 CPUs: the daemon's label maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sam2_service.client import Client

from .conftest import CORRUPT, FLAGS, GOOD, SETTINGS, read_labels, run_cli

pytest.importorskip("ray", reason="the [batch] extra (make install adds it)")


def test_ray_engine_gives_the_daemons_label_maps(daemon, checkpoint: Path, photos: Path,
                                                  tmp_path: Path) -> None:
    from pycocotools.coco import COCO

    out = tmp_path / "out"
    proc = run_cli("batch", str(photos), "--output", str(out), "--engine", "ray",
                   "--ray-num-cpus", "2", "--workers", "1", "--checkpoint", str(checkpoint),
                   "--device", "cpu", "--quiet", *FLAGS, timeout=300)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert f"{CORRUPT}: image_unreadable" in proc.stderr
    with Client(daemon.socket_path, timeout=300) as client:
        for name, label_name in GOOD.items():
            expected = client.auto(str(photos / name), **SETTINGS).labels
            np.testing.assert_array_equal(read_labels(out / "labels" / label_name), expected)
    coco = COCO(str(out / "annotations.json"))
    assert sorted(img["file_name"] for img in coco.dataset["images"]) == sorted(GOOD)
