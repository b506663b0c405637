"""The image-embedding cache: an LRU bounded in bytes, keyed by image content and model.

A key is ``(image_id, model_id)``: ``image_id`` is `sam2_service.wire.codecs.compute_image_id` of the image file's
bytes (after base64 decoding, before any image decoding), ``model_id`` the loaded model's
identity (model name, checkpoint identity, dtype, device; see
:meth:`sam2_service.daemon.inference.engine.Sam2Engine.model_id`). As in micro-sam's embedding cache, an
entry made by one model is never looked up for another: the model is part of the key.

Entries made from an image's parts (``derived``: the ``auto`` op's crop and tile
embeddings, whose keys are an ``imageId`` with a suffix) only use room that image embeddings
do not need: putting one never evicts an image's embedding (only older derived entries),
and putting an image's embedding evicts derived entries first. So an ``auto`` request with
crops cannot push out the images people are working on.

The disk tier under this cache is :mod:`sam2_service.daemon.inference.disk_cache`.

No torch here: the entry's size is given by the caller. Neither cache is thread-safe: the
inference thread looks entries up and adds them, and the event loop's thread asks
:meth:`~EmbeddingCache.holds` (routing) and :meth:`~EmbeddingCache.release` (``release``);
:class:`sam2_service.daemon.inference.worker.InferenceWorker` holds its cache lock around
every call.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, Hashable, TypeVar

V = TypeVar("V")
_IMAGE_ID = re.compile(r"[0-9a-f]{64}")


def is_image_key(key: str) -> bool:
    """True if ``key`` is a bare ``imageId`` (64 lower-case hex digits): an image's own
    embedding, not a derived one (``auto``'s crops and tiles add a suffix)."""
    return _IMAGE_ID.fullmatch(key) is not None


@dataclass
class CacheStats:
    """Counters since start: lookups that hit or missed, entries evicted to make room,
    and the entries and bytes held now; ``disk``, the disk tier's
    (:class:`~sam2_service.daemon.inference.disk_cache.DiskStats`), None when it is off."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    entries: int = 0
    bytes: int = 0
    disk: object | None = None


class EmbeddingCache(Generic[V]):
    """Least-recently-used entries whose sizes sum to at most ``capacity_bytes``.

    Args:
        capacity_bytes: the byte budget; 0 turns the cache off (nothing is kept).

    A :meth:`get` hit makes the entry the most recently used; :meth:`put` evicts least
    recently used entries until the new one fits (derived entries first, and for a
    derived entry only those; see the module's docstring). An entry that cannot fit is
    not kept.
    """

    def __init__(self, capacity_bytes: int) -> None:
        if capacity_bytes < 0:
            raise ValueError(f"capacity_bytes must be >= 0, got {capacity_bytes}")
        self.capacity_bytes = capacity_bytes
        self._entries: OrderedDict[tuple[str, Hashable], tuple[V, int]] = OrderedDict()
        #: Derived entries (crops, tiles), in their own LRU order.
        self._derived: OrderedDict[tuple[str, Hashable], tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self._hits = self._misses = self._evictions = 0

    def get(self, image_id: str, model: Hashable) -> V | None:
        """The entry for ``(image_id, model)``, or None; counts a hit or a miss."""
        key = (image_id, model)
        for entries in (self._entries, self._derived):
            item = entries.get(key)
            if item is not None:
                entries.move_to_end(key)
                self._hits += 1
                return item[0]
        self._misses += 1
        return None

    def put(self, image_id: str, model: Hashable, value: V, nbytes: int, *,
            derived: bool = False) -> bool:
        """Store ``value`` (``nbytes`` big) as the most recently used entry, evicting the
        least recently used derived entries, then (unless ``derived``) image entries,
        until it fits. Returns False (and stores nothing) when it cannot fit: ``nbytes``
        exceeds the whole budget, or a ``derived`` entry would need an image's room."""
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0, got {nbytes}")
        key = (image_id, model)
        self._remove(key)
        room = self.capacity_bytes - (sum(s for _, s in self._entries.values()) if derived else 0)
        if nbytes > room:
            return False
        for entries in (self._derived, self._entries):
            while self._bytes + nbytes > self.capacity_bytes and entries:
                _, (_, size) = entries.popitem(last=False)
                self._bytes -= size
                self._evictions += 1
        (self._derived if derived else self._entries)[key] = (value, nbytes)
        self._bytes += nbytes
        return True

    def holds(self, image_id: str) -> bool:
        """True if an entry of ``image_id`` (whatever its model) is kept; counts nothing
        and leaves the order as it is."""
        return any(k[0] == image_id for k in self._entries)

    def release(self, image_id: str) -> int:
        """Drop every image entry of ``image_id`` (whatever its model); returns how many were
        dropped. Derived entries have keys of their own and age out."""
        keys = [k for k in self._entries if k[0] == image_id]
        for key in keys:
            self._remove(key)
        return len(keys)

    def clear(self) -> int:
        """Drop every entry (used to free device memory after an out-of-memory error);
        returns the bytes freed."""
        freed = self._bytes
        self._entries.clear()
        self._derived.clear()
        self._bytes = 0
        return freed

    def __len__(self) -> int:
        return len(self._entries) + len(self._derived)

    def stats(self) -> CacheStats:
        """The counters and current size (a copy; derived entries included)."""
        return CacheStats(self._hits, self._misses, self._evictions, len(self), self._bytes)

    def _remove(self, key: tuple[str, Hashable]) -> None:
        for entries in (self._entries, self._derived):
            item = entries.pop(key, None)
            if item is not None:
                self._bytes -= item[1]


class LogitsCache:
    """SAM2's low-resolution mask logits of recent replies, by ``maskId`` (for
    ``maskInput``, the refinement of a mask): an LRU of at most ``entries`` entries, each
    tied to its image and model, so that a ``maskInput`` naming a mask of another image or
    model is not found.

    An entry is a 1x256x256 float32 array (256 KiB; SAM2's ``low_res_masks`` for one mask,
    clamped to [-32, 32] by SAM2's predictor), kept in host memory. Not thread-safe (see the
    module's docstring).

    Args:
        entries: the most entries kept; 0 keeps none (every ``maskInput`` is unknown).
    """

    def __init__(self, entries: int) -> None:
        if entries < 0:
            raise ValueError(f"entries must be >= 0, got {entries}")
        self.entries = entries
        self._items: OrderedDict[str, tuple[str, Hashable, object]] = OrderedDict()

    def put(self, mask_id: str, image_id: str, model: Hashable, logits: object) -> None:
        """Keep ``logits`` under ``mask_id`` as the most recent entry, evicting the oldest."""
        if self.entries == 0:
            return
        self._items[mask_id] = (image_id, model, logits)
        self._items.move_to_end(mask_id)
        while len(self._items) > self.entries:
            self._items.popitem(last=False)

    def get(self, mask_id: str, image_id: str, model: Hashable) -> object | None:
        """The logits of ``mask_id`` if they were made on ``image_id`` by ``model``, else None;
        a hit makes the entry the most recent."""
        item = self._items.get(mask_id)
        if item is None or item[0] != image_id or item[1] != model:
            return None
        self._items.move_to_end(mask_id)
        return item[2]

    def holds(self, image_id: str) -> bool:
        """True if a mask of ``image_id`` is kept."""
        return any(v[0] == image_id for v in self._items.values())

    def release(self, image_id: str) -> int:
        """Drop every entry of ``image_id``; returns how many were dropped."""
        keys = [k for k, v in self._items.items() if v[0] == image_id]
        for key in keys:
            del self._items[key]
        return len(keys)

    def __len__(self) -> int:
        return len(self._items)
