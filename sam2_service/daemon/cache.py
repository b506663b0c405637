"""The image-embedding cache: an LRU bounded in bytes, keyed by image content and model.

A key is ``(image_id, model_id)``: ``image_id`` is `sam2_service.wire.codecs.compute_image_id` of the image file's
bytes (after base64 decoding, before any image decoding), ``model_id`` the loaded model's
identity (model name, checkpoint identity, dtype, device; see
:meth:`sam2_service.daemon.engine.Sam2Engine.model_id`). As in micro-sam's embedding cache, an
entry made by one model is never looked up for another: the model is part of the key.

No torch here: the entry's size is given by the caller. The cache is not thread-safe; the
inference thread is its only user (:mod:`sam2_service.daemon.worker`).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, Hashable, TypeVar

V = TypeVar("V")


@dataclass
class CacheStats:
    """Counters since start: lookups that hit or missed, entries evicted to make room,
    and the entries and bytes held now."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    entries: int = 0
    bytes: int = 0


class EmbeddingCache(Generic[V]):
    """Least-recently-used entries whose sizes sum to at most ``capacity_bytes``.

    Args:
        capacity_bytes: the byte budget; 0 turns the cache off (nothing is kept).

    A :meth:`get` hit makes the entry the most recently used; :meth:`put` evicts least
    recently used entries until the new one fits. An entry larger than the whole budget
    is not kept.
    """

    def __init__(self, capacity_bytes: int) -> None:
        if capacity_bytes < 0:
            raise ValueError(f"capacity_bytes must be >= 0, got {capacity_bytes}")
        self.capacity_bytes = capacity_bytes
        self._entries: OrderedDict[tuple[str, Hashable], tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self._hits = self._misses = self._evictions = 0

    def get(self, image_id: str, model: Hashable) -> V | None:
        """The entry for ``(image_id, model)``, or None; counts a hit or a miss."""
        key = (image_id, model)
        item = self._entries.get(key)
        if item is None:
            self._misses += 1
            return None
        self._entries.move_to_end(key)
        self._hits += 1
        return item[0]

    def put(self, image_id: str, model: Hashable, value: V, nbytes: int) -> bool:
        """Store ``value`` (``nbytes`` big) as the most recently used entry, evicting the
        least recently used ones until it fits. Returns False (and stores nothing) when
        ``nbytes`` exceeds the whole budget."""
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0, got {nbytes}")
        key = (image_id, model)
        self._remove(key)
        if nbytes > self.capacity_bytes:
            return False
        while self._bytes + nbytes > self.capacity_bytes:
            _, (_, size) = self._entries.popitem(last=False)
            self._bytes -= size
            self._evictions += 1
        self._entries[key] = (value, nbytes)
        self._bytes += nbytes
        return True

    def release(self, image_id: str) -> int:
        """Drop every entry of ``image_id`` (whatever its model); returns how many were dropped."""
        keys = [k for k in self._entries if k[0] == image_id]
        for key in keys:
            self._remove(key)
        return len(keys)

    def clear(self) -> int:
        """Drop every entry (used to free device memory after an out-of-memory error);
        returns the bytes freed."""
        freed = self._bytes
        self._entries.clear()
        self._bytes = 0
        return freed

    def __len__(self) -> int:
        return len(self._entries)

    def stats(self) -> CacheStats:
        """The counters and current size (a copy)."""
        return CacheStats(self._hits, self._misses, self._evictions, len(self._entries), self._bytes)

    def _remove(self, key: tuple[str, Hashable]) -> None:
        item = self._entries.pop(key, None)
        if item is not None:
            self._bytes -= item[1]
