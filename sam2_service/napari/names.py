"""Label names: kept in a Labels layer's ``metadata["names"]`` (id -> name) and drawn as text
at each named region by a Points layer ``"<layer> names"`` (no Qt here)."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import logic


def name_label(viewer: Any, layer: Any, label_id: int, name: str, index: tuple[int, ...] = ()) -> None:
    """Store ``name`` for ``label_id`` in ``layer.metadata["names"]`` (an empty name removes
    it) and redraw the names on plane ``index`` (leading indices, () for 2-D)."""
    names = layer.metadata.setdefault("names", {})
    if name:
        names[int(label_id)] = name
    else:
        names.pop(int(label_id), None)
    draw_names(viewer, layer, index)


def draw_names(viewer: Any, layer: Any, index: tuple[int, ...] = ()) -> None:
    """Show each named label's name at a pixel of its region on plane ``index`` of ``layer``
    (a Points layer "<layer> names" with text, in the label layer's scale and translate, so
    its (..., row, col) data coordinates are the label map's)."""
    names = layer.metadata.get("names", {})
    title = f"{layer.name} names"
    centres = logic.region_centres(np.asarray(layer.data[index])) if names else {}
    rows = [(lab, (*index, *rc)) for lab, rc in centres.items() if lab in names]
    coords = np.array([c for _, c in rows], float).reshape(-1, layer.ndim)
    text = np.array([names[lab] for lab, _ in rows], dtype=object)
    if title in viewer.layers:
        pts = viewer.layers[title]
        pts.data = coords
        pts.features = {"name": text}
        pts.text.refresh(pts.features)
    elif rows:
        viewer.add_points(coords, name=title, features={"name": text}, size=0,
                          text={"string": "{name}", "color": "white", "size": 10},
                          scale=layer.scale, translate=layer.translate)
