"""``sam2-service track``: prompt objects on one frame of a video, propagate, write masks.

    sam2-service track VIDEO --frame N --point x,y[,label] ... [--box x1,y1,x2,y2]
        [--frames START:END] [--direction both] --output DIR [--overlay-video out.mp4]

VIDEO is a video file or a folder of JPEG/PNG frames (sorted by name). The prompts before any
``--object`` are object 1; each ``--object`` starts the next object (2, 3, ...), and the
``--frame``, ``--point`` and ``--box`` after it are that object's (its frame defaults to the
first ``--frame``). ``--frames START:END`` is a half-open range like a Python slice (either
side may be left out); ``--frame`` counts in the whole video. With one object and no
``--object``, ``DIR/000000.png`` ... are 0/255 masks; with ``--object`` they are 16-bit
label maps (0 background, the object's number; a later object over an earlier one). One PNG
per frame of the range, the video's size, named by the frame's index in the video.

A video file with ``--frames`` is decoded here with PyAV (when installed) and only the range
is sent, as PNG frames; without either, the file's bytes are sent and the daemon decodes it.
``--overlay-video`` (PyAV needed) writes the frames with the masks tinted, H.264 at the
source's frame rate (25 for a folder). Progress: a tqdm bar when tqdm is installed, else a
line per ten frames on stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

VIDEO_SUFFIXES = (".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v")


class _ObjectAction(argparse.Action):
    """``--object``, ``--point``, ``--box`` and ``--frame``: into the current object group."""

    def __call__(self, parser: Any, ns: argparse.Namespace, value: Any, option: Any = None) -> None:
        groups = getattr(ns, "groups", None)
        if groups is None:
            groups = ns.groups = [{"frame": None, "points": [], "box": None}]
        if self.dest == "object":
            ns.labelled = True
            if groups[-1]["points"] or groups[-1]["box"] is not None or len(groups) > 1 \
                    or groups[-1]["frame"] is not None:
                groups.append({"frame": None, "points": [], "box": None})
        elif self.dest == "point":
            groups[-1]["points"].append(value)
        else:
            groups[-1][self.dest] = value


def _numbers(text: str, counts: tuple[int, ...], what: str) -> list[float]:
    import math

    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what}: numbers separated by commas, got {text!r}") from None
    if len(values) not in counts or not all(map(math.isfinite, values)):
        raise argparse.ArgumentTypeError(f"{what}: {' or '.join(map(str, counts))} finite "
                                         f"numbers, got {text!r}")
    return values


def _range(text: str) -> tuple[int | None, int | None]:
    start, sep, end = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return (int(start) if start else None, int(end) if end else None)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--frames START:END (integers, either may be left "
                                         f"out), got {text!r}") from None


def add_track_parser(sub: Any, client_flags: Any) -> None:
    """Add the ``track`` subcommand; ``client_flags(parser)`` adds --socket and --timeout."""
    p = sub.add_parser("track", help="track prompted objects through a video or volume")
    client_flags(p)
    p.add_argument("video", type=Path, help="video file, or folder of JPEG/PNG frames")
    p.add_argument("--frame", type=int, action=_ObjectAction, default=argparse.SUPPRESS,
                   help="the frame (index in the video) the object's prompts are on")
    p.add_argument("--point", action=_ObjectAction, default=argparse.SUPPRESS,
                   type=lambda t: _numbers(t, (2, 3), "--point x,y[,label]"),
                   help="point prompt x,y[,label] in pixels (label 1 foreground, 0 background)")
    p.add_argument("--box", action=_ObjectAction, default=argparse.SUPPRESS,
                   type=lambda t: _numbers(t, (4,), "--box x1,y1,x2,y2"),
                   help="box prompt x1,y1,x2,y2 in pixels")
    p.add_argument("--object", nargs=0, action=_ObjectAction, default=argparse.SUPPRESS,
                   help="start the next object's prompts (outputs become 16-bit label maps)")
    p.add_argument("--frames", type=_range, default=(None, None),
                   help="START:END, the half-open range of frames to track and write")
    p.add_argument("--direction", choices=("forward", "backward", "both"), default="both")
    p.add_argument("--output", type=Path, required=True, help="folder for the per-frame PNGs")
    p.add_argument("--overlay-video", type=Path, help="write the tinted frames as a video")
    p.set_defaults(groups=None, labelled=False)


def _decode(path: Path, start: int, end: int | None) -> tuple[list[Any], float]:
    """RGB frames ``start`` .. ``end`` (exclusive) of a video file, and its frame rate."""
    import av

    frames = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate or 25)
        for i, frame in enumerate(container.decode(stream)):
            if end is not None and i >= end:
                break
            if i >= start:
                frames.append(frame.to_ndarray(format="rgb24"))
    return frames, rate


def _source(ns: argparse.Namespace) -> tuple[Any, int, Any, float]:
    """(what open_video takes, the index of its first frame in the video, the RGB frames
    when decoded here or None, frame rate)."""
    start, end = ns.frames
    video = ns.video
    is_file = video.is_file() and video.suffix.lower() in VIDEO_SUFFIXES
    if is_file and (ns.frames != (None, None) or ns.overlay_video is not None):
        try:
            frames, rate = _decode(video, start or 0, end)
        except ImportError:
            if ns.overlay_video is not None:
                raise ValueError("--overlay-video needs PyAV (pip install av)") from None
            return video, 0, None, 25.0
        if not frames:
            raise ValueError(f"{video}: no frames in --frames {start}:{end}")
        import numpy as np

        return np.stack(frames), start or 0, frames, rate
    if video.is_dir():
        files = sorted(p for p in video.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        files = files[slice(start, end)]
        if not files:
            raise ValueError(f"{video}: no JPEG/PNG frames in the range")
        return files, start or 0, None, 25.0
    return video, 0, None, 25.0


def _progress(total: int) -> Any:
    try:
        from tqdm import tqdm

        return tqdm(total=total, unit="frame", desc="track", file=sys.stderr)
    except ImportError:
        return None


def _track(session: Any, ns: argparse.Namespace, offset: int) -> Iterator[tuple[int, dict]]:
    groups = ns.groups or []
    default = next(g["frame"] for g in groups if g["frame"] is not None)
    for number, g in enumerate(groups, 1):
        frame = (g["frame"] if g["frame"] is not None else default) - offset
        if not 0 <= frame < session.frame_count:
            raise ValueError(f"--frame {frame + offset} is outside the frames tracked")
        points = [tuple(p) if len(p) == 3 else (p[0], p[1], 1) for p in g["points"]]
        session.add_prompt(frame, number, points=points, box=g["box"])
    yield from session.propagate(ns.direction)


def track_main(ns: argparse.Namespace, failure: Callable[[BaseException], str] = str) -> int:
    """Run ``sam2-service track``; returns the exit code (1 with ``failure(exc)`` on stderr)."""
    import numpy as np
    from PIL import Image

    from .cli_auto import write_label_png
    from .client import Client, ClientError

    groups = ns.groups or []
    if all(g["frame"] is None for g in groups) or not any(g["points"] or g["box"] for g in groups):
        # before any frame is decoded or sent
        print("sam2-service track: give --frame N and at least one --point or --box",
              file=sys.stderr)
        return 2
    try:
        source, offset, rgb, rate = _source(ns)
        ns.output.mkdir(parents=True, exist_ok=True)
        with Client(ns.socket, timeout=ns.timeout) as client, client.open_video(source) as session:
            masks: dict[int, dict[int, np.ndarray]] = {}
            bar = _progress(session.frame_count)
            for i, (frame, objects) in enumerate(_track(session, ns, offset)):
                masks[frame] = objects
                if bar is not None:
                    bar.update(1)
                elif (i + 1) % 10 == 0 or i + 1 == session.frame_count:
                    print(f"track: {i + 1}/{session.frame_count} frames", file=sys.stderr)
            if bar is not None:
                bar.close()
            h, w, count = session.height, session.width, session.frame_count
        labels = []
        for frame in range(count):
            label = np.zeros((h, w), np.uint16)
            for oid, mask in sorted(masks.get(frame, {}).items()):
                label[mask > 0] = oid
            labels.append(label)
            path = ns.output / f"{frame + offset:06d}.png"
            if ns.labelled:
                write_label_png(path, label)
            else:
                Image.fromarray(((label > 0) * 255).astype(np.uint8)).save(path, format="PNG")
        print(f"frames={count} objects={len(ns.groups or [])} size={w}x{h}\nwrote {ns.output}")
        if ns.overlay_video is not None:
            write_overlay_video(ns.overlay_video, rgb if rgb is not None else
                                [np.asarray(Image.open(p).convert("RGB")) for p in source],
                                labels, rate)
            print(f"wrote {ns.overlay_video}")
    except (ClientError, OSError, ValueError) as exc:
        print(failure(exc), file=sys.stderr)
        return 1
    return 0


def write_overlay_video(path: Path, frames: list[Any], labels: list[Any], rate: float) -> None:
    """Frames (HxWx3 uint8) with their label maps (HxW uint16) tinted, as H.264 (PyAV)."""
    from fractions import Fraction

    import av
    import numpy as np

    from .client.auto import label_overlay

    h, w = labels[0].shape
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("h264", rate=Fraction(rate).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = w + w % 2, h + h % 2, "yuv420p"
        for image, label in zip(frames, labels):
            tinted = np.pad(label_overlay(image, label), ((0, h % 2), (0, w % 2), (0, 0)),
                            mode="edge")
            for packet in stream.encode(av.VideoFrame.from_ndarray(tinted, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
