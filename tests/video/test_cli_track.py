"""``sam2-service track`` on a range of a real mp4: one label PNG per frame, an overlay video."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from sam2_service.cli import main
from tests.video.conftest import bikes_path


def test_track_two_objects_on_an_mp4_range(video_daemon, tmp_path: Path, capsys) -> None:
    import av

    out, overlay = tmp_path / "masks", tmp_path / "overlay.mp4"
    code = main(["track", str(bikes_path()), "--socket", video_daemon.socket_path,
                 "--frames", "10:13", "--frame", "11", "--point", "300,150",
                 "--object", "--box", "100,80,260,250", "--output", str(out),
                 "--overlay-video", str(overlay)])
    assert code == 0, capsys.readouterr().err
    files = sorted(p.name for p in out.iterdir())
    assert files == ["000010.png", "000011.png", "000012.png"]
    for name in files:
        with Image.open(out / name) as im:
            labels = np.asarray(im)
            assert im.size == (640, 272) and im.mode.startswith("I")
        assert set(np.unique(labels)) <= {0, 1, 2} and labels.any()
    with av.open(str(overlay)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 3 and decoded[0].shape == (272, 640, 3)
    assert "frames=3 objects=2" in capsys.readouterr().out


def test_track_refuses_missing_prompts(video_daemon, tmp_path: Path, capsys) -> None:
    code = main(["track", str(bikes_path()), "--socket", video_daemon.socket_path,
                 "--frames", "0:2", "--output", str(tmp_path / "m")])
    assert code == 2 and "--frame N" in capsys.readouterr().err
