"""The images a batch run works on: INPUT arguments expanded into files and their names.

An INPUT is an image file, a folder (walked recursively; files taken by the extensions
Pillow registers, ``PIL.Image.registered_extensions()``, others ignored), a glob pattern
(``data/**/*.tif``; ``**`` crosses folders) or ``@list.txt`` (one INPUT a line, relative ones
to the list's folder; blank lines and lines starting with ``#`` skipped). Each image gets a
name relative to the INPUT it came from: a file given by itself its file name, a folder's
files their path below it, a glob's matches their path below the pattern's leading folder
without wildcards. Those names (POSIX separators) name the outputs.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Sequence

from PIL import Image

_MAGIC = set("*?[")


@dataclass(frozen=True)
class InputImage:
    """One image: ``path`` on disk and ``name``, its relative POSIX path (``a/b.png``)."""

    path: Path
    name: str

    @property
    def stem(self) -> str:
        """``name`` without its suffix (``a/b``): the outputs' name."""
        return str(PurePosixPath(self.name).with_suffix(""))


def image_extensions() -> frozenset[str]:
    """The lower-case file extensions (``.png``...) Pillow can open."""
    return frozenset(ext.lower() for ext in Image.registered_extensions())


def _walk(folder: Path, exts: frozenset[str]) -> list[InputImage]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for f in sorted(files):
            if os.path.splitext(f)[1].lower() in exts:
                path = Path(root) / f
                found.append(InputImage(path, path.relative_to(folder).as_posix()))
    return found


def _glob(pattern: str, exts: frozenset[str]) -> list[InputImage]:
    parts = Path(pattern).parts
    lead = next((i for i, p in enumerate(parts) if _MAGIC & set(p)), len(parts))
    base = Path(*parts[:lead]) if lead else Path(".")
    found = []
    for match in sorted(glob.glob(pattern, recursive=True)):
        path = Path(match)
        if path.is_file() and path.suffix.lower() in exts:
            found.append(InputImage(path, path.relative_to(base).as_posix()))
    return found


def _list_file(arg: str) -> list[str]:
    path = Path(arg[1:])
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the list {path}: {exc}") from None
    out = []
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(line if Path(line).is_absolute() else str(path.parent / line))
    return out


def _expand(arg: str, exts: frozenset[str], depth: int = 0) -> list[InputImage]:
    if arg.startswith("@") and depth == 0:
        return [img for line in _list_file(arg) for img in _expand(line, exts, depth + 1)]
    path = Path(arg)
    if path.is_dir():
        return _walk(path, exts)
    if path.is_file():
        return [InputImage(path, path.name)]
    if _MAGIC & set(arg):
        found = _glob(arg, exts)
        if not found:
            raise ValueError(f"{arg}: the pattern matches no image file")
        return found
    raise ValueError(f"{arg}: no such file or folder")


def collect_inputs(inputs: Sequence[str | os.PathLike]) -> list[InputImage]:
    """The images of ``inputs``, in the order given (each folder and glob sorted by path),
    each file once.

    Raises:
        ValueError: an INPUT that does not exist, a pattern matching no image, an unreadable
            list, or two images whose outputs would have the same name (``a.png`` and
            ``a.jpg``, or the same name from two INPUTs), naming both.
    """
    exts = image_extensions()
    seen: dict[Path, InputImage] = {}
    by_stem: dict[str, InputImage] = {}
    for arg in inputs:
        for img in _expand(os.fspath(arg), exts):
            real = img.path.resolve()
            if real in seen:
                continue
            other = by_stem.get(img.stem)
            if other is not None:
                raise ValueError(f"{other.path} and {img.path} would both be written as "
                                 f"{img.stem}.png; rename one of them")
            seen[real] = by_stem[img.stem] = img
    return list(seen.values())
