"""A video session's frames: kept as bytes, turned into model input only when read.

SAM2's ``init_state`` loads every frame up front as a 3x1024x1024 float32 tensor (12 MiB a
frame). :class:`FrameStore` keeps each frame as it came (a PNG or JPEG file's bytes, or for a
video file the RGB pixels PyAV decoded, never re-encoded lossily) and makes the tensor in
``__getitem__``, the way ``sam2.utils.misc.load_video_frames`` (its JPEG-folder path, sam2
1.1.0) does: Pillow RGB, resized to ``image_size`` x ``image_size`` by Pillow's ``resize``,
divided by 255, then normalised with ImageNet's mean and std. SAM2's predictor reads
``state["images"][i]``, so a store is what it sees as ``images``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
from PIL import Image

from ...wire.codecs import image_size
from ...wire.errors import ImageDecodeError, ImageTooLarge, InvalidRequest, VideoTooLarge
from ..inference.imaging import decode_image

#: ``load_video_frames``' defaults (sam2/utils/misc.py).
IMG_MEAN = (0.485, 0.456, 0.406)
IMG_STD = (0.229, 0.224, 0.225)


def check_frame_limits(count: int, nbytes: int, max_frames: int, max_bytes: int) -> None:
    """Raise :class:`VideoTooLarge` when ``count`` frames or ``nbytes`` are over the limits."""
    if count > max_frames:
        raise VideoTooLarge(f"the video has more than {max_frames} frames (--video-max-frames)",
                            field="frames")
    if nbytes > max_bytes:
        raise VideoTooLarge(f"the video's frames take more than {max_bytes} bytes "
                            "(--video-max-mb)", field="frames")


@dataclass(frozen=True)
class Frame:
    """One frame: ``data`` is PNG/JPEG bytes (``pixels`` None) or ``pixels`` is HxWx3 uint8
    RGB (a video file's decoded frame); ``nbytes`` what it holds."""

    data: bytes | None
    pixels: np.ndarray | None

    @property
    def nbytes(self) -> int:
        return len(self.data) if self.data is not None else int(self.pixels.nbytes)

    def rgb(self, max_pixels: int) -> np.ndarray:
        """HxWx3 uint8 RGB (decoded now for a file)."""
        if self.pixels is not None:
            return self.pixels
        return decode_image(self.data, max_pixels, field="frames")


class FrameStore:
    """The frames of one session, all of one size, as SAM2's ``images`` sequence.

    Args:
        frames: the frames, in order.
        width, height: their size in pixels.
        image_size: the model's input side (1024 for SAM2.1).
        max_pixels: the pixel ceiling for decoding a frame.
    """

    def __init__(self, frames: list[Frame], width: int, height: int, image_size: int,
                 max_pixels: int) -> None:
        self.frames = frames
        self.width = width
        self.height = height
        self.image_size = image_size
        self.max_pixels = max_pixels
        self.nbytes = sum(f.nbytes for f in frames)

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> Any:
        """Frame ``index`` as SAM2's loader makes it: a 3 x image_size x image_size float32
        torch tensor on the CPU, normalised (SAM2 moves it to the model's device)."""
        import torch

        rgb = self.frames[index].rgb(self.max_pixels)
        resized = np.array(Image.fromarray(rgb).resize((self.image_size, self.image_size)))
        img = torch.from_numpy(resized / 255.0).permute(2, 0, 1).to(torch.float32)
        mean = torch.tensor(IMG_MEAN, dtype=torch.float32)[:, None, None]
        std = torch.tensor(IMG_STD, dtype=torch.float32)[:, None, None]
        img -= mean
        img /= std
        return img

    def rgb(self, index: int) -> np.ndarray:
        """Frame ``index`` as HxWx3 uint8 RGB."""
        return self.frames[index].rgb(self.max_pixels)


def image_frames(files: Iterable[bytes], max_frames: int, max_bytes: int
                 ) -> tuple[list[Frame], int, int]:
    """PNG/JPEG files as frames, checked from their headers only: all of one size, at most
    ``max_frames`` of them and ``max_bytes`` in all.

    Returns:
        (frames, width, height).

    Raises:
        ImageDecodeError: a file is not PNG or JPEG (``frames[i]`` named).
        InvalidRequest: sizes differ, no frames.
        VideoTooLarge: over a limit.
    """
    frames: list[Frame] = []
    size = None
    total = 0
    for i, data in enumerate(files):
        try:
            w, h = image_size(data)
        except ImageDecodeError as exc:
            raise ImageDecodeError(f"frames[{i}]: {exc.message}", field=f"frames[{i}]") from None
        if size is None:
            size = (w, h)
        elif (w, h) != size:
            raise InvalidRequest(f"frames[{i}] is {w}x{h}, but frames[0] is {size[0]}x{size[1]}: "
                                 "all frames of a video must have one size", field=f"frames[{i}]")
        total += len(data)
        check_frame_limits(i + 1, total, max_frames, max_bytes)
        frames.append(Frame(data, None))
    if size is None:
        raise InvalidRequest("frames is empty: send at least one frame", field="frames")
    return frames, size[0], size[1]


def video_file_frames(data: bytes, max_frames: int, max_bytes: int, max_pixels: int
                      ) -> tuple[list[Frame], int, int]:
    """Decode a video file (mp4, mov, webm, anything PyAV's FFmpeg reads) once, each frame
    kept as its RGB pixels (``rgb24``), stopping as soon as a limit is passed.

    Raises:
        ImageDecodeError: PyAV cannot read it, or it has no video frames (``video``).
        VideoTooLarge: more than ``max_frames`` frames, or ``max_bytes`` of pixels.
        ImageTooLarge: a frame has more than ``max_pixels`` pixels.
    """
    import av

    frames: list[Frame] = []
    total = 0
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise ImageDecodeError("video has no video stream", field="video")
            stream = container.streams.video[0]
            if stream.width * stream.height > max_pixels:
                raise ImageTooLarge(f"video frames are {stream.width}x{stream.height}, more than "
                                    f"--max-image-pixels ({max_pixels})", field="video")
            for frame in container.decode(stream):
                pixels = frame.to_ndarray(format="rgb24")
                total += pixels.nbytes
                check_frame_limits(len(frames) + 1, total, max_frames, max_bytes)
                frames.append(Frame(None, pixels))
    except av.FFmpegError as exc:
        raise ImageDecodeError(f"video is not a video file PyAV can read: {exc}",
                               field="video") from None
    if not frames:
        raise ImageDecodeError("video holds no frames", field="video")
    h, w = frames[0].pixels.shape[:2]
    return frames, w, h
