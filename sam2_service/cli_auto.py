"""``sam2-service auto``: every object of an image as a 16-bit PNG label map (and an overlay).

Flags: ``--image``, ``--output`` (16-bit grayscale PNG, the uint16 ids), ``--overlay`` (the
image with each label in its own colour), ``--tile H,W`` and ``--halo H,W``, and one flag per
SAM2AutomaticMaskGenerator setting (``--points-per-side`` ... ; unset: the daemon's default,
the generator's).

Unless ``--timeout`` (or ``SAM2_SERVICE_TIMEOUT``) is given, it waits as long as the daemon
lets the request run (``info``'s ``limits.autoTimeout``, ``--auto-timeout``) and a margin.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable

from .wire.auto import AUTO_FIELDS

#: Seconds ``auto`` waits beyond the daemon's ``autoTimeout``: for its error reply (or the
#: label map) to be built and sent once the daemon's deadline is reached.
AUTO_WAIT_MARGIN_S = 30.0
#: What ``auto`` prints when a daemon with random weights found no object.
DUMMY_HINT = ("sam2-service: note: no objects: the daemon runs with random weights "
              "(--dummy-weights), whose masks rarely pass the default filters; to see them "
              "anyway: --pred-iou-thresh 0 --stability-score-thresh 0")


def _pair(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected H,W integers, got {text!r}") from None
    if len(values) != 2:
        raise argparse.ArgumentTypeError(f"expected two integers H,W, got {text!r}")
    return values


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_auto_parser(sub: Any, client_flags: Any) -> None:
    """Add the ``auto`` subcommand; ``client_flags(parser)`` adds --socket and --timeout."""
    p = sub.add_parser("auto", help="segment every object into a 16-bit PNG label map")
    client_flags(p)
    p.add_argument("--image", required=True, type=Path, help="image file (PNG/JPEG sent as is)")
    p.add_argument("--output", required=True, type=Path,
                   help="write the label map here: 16-bit PNG, 0 background, 1..N objects")
    p.add_argument("--overlay", type=Path, help="write the image with each label coloured (PNG)")
    add_auto_settings(p)


def add_auto_settings(p: argparse.ArgumentParser) -> None:
    """Add ``--tile``, ``--halo`` and one flag per SAM2AutomaticMaskGenerator setting (dest:
    its keyword; default None, the daemon's default): ``auto``'s and ``batch``'s flags."""
    p.add_argument("--tile", type=_pair, help="tile shape H,W in pixels (tiling on)")
    p.add_argument("--halo", type=_pair, help="tile overlap H,W in pixels (default 0,0)")
    for wire, (name, kind, low, high) in AUTO_FIELDS.items():
        p.add_argument("--" + name.replace("_", "-"), dest=name, default=None,
                       type={"int": int, "float": float, "bool": _bool}[kind],
                       help=f"`{wire}`: SAM2AutomaticMaskGenerator's {name} "
                            f"(range {low:g}..{high:g}; default the generator's)")


def write_label_png(path: Path, labels: Any) -> None:
    """Write an HxW uint16 label map as a 16-bit grayscale PNG (Pillow mode ``I;16``)."""
    import numpy as np
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint16)).save(path, format="PNG")


def auto_wait(info: dict[str, Any], default: float) -> float:
    """Seconds to wait for an auto reply from the daemon whose ``info`` this is: its
    ``limits.autoTimeout`` and :data:`AUTO_WAIT_MARGIN_S`, or ``default`` without one."""
    limits = info.get("limits")
    allowed = limits.get("autoTimeout") if isinstance(limits, dict) else None
    if isinstance(allowed, (int, float)) and not isinstance(allowed, bool) and allowed > 0:
        return float(allowed) + AUTO_WAIT_MARGIN_S
    return default


def _wants_hint(ns: argparse.Namespace, info: dict[str, Any], labels: int) -> bool:
    """No object from a daemon with random weights (``info``'s ``warning``), with filters
    that are not both off already."""
    return (labels == 0 and bool(info.get("warning"))
            and not (ns.pred_iou_thresh == 0 and ns.stability_score_thresh == 0))


def auto_main(ns: argparse.Namespace, failure: Callable[[BaseException], str] = str) -> int:
    """Run ``sam2-service auto``; returns the exit code (1 with the line ``failure(exc)`` on
    stderr on failure)."""
    import numpy as np
    from PIL import Image

    from .client import Client, ClientError
    from .client.auto import label_overlay
    from .client.images import read_rgb

    settings = {name: getattr(ns, name) for _, (name, *_) in AUTO_FIELDS.items()}
    try:
        with Client(ns.socket, timeout=ns.timeout) as client:
            info = client.info()
            if not getattr(ns, "timeout_given", True):
                client.timeout = auto_wait(info, ns.timeout)
            t0 = time.perf_counter()
            result = client.auto(ns.image, tile_shape=ns.tile, halo=ns.halo, **settings)
            seconds = time.perf_counter() - t0
        write_label_png(ns.output, result.labels)
        print(f"labels={len(result.table)} size={result.labels.shape[1]}x"
              f"{result.labels.shape[0]} seconds={seconds:.1f}\nwrote {ns.output}")
        if _wants_hint(ns, info, len(result.table)):
            print(DUMMY_HINT, file=sys.stderr)
        if ns.overlay is not None:
            image = np.asarray(read_rgb(ns.image))
            Image.fromarray(label_overlay(image, result.labels)).save(ns.overlay, format="PNG")
            print(f"wrote {ns.overlay}")
    except (ClientError, OSError, ValueError) as exc:
        print(failure(exc), file=sys.stderr)
        return 1
    return 0
