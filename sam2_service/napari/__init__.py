"""napari plugin for the SAM2 daemon: prompts (points, boxes) and automatic segmentation into
label layers. Imports only the client and wire layers (no torch): install ``.[napari]``.

:mod:`.logic` holds the layer logic as pure numpy functions; :mod:`.widget` the dock widget.
"""
