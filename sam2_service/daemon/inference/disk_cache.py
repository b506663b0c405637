"""The disk tier under the image-embedding cache: embeddings that survive a restart.

One file per image embedding in ``--cache-dir`` (mode 0700), named by the SHA-256 of its key
(the image's ``imageId`` and the model's disk identity, :func:`disk_identity`) with the
suffix ``.emb``; at most ``--cache-disk-mb`` of them, least recently used removed first (a
hit touches the file's mtime, so the order survives restarts). Files are written by a
background thread, off the request's path: to a temporary file opened owner-only (0600),
fsynced, then renamed over the final name, so a reader never sees a half-written file. A
pending write is already found by :meth:`DiskEmbeddingStore.get`, so what a lookup finds
does not depend on whether the thread has written it yet.

The format and its checks are :mod:`.disk_format`'s: nothing read is trusted (no pickle, no
``torch.load``). A file that fails them (truncated, corrupt, foreign, another model's) is
removed with a ``Discarded disk embedding`` warning in the log and counts as a miss.

Thread-safety: one lock guards the index and the counters; the inference thread(s) call
:meth:`~DiskEmbeddingStore.get` and :meth:`~DiskEmbeddingStore.put` (their torch calls, the
host copies and views, stay on that thread), the event loop's thread
:meth:`~DiskEmbeddingStore.remove` and :meth:`~DiskEmbeddingStore.stats`; the writer thread
only writes bytes.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import secrets
import stat
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Hashable

from ..config import ServiceConfig
from ..ops.logs import event
from .cache import CacheStats, EmbeddingCache, is_image_key
from .disk_format import (
    DiskFileError,
    Encoded,
    TensorSpec,
    decode,
    embedding_layout,
    encode,
    features_of,
    file_head,
    fits,
    max_file_bytes,
    tensors_of,
)
from .engine import Embedding

if TYPE_CHECKING:  # torch is imported where used, so that importing the server needs none
    import torch

log = logging.getLogger("sam2_service.disk_cache")

#: Writes waiting for the writer thread at most; beyond that a new embedding is not written
#: (counted in ``skipped``), so a burst of new images cannot pile up host memory.
MAX_PENDING = 8
_NAME = re.compile(r"^[0-9a-f]{64}\.emb$")
_TEMP = re.compile(r"^\.[0-9a-f]{64}\.emb\.[0-9a-f]{16}\.tmp$")


@dataclass(frozen=True)
class DiskStats:
    """The disk tier's counters since start and its size now (bytes, entries)."""

    directory: str
    capacity_bytes: int
    bytes: int = 0
    entries: int = 0
    hits: int = 0
    misses: int = 0
    writes: int = 0
    evictions: int = 0
    discarded: int = 0
    skipped: int = 0
    pending: int = 0


@dataclass(eq=False)
class _Write:
    name: str
    body: Encoded


def disk_identity(engine: Any) -> tuple[str, ...]:
    """The model identity a stored embedding is keyed by: the memory cache's
    ``engine.model_id`` (model, checkpoint path:size:mtime, dtype, device) with the device
    reduced to its kind (``cuda:1`` -> ``cuda``: another GPU of the same kind may reuse it),
    plus what changes the embedding's bits: the fast path on or off, a compiled image
    encoder (``--compile all``), and the torch and sam2 versions."""
    model, ckpt, precision, device = engine.model_id[:4]
    versions = getattr(engine, "versions", {})
    return (model, ckpt, precision, device.split(":")[0],
            f"fastpath={bool(getattr(engine, 'fastpath', False))}",
            f"encoder={'compiled' if getattr(engine, 'compile_mode', 'off') == 'all' else 'eager'}",
            f"torch={versions.get('torch', '?')}", f"sam2={versions.get('sam2', '?')}")


