"""The batch manifest: ``DIR/manifest.jsonl``, what a run has done, one JSON object a line.

The first line is the header, ``{"kind": "header", "version": 1, "settings": {...}}``: every
auto setting (defaults filled in), the tiling, the model's name and checkpoint file name.
Each image finished appends one line, ``{"kind": "image", "name", "sha256" (of the file's
bytes), "status": "done", "width", "height", "objects": [COCO annotations]}`` or
``{..., "status": "failed", "code", "message"}``; the last line of a name counts. After each
write of ``annotations.json`` a line ``{"kind": "coco", "images": N}`` records how many image
lines it holds. Lines are appended and flushed one at a time, so a run killed at any moment
leaves every earlier line whole; a torn last line is ignored when the manifest is read. A run
whose settings differ from the header starts a new manifest (and redoes every image).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Mapping

import orjson

MANIFEST_NAME = "manifest.jsonl"
VERSION = 1


def file_sha256(path: Path) -> str:
    """SHA-256 of the file's bytes, 64 hex digits.

    Raises:
        OSError: the file cannot be read.
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class Manifest:
    """The manifest of an output folder, read at start and appended to by the run.

    Attributes:
        path: ``DIR/manifest.jsonl``.
        settings: the run's settings (the header's).
        records: name -> the last image line of that name.
        coco_images: image lines counted at the last ``annotations.json`` write (-1: none).
        changed: True when an existing manifest had other settings (it was replaced).
    """

    path: Path
    settings: dict[str, Any]
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    coco_images: int = -1
    changed: bool = False
    lines: int = 0
    _file: IO[bytes] | None = None

    @classmethod
    def open(cls, folder: Path, settings: Mapping[str, Any]) -> "Manifest":
        """Read ``folder``'s manifest for these ``settings`` (a new one if there is none or
        its settings differ; ``changed`` then says whether one was replaced).

        Raises:
            OSError: the folder cannot be written.
        """
        path = folder / MANIFEST_NAME
        settings = orjson.loads(orjson.dumps(dict(settings)))  # as the header reads back
        m = cls(path, settings)
        entries, whole = _read_lines(path)
        header = entries[0] if entries else None
        if header and header.get("kind") == "header" and header.get("settings") == settings:
            for e in entries[1:]:
                if e.get("kind") == "image":
                    m.records[e["name"]] = e
                    m.lines += 1
                elif e.get("kind") == "coco":
                    m.coco_images = int(e.get("images", -1))
            m._file = open(path, "r+b")
            if m._file.seek(0, 2) > whole:
                m._file.truncate(whole)  # drop a torn last line
            m._file.seek(whole)
            return m
        m.changed = header is not None
        m._file = open(path, "wb")
        m._append({"kind": "header", "version": VERSION, "settings": settings})
        return m

    def add(self, record: dict[str, Any]) -> None:
        """Append an image line (``name``, ``sha256``, ``status``...) and keep it."""
        record = {"kind": "image", **record}
        self._append(record)
        self.records[record["name"]] = record
        self.lines += 1

    def coco_written(self) -> None:
        """Record that ``annotations.json`` now holds every image line so far."""
        self.coco_images = self.lines
        self._append({"kind": "coco", "images": self.lines})

    @property
    def coco_current(self) -> bool:
        """True if the last ``annotations.json`` write came after every image line."""
        return self.coco_images == self.lines

    def done_images(self) -> list[dict[str, Any]]:
        """The records of status ``done``, sorted by name (the COCO file's image order)."""
        return [r for _, r in sorted(self.records.items()) if r["status"] == "done"]

    def close(self) -> None:
        """Close the file (appending stops)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def _append(self, entry: dict[str, Any]) -> None:
        assert self._file is not None
        self._file.write(orjson.dumps(entry) + b"\n")
        self._file.flush()


def _read_lines(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The manifest's whole lines (a torn or unreadable line ends the list) and the bytes
    they take."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return [], 0
    out, whole = [], 0
    for line in raw.split(b"\n")[:-1]:  # the part after the last newline is torn
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            break
        if not isinstance(entry, dict):
            break
        out.append(entry)
        whole += len(line) + 1
    return out, whole
