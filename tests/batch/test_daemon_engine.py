"""``sam2-service batch`` through the real daemon: label maps, COCO, failures, resume, Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson
import pytest

from sam2_service.batch import Progress, run
from sam2_service.client import Client

from .conftest import CORRUPT, FLAGS, GOOD, SETTINGS, make_photos, read_labels, run_cli, small


@pytest.fixture(scope="module")
def first_run(daemon, photos: Path, tmp_path_factory: pytest.TempPathFactory):
    """One batch over ``photos`` (with overlays): (output folder, the finished process)."""
    out = tmp_path_factory.mktemp("batch") / "out"
    proc = run_cli("batch", str(photos), "--output", str(out), "--socket", daemon.socket_path,
                   "--overlay", *FLAGS)
    return out, proc


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns
            for p in folder.rglob("*") if p.is_file()}


def test_label_maps_equal_client_auto(daemon, photos: Path, first_run) -> None:
    out, proc = first_run
    assert proc.returncode == 3, proc.stderr
    with Client(daemon.socket_path, timeout=300) as client:
        for name, label_name in GOOD.items():
            plain = client.auto(str(photos / name), **SETTINGS)
            assert all("maskRle" not in e for e in plain.table)  # the default reply unchanged
            expected = plain.labels
            got = read_labels(out / "labels" / label_name)
            assert got.dtype == np.uint16 and got.shape == expected.shape
            assert expected.max() > 0, "random weights gave no object: the test shows nothing"
            np.testing.assert_array_equal(got, expected)
            assert (out / "overlays" / label_name).is_file()
    assert not (out / "labels" / "notes.png").exists()
    assert sorted(p.relative_to(out / "labels").as_posix()
                  for p in (out / "labels").rglob("*.png")) == sorted(GOOD.values())


def test_coco_file_reads_with_pycocotools(first_run) -> None:
    from pycocotools.coco import COCO

    out, _ = first_run
    coco = COCO(str(out / "annotations.json"))
    assert sorted(img["file_name"] for img in coco.dataset["images"]) == sorted(GOOD)
    assert coco.dataset["categories"] == [{"id": 1, "name": "object"}]
    for img in coco.dataset["images"]:
        labels = read_labels(out / "labels" / GOOD[img["file_name"]])
        assert (img["height"], img["width"]) == labels.shape
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]]))
        assert sorted(a["label_id"] for a in anns) == list(range(1, int(labels.max()) + 1))
        for a in anns:
            mask = coco.annToMask(a).astype(bool)
            region = labels == a["label_id"]
            assert region.any() and not (region & ~mask).any(), "label outside its mask"
            assert isinstance(a["segmentation"]["counts"], str)
            assert a["segmentation"]["size"] == [img["height"], img["width"]]
            assert a["area"] == int(mask.sum())
            ys, xs = np.nonzero(mask)
            assert a["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1,
                                 ys.max() - ys.min() + 1]
            assert a["iscrowd"] == 0 and a["category_id"] == 1
            assert 0 <= a["score"] and 0 <= a["stability_score"] <= 1


def test_corrupt_file_is_named_and_exit_is_3(first_run) -> None:
    out, proc = first_run
    assert proc.returncode == 3
    assert f"{CORRUPT}: image_unreadable" in proc.stderr
    assert "failed=1" in proc.stdout and "done=3" in proc.stdout
    lines = [orjson.loads(line) for line in (out / "manifest.jsonl").read_bytes().splitlines()]
    failed = [e for e in lines if e.get("status") == "failed"]
    assert [(e["name"], e["code"]) for e in failed] == [(CORRUPT, "image_unreadable")]


def test_rerun_rewrites_nothing_and_force_redoes(daemon, photos: Path, first_run) -> None:
    out, _ = first_run
    before = _mtimes(out)
    again = run_cli("batch", str(photos), "--output", str(out), "--socket", daemon.socket_path,
                    "--overlay", *FLAGS)
    assert again.returncode == 3, again.stderr  # the corrupt file still fails
    assert "done=0 skipped=3 failed=1" in again.stdout
    assert _mtimes(out) == before
    forced = run_cli("batch", str(photos), "--output", str(out), "--socket", daemon.socket_path,
                     "--force", "--quiet", *FLAGS)
    assert forced.returncode == 3
    after = _mtimes(out)
    for label_name in GOOD.values():
        key = f"labels/{label_name}"
        assert after[key] > before[key]
    assert after["annotations.json"] > before["annotations.json"]


def test_changed_setting_redoes_all_and_says_so(daemon, photos: Path, tmp_path: Path) -> None:
    seen: list[Progress] = []
    one = photos / "camera.png"
    first = run([one], tmp_path, SETTINGS, socket_path=daemon.socket_path, progress=seen.append)
    assert (first.done, first.skipped, first.failed) == (1, 0, [])
    assert seen[-1] == Progress(1, 1, "camera.png", 0, 0)
    proc = run_cli("batch", str(one), "--output", str(tmp_path), "--socket", daemon.socket_path,
                   *FLAGS[:-1], "0.5")
    assert proc.returncode == 0, proc.stderr
    assert "redoing every image" in proc.stderr and "done=1 skipped=0" in proc.stdout


def test_sigint_after_one_image_then_rerun_finishes(daemon, tmp_path: Path) -> None:
    import skimage.data as data

    folder = make_photos(tmp_path / "in", {
        f"p{i}.png": small(np.roll(data.chelsea(), 37 * i, axis=1), 2) for i in range(3)})
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "sam2_service", "batch", str(folder), "--output", str(out),
           "--socket", daemon.socket_path, "--quiet", *FLAGS]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    manifest = out / "manifest.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if manifest.exists() and b'"kind":"image"' in manifest.read_bytes():
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr
    done = [e for e in map(orjson.loads, manifest.read_bytes().splitlines())
            if e.get("kind") == "image"]
    assert 1 <= len(done) < 3
    for e in done:  # what was written is whole
        assert read_labels(out / "labels" / e["name"]).shape == (150, 226)
    again = run_cli("batch", str(folder), "--output", str(out), "--socket", daemon.socket_path,
                    *FLAGS)
    assert again.returncode == 0, again.stderr
    assert f"done={3 - len(done)} skipped={len(done)} failed=0" in again.stdout
    assert len(list((out / "labels").glob("*.png"))) == 3