class TieredCache:
    """The memory :class:`~.cache.EmbeddingCache` with the disk tier under it, with the same
    methods: :meth:`get` of a bare ``imageId`` that memory misses reads the disk tier (and
    keeps what it finds in memory), :meth:`put` of one queues it for the disk tier, and
    :meth:`release` drops both copies. Keys that are not bare imageIds (``auto``'s crops
    and tiles) are derived entries (:func:`~.cache.is_image_key`), kept in memory only.

    Files are keyed by the engine's :func:`disk_identity`, checked against its
    :func:`embedding_layout` and put on its device; an engine without a SAM2 model (the
    tests' fake) gets no disk tier. Not thread-safe, like the memory cache: the worker
    holds its cache lock around every call. :meth:`get` and :meth:`put` make torch calls
    (host copies, moves to the device): inference thread only.

    Args:
        memory: the memory tier.
        store: the disk tier (shared by every worker), or None.
        engine: returns the worker's engine (None until it is loaded).
    """

    def __init__(self, memory: EmbeddingCache[Embedding], store: DiskEmbeddingStore | None,
                 engine: Callable[[], Any]) -> None:
        self.memory, self.store, self._engine = memory, store, engine
        self._bound: tuple[tuple[str, ...], tuple[TensorSpec, ...]] | None = None

    def get(self, key: str, model: Hashable) -> Embedding | None:
        """The embedding under ``key`` by ``model``: from memory, else (a bare imageId) from
        disk, on the engine's device; None when neither has it."""
        emb = self.memory.get(key, model)
        bound = self._bind() if emb is None and is_image_key(key) else None
        found = None if bound is None else self.store.get(key, *bound)
        if found is None:
            return emb
        tensors, hw = found
        engine = self._engine()
        nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
        emb = Embedding(features_of(tensors, engine.device), hw, nbytes, engine.model_id, 0.0)
        self.memory.put(key, model, emb, nbytes)
        return emb

    def put(self, key: str, model: Hashable, value: Embedding, nbytes: int) -> bool:
        """Keep ``value`` in memory (derived unless ``key`` is a bare imageId) and queue an
        image's embedding for the disk tier; returns whether memory kept it."""
        image = is_image_key(key)
        kept = self.memory.put(key, model, value, nbytes, derived=not image)
        bound = self._bind() if image else None
        if bound is not None:
            try:
                self.store.put(key, bound[0], tensors_of(value.features), value.orig_hw,
                               bound[1])
            except Exception as exc:  # the reply does not depend on the disk copy
                log.warning("disk embedding of %s not queued: %s", key[:12], exc)
        return kept

    def release(self, image_id: str) -> int:
        """Drop ``image_id``'s embedding from memory and disk; how many copies were dropped."""
        bound = self._bind()
        on_disk = bound is not None and self.store.remove(image_id, bound[0])
        return self.memory.release(image_id) + int(on_disk)

    def holds(self, image_id: str) -> bool:
        """True if memory holds ``image_id`` (routing; the disk tier is every device's)."""
        return self.memory.holds(image_id)

    def clear(self) -> int:
        """Empty the memory tier (device memory after out of memory); the bytes freed."""
        return self.memory.clear()

    def stats(self) -> CacheStats:
        """The memory tier's counters, with the disk tier's as ``disk`` (None when off)."""
        stats = self.memory.stats()
        stats.disk = None if self.store is None else self.store.stats()
        return stats

    def __len__(self) -> int:
        return len(self.memory)

    def _bind(self) -> tuple[tuple[str, ...], tuple[TensorSpec, ...]] | None:
        """(disk identity, layout) of the engine, or None (no disk tier, no engine yet, or
        no SAM2 model)."""
        engine = self._engine() if self.store is not None else None
        if engine is None:
            return None
        if self._bound is None:
            layout = embedding_layout(engine)
            self._bound = () if layout is None else (disk_identity(engine), layout)
        return self._bound or None


def open_store(config: ServiceConfig) -> "DiskEmbeddingStore | None":
    """The disk tier for ``config`` (``--cache-dir``, ``--cache-disk-mb``), or None when it
    is off (0) or its folder is not one of the daemon user's (a warning in the log; the
    daemon serves without it)."""
    if config.cache_disk_bytes == 0:
        return None
    try:
        return DiskEmbeddingStore(config.cache_path, config.cache_disk_bytes,
                                  flush_timeout=config.shutdown_timeout)
    except OSError as exc:
        event(log, "Disk embedding cache off", logging.WARNING, directory=str(config.cache_path),
              reason=str(exc))
        return None


def _key_name(image_id: str, identity: tuple[str, ...]) -> str:
    return sha256(json.dumps([image_id, *identity]).encode()).hexdigest() + ".emb"


