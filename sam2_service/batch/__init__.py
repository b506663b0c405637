"""``sam2-service batch``'s engine room: automatic segmentation of many images.

:func:`run` walks the inputs (:mod:`.inputs`), skips what the output folder's manifest has
done (:mod:`.manifest`), runs each image's ``auto`` request on an engine (:mod:`.engines`:
the daemon as a client; :mod:`.ray_engine`: Ray Data and an actor pool), and writes label
maps, overlays and one COCO file (:mod:`.coco`). A front-end: it imports the client and the
wire only, never the daemon or torch (the Ray engine's model actor is handed in).
"""

from .engines import Failure
from .runner import Progress, Summary, run

__all__ = ["run", "Progress", "Summary", "Failure"]
