"""The plugin's "Batch folder..." without Qt: :func:`sam2_service.batch.run` as a generator
that yields its progress (for a napari generator thread worker), the summary as text, and
where a batch's results and their images lie.

A batch writes ``DIR/labels/<relative path without suffix>.png`` (16-bit label maps) and
``DIR/annotations.json`` (COCO, each image's ``file_name`` the path relative to the input
folder); :func:`results` and :func:`image_for` read that layout back.
"""

from __future__ import annotations

import json
import queue
import threading
from pathlib import Path
from typing import Any, Callable, Generator

#: The marker put on the queue when the run has ended.
_END = object()


def with_progress(run: Callable[..., Any], *args: Any, **kwargs: Any) -> Generator[Any, None, Any]:
    """Call ``run(*args, progress=..., **kwargs)`` on a thread of its own and yield each
    object it hands its ``progress`` callback, as it comes; return ``run``'s result (the
    generator's return value: a napari worker's ``returned``). Raises what ``run`` raised.

    Closing the generator early does not stop ``run``: set the ``cancel`` event it was
    given for that (the generator then yields the rest and returns the result)."""
    items: queue.Queue = queue.Queue()
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = run(*args, progress=items.put, **kwargs)
        except BaseException as exc:  # handed to the caller's thread below
            outcome["error"] = exc
        finally:
            items.put(_END)

    thread = threading.Thread(target=target, name="sam2-batch", daemon=True)
    thread.start()
    while (item := items.get()) is not _END:
        yield item
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def summary_text(summary: Any) -> str:
    """One paragraph for a person about a :class:`sam2_service.batch.Summary`: counts, time,
    each failure (path, code, message), where the results are."""
    head = "Batch cancelled" if summary.cancelled else "Batch done"
    text = (f"{head}: {summary.done} segmented, {summary.skipped} skipped (done before), "
            f"{len(summary.failed)} failed, {summary.objects} objects, {summary.seconds:.1f} s. "
            f"Results in {summary.output}.")
    for f in summary.failed[:5]:
        text += f"\nFailed: {f.path} ({f.code}): {f.message}"
    if len(summary.failed) > 5:
        text += f"\n... and {len(summary.failed) - 5} more failures"
    return text


def progress_text(p: Any) -> str:
    """A progress line: images finished of the total and the one just finished."""
    finished = p.done + p.skipped + p.failed
    return f"Batch: {finished}/{p.total} images" + (f", last {p.current}" if p.current else "")


def results(output: str | Path) -> list[Path]:
    """The label maps of a batch output folder (``DIR/labels/**.png``), sorted."""
    return sorted((Path(output) / "labels").rglob("*.png"))


def image_for(label_path: str | Path, output: str | Path, input_dir: str | Path) -> Path | None:
    """The input image a label map was made from: the ``annotations.json`` image whose
    ``file_name`` without suffix is the label map's path under ``DIR/labels`` without suffix,
    under ``input_dir``; else any file ``input_dir/<that path>.*``; None when there is none."""
    output, input_dir = Path(output), Path(input_dir)
    rel = Path(label_path).resolve().relative_to((output / "labels").resolve()).with_suffix("")
    coco = output / "annotations.json"
    if coco.is_file():
        for img in json.loads(coco.read_text()).get("images", []):
            if Path(img["file_name"]).with_suffix("") == rel and (input_dir / img["file_name"]).is_file():
                return input_dir / img["file_name"]
    found = sorted(p for p in (input_dir / rel).parent.glob(rel.name + ".*") if p.is_file())
    return found[0] if found else None


def read_label_map(path: str | Path) -> Any:
    """A batch label map (16-bit PNG) as an HxW uint16 numpy array."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im).astype(np.uint16)