class DiskEmbeddingStore:
    """Image embeddings as files in ``directory``, at most ``capacity_bytes`` of them.

    Args:
        directory: the folder (made 0700 with its parents if missing; an existing one is
            set to 0700).
        capacity_bytes: the files' byte budget (> 0), least recently used removed first.
        flush_timeout: seconds :meth:`close` waits for pending writes.

    Raises:
        OSError: the folder exists but is not a folder of this user (one that does not exist
            yet is made at the first write; failing then, the write is logged and skipped).
    """

    def __init__(self, directory: Path, capacity_bytes: int, *, flush_timeout: float = 30.0
                 ) -> None:
        if capacity_bytes <= 0:
            raise ValueError(f"capacity_bytes must be > 0, got {capacity_bytes}")
        self.directory = Path(directory)
        self.capacity_bytes = capacity_bytes
        self.flush_timeout = flush_timeout
        self._lock = threading.Lock()
        self._index: OrderedDict[str, int] = OrderedDict()  # file name -> size, LRU first
        self._bytes = 0
        self._pending: dict[str, _Write] = {}
        self._queue: queue.Queue[_Write | None] = queue.Queue()
        self._writer: threading.Thread | None = None
        self._counts = dict(hits=0, misses=0, writes=0, evictions=0, discarded=0, skipped=0)
        self._ready = False
        if os.path.lexists(self.directory):  # else made at the first write
            self._open_folder()
            self._scan()

    # -- start-up ------------------------------------------------------------------------------
    def _open_folder(self) -> None:
        if self._ready:
            return
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(self.directory)
        if not stat.S_ISDIR(st.st_mode):
            raise OSError(f"{self.directory} is not a folder")
        if st.st_uid != os.geteuid():
            raise OSError(f"{self.directory} belongs to uid {st.st_uid}, not to this user")
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.chmod(self.directory, 0o700)
        self._ready = True

    def _scan(self) -> None:
        """Index this folder's embedding files by mtime (oldest first), remove temporary
        files a crash left, and trim to the budget. Other files are left alone."""
        found = []
        for entry in os.scandir(self.directory):
            if _TEMP.match(entry.name):
                self._unlink(entry.name)
            elif _NAME.match(entry.name):
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid():
                    found.append((st.st_mtime_ns, entry.name, st.st_size))
        for _, name, size in sorted(found):
            self._index[name] = size
            self._bytes += size
        with self._lock:
            self._evict(keep=None)

    # -- lookups and writes ----------------------------------------------------------------------
    def get(self, image_id: str, identity: tuple[str, ...], layout: tuple[TensorSpec, ...]
            ) -> tuple[dict[str, torch.Tensor], tuple[int, int]] | None:
        """The stored tensors (host, keyed by :data:`TENSOR_NAMES`, strides as written) and
        (H, W) of ``image_id``'s embedding by the model ``identity``, or None (a miss; an
        invalid file is removed with a warning)."""
        name = _key_name(image_id, identity)
        with self._lock:
            pending = self._pending.get(name)
            if pending is not None:
                self._counts["hits"] += 1
                return dict(pending.body.tensors), tuple(pending.body.header["origHw"])
            if name not in self._index:
                self._counts["misses"] += 1
                return None
        try:
            tensors, hw = _read(self.directory / name, image_id, identity, layout)
        except FileNotFoundError:  # evicted meanwhile (or removed by hand): a plain miss
            with self._lock:
                size = self._index.pop(name, None)
                self._bytes -= size or 0
                self._counts["misses"] += 1
            return None
        except (OSError, DiskFileError) as exc:
            self._discard(name, str(exc))
            return None
        with self._lock:
            if name in self._index:
                self._index.move_to_end(name)
            self._counts["hits"] += 1
        try:
            os.utime(self.directory / name)
        except OSError:
            pass
        return tensors, hw

    def put(self, image_id: str, identity: tuple[str, ...], tensors: dict[str, torch.Tensor],
            orig_hw: tuple[int, int], layout: tuple[TensorSpec, ...]) -> bool:
        """Queue ``tensors`` (keyed by :data:`TENSOR_NAMES`; on any device, copied to the host
        here, on the caller's thread) as ``image_id``'s embedding by ``identity``, to be
        written by the writer thread. False (nothing queued) when they are not ``layout``'s
        shapes and dtypes, larger than the budget, already stored or pending, or
        :data:`MAX_PENDING` writes wait."""
        if not fits(tensors, layout):
            return False
        name = _key_name(image_id, identity)
        with self._lock:
            if name in self._index or name in self._pending:
                return False
            if len(self._pending) >= MAX_PENDING:
                self._counts["skipped"] += 1
                return False
        body = encode(image_id, identity, tensors, orig_hw)
        if body.nbytes > self.capacity_bytes:
            return False
        job = _Write(name, body)
        with self._lock:
            self._pending[name] = job
        self._start_writer()
        self._queue.put(job)
        return True

    def remove(self, image_id: str, identity: tuple[str, ...]) -> bool:
        """Drop ``image_id``'s stored (or pending) embedding by ``identity``; True if there
        was one."""
        name = _key_name(image_id, identity)
        with self._lock:
            had = self._pending.pop(name, None) is not None
            size = self._index.pop(name, None)
            if size is not None:
                self._bytes -= size
                had = True
        if size is not None:
            self._unlink(name)
        return had

    def stats(self) -> DiskStats:
        """A copy of the counters and the current size."""
        with self._lock:
            return DiskStats(str(self.directory), self.capacity_bytes, self._bytes,
                             len(self._index), pending=len(self._pending), **self._counts)

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the pending writes; True when none is left."""
        end = time.monotonic() + timeout
        while True:
            with self._lock:
                if not self._pending:
                    return True
            if time.monotonic() >= end:
                return False
            time.sleep(0.01)

    def close(self, timeout: float | None = None) -> bool:
        """Finish pending writes (up to ``timeout``, default ``flush_timeout`` seconds) and
        stop the writer thread; True when everything was written."""
        done = self.flush(self.flush_timeout if timeout is None else timeout)
        if self._writer is not None:
            self._queue.put(None)
        return done

    # -- the writer thread ------------------------------------------------------------------
    def _start_writer(self) -> None:
        with self._lock:
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_loop, daemon=True,
                                                name="sam2-disk-cache")
                self._writer.start()

    def _write_loop(self) -> None:
        while (job := self._queue.get()) is not None:
            try:
                self._write(job)
            except OSError as exc:
                event(log, "Disk embedding not written", logging.WARNING, file=job.name,
                      reason=str(exc))
            finally:
                with self._lock:
                    if self._pending.get(job.name) is job:
                        del self._pending[job.name]

    def _write(self, job: _Write) -> None:
        """Write ``job`` to a 0600 temporary file, fsync it, rename it into place, index it
        and evict the least recently used files over the budget."""
        head = file_head(job.body)
        self._open_folder()
        temp = f".{job.name}.{secrets.token_hex(8)}.tmp"
        path = self.directory / temp
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(head)
                for chunk, entry in zip(job.body.chunks, job.body.header["tensors"]):
                    f.seek(len(head) + entry["offset"])
                    f.write(memoryview(chunk))
                f.truncate(len(head) + job.body.nbytes)
                f.flush()
                os.fsync(f.fileno())
            size = len(head) + job.body.nbytes
            with self._lock:
                if self._pending.get(job.name) is not job:  # removed meanwhile
                    raise FileNotFoundError
                os.replace(path, self.directory / job.name)
                self._index[job.name] = size
                self._bytes += size
                self._counts["writes"] += 1
                self._evict(keep=job.name)
        except FileNotFoundError:
            self._unlink(temp)
        except BaseException:
            self._unlink(temp)
            raise

    # -- index upkeep --------------------------------------------------------------------------
    def _evict(self, keep: str | None) -> None:
        """Remove least recently used files until the budget holds (lock held)."""
        while self._bytes > self.capacity_bytes and self._index:
            name, size = next(iter(self._index.items()))
            if name == keep:
                if len(self._index) == 1:
                    break
                self._index.move_to_end(name)
                continue
            del self._index[name]
            self._bytes -= size
            self._counts["evictions"] += 1
            self._unlink(name)

    def _discard(self, name: str, reason: str) -> None:
        with self._lock:
            size = self._index.pop(name, None)
            if size is not None:
                self._bytes -= size
            self._counts["discarded"] += 1
            self._counts["misses"] += 1
        self._unlink(name)
        event(log, "Discarded disk embedding", logging.WARNING, file=name, reason=reason[:200])

    def _unlink(self, name: str) -> None:
        try:
            os.unlink(self.directory / name)
        except OSError:
            pass


def _read(path: Path, image_id: str, identity: tuple[str, ...], layout: tuple[TensorSpec, ...]
          ) -> tuple[dict[str, torch.Tensor], tuple[int, int]]:
    """Read one file of this user, at most the size an embedding takes, and decode it
    (:func:`.disk_format.decode`).

    Raises:
        OSError: it cannot be read; DiskFileError: it is not what was asked for.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            raise DiskFileError("not a regular file of this user")
        if st.st_size > max_file_bytes(layout):
            raise DiskFileError(f"{st.st_size} bytes, more than an embedding takes")
        buf = bytearray(st.st_size)
        if f.readinto(buf) != st.st_size:
            raise DiskFileError("truncated while read")
    return decode(buf, image_id, identity, layout)
