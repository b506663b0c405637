"""Propagation for the plugin, without Qt widgets: one video session per image layer (opened
lazily, on a connection of its own, closed when the layer goes or the widget closes), the
current slice's prompts sent as objects of it, and each propagated slice written into the 3-D
label layers as it arrives, with undo. The pure parts are in :mod:`.propagate`.

Which label a prompt fills: the points of the slice are one object written into
``Points_mask``, each rectangle one object written into ``Box_mask``; in a refine mode the
label is the Target label, in ``add`` mode the id the prompt's result already has on the slice
(else a new id). Each (layer, label) prompted becomes an object of the session and stays one:
prompting it again on another slice adds that slice's prompts to the same object.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from ..client import Client
from ..client.interactive import array_key, error_text
from . import logic
from . import propagate as prop
from .controller import BOX, MASKS, POINTS, Edit

#: The kind of an undo entry written by a propagation.
PROPAGATION = "propagation"


def stream_inline(job: Callable[[], Iterator[Any]], item: Callable[[Any], None],
                  done: Callable[[Any], None]) -> None:
    """Run a generator ``job`` here: ``item(x)`` per yielded x, then ``done(return value)``
    (or ``done(exception)``). The widget passes a napari generator thread worker instead."""
    gen = job()
    try:
        while True:
            item(next(gen))
    except StopIteration as stop:
        done(stop.value)
    except Exception as exc:  # reported like a worker's errored signal
        done(exc)


@dataclass
class Track:
    """The video session of one image layer: ``key`` (the frames' content), the session's
    objects, and the prompt last sent per (frame, object id), not sent again unchanged."""

    session: Any
    key: str
    objects: prop.ObjectTable = field(default_factory=prop.ObjectTable)
    sent: dict[tuple[int, int], tuple] = field(default_factory=dict)


@dataclass
class Group:
    """One object of a Propagate click: its label layer, label, and prompt on the slice."""

    layer: Any
    label: int
    points: tuple
    box: tuple | None


class Propagator:
    """Propagate the prompts of the displayed slice through the stack (see the module text).

    Args:
        ctl: the :class:`~.controller.Controller` (viewer, image, client, mode, target,
            label layers, undo stack, status line).
    """

    def __init__(self, ctl: Any) -> None:
        self.ctl = ctl
        self.stream: Callable[..., None] = stream_inline
        self.progress: Callable[[int, int], None] = lambda done, total: None
        self.tracks: dict[int, tuple[Any, Track]] = {}  # id(image layer) -> (layer, track)
        self.cancel_event = threading.Event()
        self.running = False

    # -- sessions -------------------------------------------------------------------------
    def _track(self, image: Any, frames: np.ndarray, client: Client) -> Track:
        """The image's session (worker thread): opened on first use, opened again when the
        layer's data changed."""
        key = array_key(frames)
        held = self.tracks.get(id(image))
        if held is not None and held[1].key == key:
            return held[1]
        if held is not None:
            self._close(held[1])
        session = client.open_video(frames)  # on a connection of its own
        track = Track(session, key)
        self.tracks[id(image)] = (image, track)
        return track

    @staticmethod
    def _close(track: Track) -> None:
        try:
            track.session.close()
        except Exception:  # the daemon may be gone already; nothing to keep
            pass

    def drop(self, image: Any) -> None:
        """Close the session of ``image`` (a layer removed from the viewer)."""
        held = self.tracks.pop(id(image), None)
        if held is not None:
            self._close(held[1])

    def close_all(self) -> None:
        """Close every session (the widget closes)."""
        self.cancel_event.set()
        for _, track in self.tracks.values():
            self._close(track)
        self.tracks.clear()

    def reset(self) -> str:
        """Forget the current image's session (its objects and prompts); say so."""
        if self.ctl.image is None or id(self.ctl.image) not in self.tracks:
            return "No propagation to reset."
        self.drop(self.ctl.image)
        return "Propagation reset: the next Propagate starts a new session."

    def cancel(self) -> None:
        """Stop the running propagation after the slice in flight."""
        self.cancel_event.set()

    # -- propagate ------------------------------------------------------------------------
    def groups(self, frame: int, width: int, height: int) -> list[Group]:
        """The objects of the prompts on slice ``frame``: the points (one) and each rectangle.

        Raises:
            ValueError: several rectangles for one label in a refine mode.
        """
        ctl, im, out = self.ctl, self.ctl.image, []
        layers = ctl.viewer.layers
        pts = layers[POINTS] if POINTS in layers else None
        rects = []
        if BOX in layers:
            rects = [s for s, t in zip(layers[BOX].data, layers[BOX].shape_type) if t == "rectangle"]
        fg = [lab == "foreground" for lab in pts.features["label"]] if pts is not None else []
        sp = prop.slice_prompts(frame, np.asarray(pts.data if pts is not None else [], float),
                                fg, rects, im.scale, im.translate, width, height)
        for kind, prompts in ((POINTS, [sp.points] if sp.points else []),
                              (BOX, list(sp.boxes))):
            if not prompts:
                continue
            layer = ctl.label_layer(MASKS[kind])
            live = ctl._live.get(kind)
            live_ids = live.ids if live is not None and live.layer is layer and live.index == (frame,) else []
            labels = prop.choose_labels(ctl.mode, ctl.target, len(prompts), live_ids,
                                        logic.next_label_id(np.asarray(layer.data)))
            for label, p in zip(labels, prompts):
                out.append(Group(layer, label, p if kind == POINTS else (),
                                 p if kind == BOX else None))
        return out

    def _prepare(self, start: int | None, end: int | None) -> tuple | None:
        """(frames, first, last, prompted slice, groups), or None having said why not."""
        ctl = self.ctl
        if ctl.client is None or ctl.image is None:
            ctl.status("Connect to the daemon and choose an image first.")
            return None
        if self.running:
            ctl.status("A propagation is running; cancel it or wait.")
            return None
        try:
            frames = prop.volume_frames(np.asarray(ctl.image.data), ctl.image.rgb)
            lo, hi = prop.frame_range(len(frames), start, end)
            frame = ctl.plane().index[0]
            groups = self.groups(frame, frames.shape[2], frames.shape[1])
        except ValueError as exc:
            ctl.status(f"Not propagated: {exc}")
            return None
        if not groups:
            ctl.status(f"Not propagated: put points or a rectangle on slice {frame} first.")
            return None
        return frames, lo, hi, frame, groups

    def propagate(self, start: int | None = None, end: int | None = None,
                  direction: str = "both") -> None:
        """Fill each prompted label through slices ``start .. end`` (None: the first / last),
        streaming one slice at a time into the label layers; one undo entry per layer."""
        ctl = self.ctl
        ready = self._prepare(start, end)
        if ready is None:
            return
        frames, lo, hi, frame, groups = ready
        edits = {id(g.layer): volume_edit(g.layer) for g in groups}
        for g in groups:
            edits[id(g.layer)].ids.append(g.label)
        mode, image, client = ctl.mode, ctl.image, ctl.client
        self.cancel_event.clear()
        self.running = True
        written: set[int] = set()
        total = hi - lo + 1

        def job() -> Iterator[Any]:
            track = self._track(image, frames, client)
            wanted = {}
            for g in groups:
                obj = track.objects.object_id(g.layer.name, g.label)
                prompt = (g.points, g.box)
                if track.sent.get((frame, obj)) != prompt:
                    track.session.add_prompt(frame, obj, points=g.points, box=g.box)
                    track.sent[(frame, obj)] = prompt
                wanted[obj] = g
            it = track.session.propagate(direction, lo, hi)
            try:
                for f, masks in it:
                    yield f, {obj: masks[obj] for obj in wanted if obj in masks}, wanted
                    if self.cancel_event.is_set():
                        break
            finally:
                it.close()
            return self.cancel_event.is_set()

        def item(got: tuple) -> None:
            f, masks, wanted = got
            self._write_slice(f, masks, wanted, mode)
            written.add(f)
            self.progress(len(written), total)

        def done(result: Any) -> None:
            self.running = False
            self._finish(result, list(edits.values()), written, groups, lo, hi)

        self.progress(0, total)
        self.stream(job, item, done)

    def _write_slice(self, f: int, masks: dict[int, np.ndarray], wanted: dict[int, Group],
                     mode: str) -> None:
        by_layer: dict[int, tuple[Any, dict[int, np.ndarray]]] = {}
        for obj, mask in masks.items():
            g = wanted[obj]
            by_layer.setdefault(id(g.layer), (g.layer, {}))[1][g.label] = mask
        self.ctl._writing = True
        try:
            for layer, label_masks in by_layer.values():
                plane = np.asarray(layer.data[f])
                layer.data[f] = prop.write_frame(plane, label_masks, mode).astype(layer.data.dtype)
                layer.refresh()
        finally:
            self.ctl._writing = False

    def _finish(self, result: Any, edits: list, written: set[int], groups: list[Group],
                lo: int, hi: int) -> None:
        ctl = self.ctl
        if written:
            ctl.undo_stack.extend(edits)
            for e in edits:
                ctl.draw_names(e.layer)
        labels = ", ".join(f"{g.label} ({g.layer.name})" for g in groups)
        if isinstance(result, Exception):
            ctl.status(f"Propagation failed after {len(written)} slices: {error_text(result)}")
        elif result:
            ctl.status(f"Propagation cancelled: label {labels} written in {len(written)} of "
                       f"slices {lo}..{hi}.")
        else:
            ctl.status(f"Propagated label {labels} through slices {lo}..{hi} "
                       f"({len(written)} slices).")


def volume_edit(layer: Any) -> Any:
    """An undo entry restoring the whole label volume of ``layer``."""
    return Edit(layer, (), np.asarray(layer.data).copy(), PROPAGATION)
