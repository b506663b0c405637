"""``sam2-service embed``: have the daemon embed many images ahead of interactive work.

The inputs follow :mod:`.inputs`' rules; each image is sent as an ``embed`` request, so its
image embedding is in the daemon's cache (``--cache-mb``) before a person starts clicking.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

from ..client import Client, ClientTimeout, ImageUnreadable, RequestFailed
from .engines import Failure, failure_of
from .inputs import collect_inputs
from .runner import Progress, Summary


def embed(inputs: Sequence[str | os.PathLike], *, socket_path: str | None = None,
          progress: Callable[[Progress], None] | None = None,
          cancel: threading.Event | None = None, timeout: float | None = None) -> Summary:
    """Send every image of ``inputs`` as an ``embed`` request, one after another.

    Returns:
        :class:`Summary`: ``done`` images embedded (cached ones included), ``failed`` with
        their codes, ``objects`` 0, ``output`` the current folder.

    Raises:
        ValueError: bad inputs. ClientError: no daemon answers, or it was lost.
    """
    t0 = time.monotonic()
    images = collect_inputs(inputs)
    failed: list[Failure] = []
    done = 0
    with Client(socket_path, **({"timeout": timeout} if timeout else {})) as client:
        client.ping()
        for img in images:
            if cancel is not None and cancel.is_set():
                break
            failure = None
            try:
                client.embed(str(img.path))
                done += 1
            except (RequestFailed, ImageUnreadable, ClientTimeout, OSError) as exc:
                failure = failure_of(img.name, exc)
                failed.append(failure)
            if progress is not None:
                progress(Progress(done, len(images), img.name, 0, len(failed), failure))
    return Summary(done, 0, failed, 0, time.monotonic() - t0, done + len(failed) < len(images),
                   Path())
