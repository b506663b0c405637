"""The plugin's napari-side state, without Qt widgets: prompt and label layers of one image
layer, the daemon requests (run off the GUI thread), and writing results into label layers with
undo. The dock widget (:mod:`.widget`) only wires buttons to these methods.

Coordinates: prompt layers are created in world coordinates (scale 1, translate 0) with the
image layer's number of dimensions; a prompt's world position (..., row, col) is mapped to the
image's data pixels with the image layer's scale and translate (:func:`.logic.world_to_xy`) and
sent to the daemon as (x, y). Label layers share the image layer's scale and translate, so the
label pixel (row, col) lies under image pixel (row, col).

Requests: latest wins per prompt layer (:class:`~sam2_service.client.interactive.Tickets`:
a points result never drops a boxes result, nor the reverse), and each plane is
embedded once per content (:func:`~sam2_service.client.interactive.array_key` of the uint8
plane sent): an edited layer has new content, so it is embedded again; an evicted embedding is
embedded again by its :class:`~sam2_service.client.interactive.ImageHandle`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..client import DEFAULT_TIMEOUT, Client, ClientError
from ..client.interactive import ImageHandles, Tickets, error_text, point_inside
from . import logic
from .names import draw_names

POINTS, BOX, AUTO = "Prompt Points", "Bounding Box", "AutoSeg_mask"
MASKS = {POINTS: "Points_mask", BOX: "Box_mask"}
#: Prompt Points' face colour by its ``label`` feature: foreground green, background red.
POINT_COLOURS = {"color_properties": "label", "color_mode": "cycle",
                 "categorical_colormap": {"colormap": {"foreground": "lime", "background": "red"}}}
START_HINT = "start it with `make run` (or `sam2-service serve --socket {path}`)"
#: Planes whose embeddings are remembered (by content), most recently used kept.
EMBEDDED_PLANES = 32


@dataclass
class Edit:
    """One segmentation written to a label layer: what to restore on undo.

    Attributes:
        layer: the Labels layer; index: the plane's leading indices (() for 2-D);
        before: the plane (HxW) as it was; kind: the prompt layer's name or AUTO;
        ids: the label ids the edit wrote (kept when the same prompts are re-run).
    """

    layer: Any
    index: tuple[int, ...]
    before: np.ndarray
    kind: str
    ids: list[int] = field(default_factory=list)


def points_in_plane(world: np.ndarray, image: Any, index: tuple[int, ...]) -> np.ndarray:
    """Rows of ``world`` ((N, ndim) world coordinates) that fall on the image's plane
    ``index`` (its leading data indices), as an (M, 2) array of daemon (x, y) pixels."""
    out = []
    for w in np.asarray(world, dtype=float).reshape(-1, image.ndim):
        data = logic.world_to_data(w, image.scale, image.translate)
        if tuple(int(round(v)) for v in data[:-2]) == index:
            out.append(logic.data_to_xy(data))
    return np.asarray(out, dtype=float).reshape(-1, 2)


def describe(edit: Edit) -> str:
    """What an edit wrote, for a person: its prompts, label ids, layer and plane."""
    what = "the auto-segmentation" if edit.kind == AUTO else f"the {edit.kind} result"
    ids = ", ".join(str(i) for i in edit.ids)
    label = f" (label{'s' if len(edit.ids) > 1 else ''} {ids})" if ids else ""
    plane = f", slice {', '.join(str(i) for i in edit.index)}" if edit.index else ""
    return f"{what}{label} in {edit.layer.name}{plane}"


def _left_to_undo(n: int) -> str:
    return f"{n} more to undo." if n else "Nothing more to undo."


def _ready_to_click(points: Any, viewer: Any) -> None:
    """Select the points layer in add mode: a click on the image then adds a point."""
    viewer.layers.selection.active = points
    points.mode = "add"


def _retire(viewer: Any, name: str, fits: Callable[[Any], bool]) -> None:
    """Rename layer ``name`` to ``"<name> (earlier image)"`` when it does not ``fit`` the
    image now chosen (another shape or number of dimensions), so a fresh one can be made."""
    if name in viewer.layers and not fits(viewer.layers[name]):
        viewer.layers[name].name = f"{name} (earlier image)"


def _point_outside(xy: np.ndarray, plane: logic.Plane) -> str | None:
    """Why the daemon would refuse these (N, 2) (x, y) points on ``plane`` (one lies outside
    the image by the protocol's rule, :func:`point_inside`), or None when all are inside."""
    h, w = plane.image.shape[:2]
    for x, y in xy:
        if not point_inside(x, y, w, h):
            return (f"Not segmented: the point at x={x:g}, y={y:g} lies outside the {w}x{h} "
                    "image; move it onto the image")
    return None


class Controller:
    """Prompts -> daemon -> label layers for one viewer.

    Args:
        viewer: the napari viewer.
        run: ``run(job, done)`` calls ``job()`` off the GUI thread and ``done(result)`` (or
            ``done(exception)``) on it; the widget passes a napari thread worker.
    """

    def __init__(self, viewer: Any, run: Callable[[Callable[[], Any], Callable[[Any], None]], None]):
        self.viewer = viewer
        self.run = run
        self.client: Client | None = None
        self.image: Any = None
        self.mode, self.target = "add", 1
        self.auto_settings: dict[str, Any] = {"points_per_side": 16}
        self.tile, self.halo = 0, 0
        self.undo_stack: list[Edit] = []
        self.images = ImageHandles(EMBEDDED_PLANES)  # the planes' embeddings, by content
        self._live: dict[str, Edit] = {}
        self.tickets = {POINTS: Tickets(), BOX: Tickets()}  # per prompt kind, latest wins
        self._writing = False
        self.status: Callable[[str], None] = lambda text: None

    # -- connection ---------------------------------------------------------------------------
    def connect(self, socket_path: str | None) -> str:
        """Connect and return a status line: the model and device, or why it failed and how
        to start the daemon."""
        client = Client(socket_path or None, timeout=DEFAULT_TIMEOUT)
        try:
            info = client.info()
        except (ClientError, OSError) as exc:
            client.close()
            self.client = None
            return f"Not connected: {error_text(exc)}\nThe daemon is not running at " \
                   f"{client.socket_path}; " + START_HINT.format(path=client.socket_path)
        if self.client is not None:
            self.client.close()
        self.client = client
        self.images.clear()
        return (f"Connected to {client.socket_path}: model {info.get('model', '?')} on "
                f"{info.get('device', '?')} ({info.get('weights', info.get('checkpoint', '?'))})")

    # -- layers -------------------------------------------------------------------------------
    def use_image(self, image: Any) -> None:
        """Make ``image`` (a napari Image layer) the one to segment; add its prompt and label
        layers when missing."""
        self.image, self._live = image, {}
        v, nd = self.viewer, image.ndim
        side = max(self._shape()[-2:])
        for name in (POINTS, BOX):
            _retire(v, name, lambda layer: layer.ndim == nd)
        if POINTS not in v.layers:
            pts = v.add_points(ndim=nd, name=POINTS, size=side / 60,
                               features={"label": np.array([], dtype=object)},
                               feature_defaults={"label": "foreground"}, face_color=POINT_COLOURS,
                               border_color="white")
            pts.events.data.connect(lambda e: self._on_prompt(POINTS, e))
            pts.bind_key("t", lambda _layer: self.toggle_point_label(), overwrite=True)
        if BOX not in v.layers:
            box = v.add_shapes(ndim=nd, name=BOX, face_color="transparent", edge_color="yellow",
                               edge_width=side / 200)
            box.events.data.connect(lambda e: self._on_prompt(BOX, e))
        for name in (*MASKS.values(), AUTO):
            self.label_layer(name)
        _ready_to_click(v.layers[POINTS], v)

    def label_layer(self, name: str) -> Any:
        """The Labels layer ``name`` for the current image (created empty, uint16, with the
        image's spatial shape, scale and translate)."""
        _retire(self.viewer, name, lambda layer: layer.data.shape == self._shape())
        if name in self.viewer.layers:
            return self.viewer.layers[name]
        im = self.image
        layer = self.viewer.add_labels(np.zeros(self._shape(), np.uint16), name=name, scale=im.scale,
                                       translate=im.translate)
        layer.metadata["names"] = {}
        return layer

    def _shape(self) -> tuple[int, ...]:
        """The image's shape without its colour axis: (..., H, W)."""
        return self.image.data.shape[:-1] if self.image.rgb else self.image.data.shape

    def toggle_point_label(self) -> str:
        """Switch new points between foreground and background; returns the new one."""
        pts = self.viewer.layers[POINTS]
        new = "background" if pts.feature_defaults["label"][0] == "foreground" else "foreground"
        pts.feature_defaults = {"label": new}
        return new

    def plane(self) -> logic.Plane:
        """The image's displayed plane (the slice under the viewer's dims point)."""
        im = self.image
        step = np.round(im.world_to_data(self.viewer.dims.point[-im.ndim:])).astype(int)
        return logic.image_plane(np.asarray(im.data), im.rgb, step)

    # -- requests -----------------------------------------------------------------------------
    def _on_prompt(self, kind: str, event: Any) -> None:
        if self._writing or str(getattr(event, "action", "added")) not in ("added", "changed", "removed"):
            return
        self.segment(kind)

    def segment(self, kind: str) -> None:
        """Segment with the prompts of ``kind`` (POINTS or BOX) on the displayed plane; the
        result replaces the previous result of the same prompts (same ids) until
        :meth:`new_object`. Only the latest request's result is written."""
        if self.client is None or self.image is None:
            self.status("Connect to the daemon and choose an image first.")
            return
        plane = self.plane()
        xy = points_in_plane(self._prompt_world(kind), self.image, plane.index)
        if kind == BOX:
            xy = xy.reshape(-1, 4, 2)
        ticket, client = self.tickets[kind].take(), self.client  # older replies are now stale
        if len(xy) == 0:
            self._restore_live(kind)
            return
        if kind == POINTS and (problem := _point_outside(xy, plane)):
            self.status(problem)
            return
        kw = self._prompt_kwargs(kind, xy, plane)
        self.run(lambda: self.images.for_array(plane.image).run(
                     lambda ref: client.segment(ref, **kw), client.embed),
                 lambda r: self._segmented(kind, plane, r, ticket))

    def _prompt_world(self, kind: str) -> np.ndarray:
        layer = self.viewer.layers[kind]
        data = layer.data
        if kind == BOX:
            data = [s for s, t in zip(data, layer.shape_type) if t == "rectangle"]
        return np.asarray(data, dtype=float).reshape(-1, self.image.ndim)

    def _prompt_kwargs(self, kind: str, xy: np.ndarray, plane: logic.Plane) -> dict[str, Any]:
        h, w = plane.image.shape[:2]
        if kind == POINTS:
            on_plane = self._points_on_plane_labels(plane)
            return {"points": [(x, y, 1 if lab == "foreground" else 0) for (x, y), lab in zip(xy, on_plane)]}
        return {"boxes": [logic.box_to_xyxy(corners, w, h) for corners in xy]}

    def _points_on_plane_labels(self, plane: logic.Plane) -> list[str]:
        pts = self.viewer.layers[POINTS]
        keep = [tuple(int(round(v)) for v in logic.world_to_data(p, self.image.scale,
                                                                  self.image.translate)[:-2]) == plane.index
                for p in np.asarray(pts.data, dtype=float)]
        return [lab for lab, k in zip(pts.features["label"], keep) if k]

    def auto_segment(self) -> None:
        """Fill the AutoSeg_mask plane with the daemon's automatic label map (tiled when
        ``tile`` > 0 and the image is larger than a tile)."""
        if self.client is None or self.image is None:
            self.status("Connect to the daemon and choose an image first.")
            return
        plane, client = self.plane(), self.client
        h, w = plane.image.shape[:2]
        tiled = self.tile > 0 and max(h, w) > self.tile
        kw = dict(self.auto_settings, tile_shape=(self.tile,) * 2 if tiled else None,
                  halo=(self.halo,) * 2 if tiled else None)
        self.run(lambda: self.images.for_array(plane.image).run(
                     lambda ref: client.auto(ref, **kw), client.embed),
                 lambda r: self._auto_done(plane, r))

    # -- results ------------------------------------------------------------------------------
    def _segmented(self, kind: str, plane: logic.Plane, result: Any, ticket: int) -> None:
        if isinstance(result, Exception):
            self._failed(result)
            return
        if not self.tickets[kind].is_latest(ticket):
            return  # a newer prompt's request is on its way
        masks = [m.mask for m in result.masks] if kind == BOX and self.mode == "add" else [result.mask]
        layer = self.label_layer(MASKS[kind])
        live = self._live.get(kind)
        if live is not None and live.layer is layer and live.index == plane.index:
            before, ids = live.before, live.ids
        else:
            before, ids = layer.data[plane.index].copy(), []
        new = before
        for k, mask in enumerate(masks):
            if self.mode == "add":
                if k >= len(ids):
                    ids.append(max(logic.next_label_id(new), max(ids, default=0) + 1))
                new = logic.combine(new, mask, "add", ids[k])
            else:
                new = logic.combine(new, mask, self.mode, self.target)
        edit = Edit(layer, plane.index, before, kind, ids[: len(masks)])
        self._write(edit, new)
        self._live[kind] = edit
        self.status(f"{kind}: score {result.score:.3f}, {result.inference_time_ms:.0f} ms")

    def _auto_done(self, plane: logic.Plane, result: Any) -> None:
        if isinstance(result, Exception):
            self._failed(result)
            return
        layer = self.label_layer(AUTO)
        self._write(Edit(layer, plane.index, layer.data[plane.index].copy(), AUTO), result.labels)
        self.status(f"Auto-segment: {len(result.table)} labels")

    def _failed(self, exc: Exception) -> None:
        self.status(f"Request failed: {error_text(exc)}")

    def _write(self, edit: Edit, plane_labels: np.ndarray) -> None:
        """Write ``plane_labels`` into the edit's plane, remember the edit for undo, and
        redraw the layer's names."""
        self._writing = True
        try:
            if self.undo_stack and self._live.get(edit.kind) is not None \
                    and self.undo_stack[-1] is self._live[edit.kind]:
                self.undo_stack.pop()  # a re-run of the same prompts replaces its edit
            edit.layer.data[edit.index] = plane_labels.astype(edit.layer.data.dtype)
            edit.layer.refresh()
            self.undo_stack.append(edit)
            self.draw_names(edit.layer)
        finally:
            self._writing = False

    def _restore_live(self, kind: str) -> None:
        live = self._live.pop(kind, None)
        if live is not None and self.undo_stack and self.undo_stack[-1] is live:
            self.undo(f"Removed (no {kind} left on this plane)")

    def undo(self, verb: str = "Undone") -> bool:
        """Undo the last segmentation (restore its plane), saying what; False if none."""
        if not self.undo_stack:
            self.status("Nothing to undo.")
            return False
        edit = self.undo_stack.pop()
        self.status(f"{verb}: {describe(edit)}. {_left_to_undo(len(self.undo_stack))}")
        self._live = {k: v for k, v in self._live.items() if v is not edit}
        self._writing = True
        try:
            edit.layer.data[edit.index] = edit.before
            edit.layer.refresh()
            self.draw_names(edit.layer)
        finally:
            self._writing = False
        return True

    def new_object(self) -> None:
        """Keep the current results and clear the prompt layers for the next object."""
        self._live = {}
        self._writing = True
        try:
            for kind in (POINTS, BOX):
                if kind in self.viewer.layers:
                    self.viewer.layers[kind].data = []
        finally:
            self._writing = False

    def draw_names(self, layer: Any) -> None:
        """Redraw ``layer``'s names on the displayed plane (:func:`.names.draw_names`)."""
        draw_names(self.viewer, layer, self.plane().index if self.image is not None else ())
