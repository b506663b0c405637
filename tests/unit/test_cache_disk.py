"""The embedding cache's disk tier on its own, with small fake tensors: round trip with the
strides kept, owner-only files in an owner-only folder, LRU eviction by bytes across
restarts, and every kind of bad file (corrupt, truncated, foreign, wrong shape or dtype,
garbage) refused, removed and logged; plus the default folder per platform."""

from __future__ import annotations

import json
import logging
import os
import stat
import struct
import threading

import pytest
import torch

from sam2_service.daemon.config import ServiceConfig, default_cache_dir
from sam2_service.daemon.inference import disk_cache, disk_format
from sam2_service.daemon.inference.disk_cache import DiskEmbeddingStore, open_store
from sam2_service.daemon.inference.disk_format import MAGIC, TensorSpec

F32 = frozenset({"float32"})
LAYOUT = (TensorSpec("image_embed", (1, 8, 4, 4), F32),
          TensorSpec("high_res_feats.0", (1, 2, 16, 16), F32),
          TensorSpec("high_res_feats.1", (1, 4, 8, 8), F32))
ID = ("tiny", "/ckpt.pt:10:20", "float32", "cpu", "fastpath=True", "encoder=eager",
      "torch=x", "sam2=y")
IMG_A, IMG_B, IMG_C = "a" * 64, "b" * 64, "c" * 64


def fake_tensors(seed: int, layout=LAYOUT, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """Random tensors of ``layout``; the first and last channels-last, as SAM2's are."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i, spec in enumerate(layout):
        t = torch.randn(spec.shape, generator=g).to(dtype)
        out[spec.name] = t.contiguous(memory_format=torch.channels_last) if i != 1 else t
    return out


def file_bytes(store: DiskEmbeddingStore) -> int:
    return sum(p.stat().st_size for p in store.directory.glob("*.emb"))


def only_file(store: DiskEmbeddingStore):
    (path,) = store.directory.glob("*.emb")
    return path


@pytest.fixture
def warnings_log():
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("sam2_service.disk_cache")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def put(store, image=IMG_A, seed=0, hw=(30, 40), **kw):
    tensors = fake_tensors(seed, **kw)
    assert store.put(image, ID, tensors, hw, kw.get("layout", LAYOUT))
    assert store.flush(10)
    return tensors


def test_round_trip_after_a_restart_keeps_values_strides_and_size(tmp_path):
    folder = tmp_path / "cache" / "sam2-service"
    store = DiskEmbeddingStore(folder, 10 * 2**20)
    assert not folder.exists()  # made at the first write, not before
    sent = put(store)
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    assert stat.S_IMODE(only_file(store).stat().st_mode) == 0o600
    assert [p.name for p in folder.iterdir()] == [only_file(store).name]  # no temp file left
    again = DiskEmbeddingStore(folder, 10 * 2**20)
    got, hw = again.get(IMG_A, ID, LAYOUT)
    assert hw == (30, 40)
    for name, t in sent.items():
        assert torch.equal(got[name], t) and got[name].stride() == t.stride(), name
    s = again.stats()
    assert (s.hits, s.misses, s.entries, s.bytes) == (1, 0, 1, file_bytes(again))
    assert again.get(IMG_B, ID, LAYOUT) is None and again.stats().misses == 1
    assert again.get(IMG_A, ID[:-1] + ("sam2=z",), LAYOUT) is None  # another model: a miss


def test_bfloat16_round_trip(tmp_path):
    layout = tuple(TensorSpec(s.name, s.shape, frozenset({"float32", "bfloat16"})) for s in LAYOUT)
    store = DiskEmbeddingStore(tmp_path, 10 * 2**20)
    sent = put(store, layout=layout, dtype=torch.bfloat16)
    got, _ = DiskEmbeddingStore(tmp_path, 10 * 2**20).get(IMG_A, ID, layout)
    assert all(got[k].dtype == torch.bfloat16 and torch.equal(got[k], v) for k, v in sent.items())


def test_a_pending_write_is_found_before_it_is_written(tmp_path, monkeypatch):
    store = DiskEmbeddingStore(tmp_path, 10 * 2**20)
    gate = threading.Event()
    real = store._write
    monkeypatch.setattr(store, "_write", lambda job: (gate.wait(10), real(job)))
    sent = fake_tensors(1)
    assert store.put(IMG_A, ID, sent, (5, 6), LAYOUT)
    got, hw = store.get(IMG_A, ID, LAYOUT)
    assert hw == (5, 6) and torch.equal(got["image_embed"], sent["image_embed"])
    assert store.stats().pending == 1 and not list(tmp_path.glob("*.emb"))
    gate.set()
    assert store.flush(10) and store.stats().writes == 1 and store.stats().pending == 0


def test_least_recently_used_files_are_evicted_by_bytes_across_restarts(tmp_path):
    one = DiskEmbeddingStore(tmp_path, 10 * 2**20)
    put(one, IMG_A, 0)
    size = file_bytes(one)
    store = DiskEmbeddingStore(tmp_path, 2 * size + size // 2)  # two files fit, not three
    put(store, IMG_B, 1)
    assert store.get(IMG_A, ID, LAYOUT) is not None  # A is now more recent than B
    put(store, IMG_C, 2)
    assert store.stats().evictions == 1 and store.stats().entries == 2
    restarted = DiskEmbeddingStore(tmp_path, 2 * size + size // 2)
    assert restarted.get(IMG_B, ID, LAYOUT) is None
    assert restarted.get(IMG_A, ID, LAYOUT) is not None
    assert restarted.get(IMG_C, ID, LAYOUT) is not None
    assert DiskEmbeddingStore(tmp_path, size).stats().entries == 1  # a smaller budget trims


def test_an_embedding_larger_than_the_budget_is_not_written(tmp_path):
    store = DiskEmbeddingStore(tmp_path, 1000)
    assert not store.put(IMG_A, ID, fake_tensors(0), (3, 3), LAYOUT)
    assert not store.put(IMG_B, ID, fake_tensors(0, layout=LAYOUT[:1] * 3), (3, 3), LAYOUT)


def test_remove_drops_the_file_and_a_pending_write(tmp_path, monkeypatch):
    store = DiskEmbeddingStore(tmp_path, 10 * 2**20)
    put(store)
    assert store.remove(IMG_A, ID) is True and not list(tmp_path.glob("*.emb"))
    assert store.remove(IMG_A, ID) is False and store.get(IMG_A, ID, LAYOUT) is None
    gate = threading.Event()
    real = store._write
    monkeypatch.setattr(store, "_write", lambda job: (gate.wait(10), real(job)))
    assert store.put(IMG_B, ID, fake_tensors(1), (3, 3), LAYOUT)
    assert store.remove(IMG_B, ID) is True
    gate.set()
    store.close(10)
    store._writer.join(10)
    assert list(tmp_path.iterdir()) == [] and store.stats().writes == 1  # A only


def _rewrite_header(path, change):
    data = path.read_bytes()
    (n,) = struct.unpack_from("<I", data, len(MAGIC))
    base = len(MAGIC) + 4
    header = json.loads(data[base:base + n])
    change(header)
    start = -(-(base + n) // disk_format.ALIGN) * disk_format.ALIGN
    new = json.dumps(header).encode()
    head = MAGIC + struct.pack("<I", len(new)) + new
    pad = -len(head) % disk_format.ALIGN
    path.write_bytes(head + b"\0" * pad + data[start:])


def _entry(name):
    return lambda h: next(t for t in h["tensors"] if t["name"] == name)


BAD_FILES = {
    "flipped data byte": lambda p: p.write_bytes(p.read_bytes()[:-5] + b"\x01" + p.read_bytes()[-4:]),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[:-100]),
    "trailing bytes": lambda p: p.write_bytes(p.read_bytes() + b"\0" * 64),
    "garbage": lambda p: p.write_bytes(os.urandom(5000)),
    "empty": lambda p: p.write_bytes(b""),
    "a pickle": lambda p: p.write_bytes(b"\x80\x04\x95" + b"\0" * 200),
    "header length past the end": lambda p: p.write_bytes(
        MAGIC + struct.pack("<I", 2**31) + p.read_bytes()[12:]),
    "another image": lambda p: _rewrite_header(p, lambda h: h.update(imageId="f" * 64)),
    "another shape": lambda p: _rewrite_header(
        p, lambda h: _entry("image_embed")(h).update(shape=[1, 4, 8, 4])),
    "another dtype": lambda p: _rewrite_header(
        p, lambda h: _entry("image_embed")(h).update(dtype="float16")),
    "overlapping strides": lambda p: _rewrite_header(
        p, lambda h: _entry("image_embed")(h).update(strides=[1, 1, 1, 1])),
    "offset out of bounds": lambda p: _rewrite_header(
        p, lambda h: _entry("high_res_feats.1")(h).update(offset=2**40)),
    "bad origHw": lambda p: _rewrite_header(p, lambda h: h.update(origHw=[0, -1])),
}


@pytest.mark.parametrize("damage", BAD_FILES, ids=list(BAD_FILES))
def test_a_bad_file_is_a_miss_removed_with_a_warning(tmp_path, damage, warnings_log):
    store = DiskEmbeddingStore(tmp_path, 10 * 2**20)
    put(store)
    path = only_file(store)
    BAD_FILES[damage](path)
    assert store.get(IMG_A, ID, LAYOUT) is None
    assert not path.exists()
    s = store.stats()
    assert (s.discarded, s.misses, s.hits, s.entries, s.bytes) == (1, 1, 0, 0, 0)
    assert [r.getMessage() for r in warnings_log] == ["Discarded disk embedding"]
    assert warnings_log[0].levelno == logging.WARNING


def test_a_foreign_file_under_another_key_name_is_refused(tmp_path, warnings_log):
    """A file copied (or renamed) to the name of another key holds that other key in its
    header: refused."""
    store = DiskEmbeddingStore(tmp_path, 10 * 2**20)
    put(store, IMG_A)
    a = only_file(store)
    put(store, IMG_B, 1)
    b = next(p for p in tmp_path.glob("*.emb") if p != a)
    b.write_bytes(a.read_bytes())
    assert store.get(IMG_B, ID, LAYOUT) is None and not b.exists()
    assert store.get(IMG_A, ID, LAYOUT) is not None


def test_folder_is_made_owner_only_and_other_files_are_left_alone(tmp_path):
    tmp_path.chmod(0o755)
    other = tmp_path / "notes.txt"
    other.write_text("mine")
    leftover = tmp_path / f".{'d' * 64}.emb.{'0' * 16}.tmp"
    leftover.write_bytes(b"half")
    store = DiskEmbeddingStore(tmp_path, 10 * 2**20)
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o700
    assert other.read_text() == "mine" and not leftover.exists()
    assert store.stats().entries == 0


def test_a_file_in_place_of_the_folder_turns_the_tier_off(tmp_path, warnings_log):
    (tmp_path / "f").write_text("x")
    cfg = ServiceConfig(cache_dir=tmp_path / "f")
    assert open_store(cfg) is None
    assert [r.getMessage() for r in warnings_log] == ["Disk embedding cache off"]
    assert open_store(ServiceConfig(cache_dir=tmp_path / "d", cache_disk_bytes=0)) is None
    assert isinstance(open_store(ServiceConfig(cache_dir=tmp_path / "d")), DiskEmbeddingStore)


def test_put_refuses_tensors_the_layout_does_not_describe(tmp_path):
    store = DiskEmbeddingStore(tmp_path, 10 * 2**20)
    t = fake_tensors(0)
    assert not store.put(IMG_A, ID, {**t, "image_embed": t["image_embed"][:, :4]}, (3, 3), LAYOUT)
    assert not store.put(IMG_A, ID, {**t, "image_embed": t["image_embed"].double()}, (3, 3),
                         LAYOUT)
    assert store.stats().pending == 0


def test_at_most_max_pending_writes_wait(tmp_path, monkeypatch):
    store = DiskEmbeddingStore(tmp_path, 100 * 2**20)
    gate = threading.Event()
    real = store._write
    monkeypatch.setattr(store, "_write", lambda job: (gate.wait(10), real(job)))
    ids = [f"{i:064x}" for i in range(disk_cache.MAX_PENDING + 1)]
    took = [store.put(i, ID, fake_tensors(0), (3, 3), LAYOUT) for i in ids]
    assert took == [True] * disk_cache.MAX_PENDING + [False]
    gate.set()
    assert store.flush(10) and store.stats().skipped == 1
    assert store.stats().entries == disk_cache.MAX_PENDING


def test_default_cache_dir_per_platform():
    assert default_cache_dir("linux", {"HOME": "/h"}).as_posix() == "/h/.cache/sam2-service"
    assert default_cache_dir("linux", {"HOME": "/h", "XDG_CACHE_HOME": "/x"}).as_posix() \
        == "/x/sam2-service"
    assert default_cache_dir("darwin", {"HOME": "/h"}).as_posix() \
        == "/h/Library/Caches/sam2-service"
    assert ServiceConfig().cache_disk_bytes == 4096 * 2**20
    with pytest.raises(ValueError, match="cache_disk_bytes"):
        ServiceConfig(cache_disk_bytes=-1)


def test_a_header_rewritten_unchanged_still_loads(tmp_path):
    """The control for the bad-header cases above: the rewriting itself breaks nothing."""
    store = DiskEmbeddingStore(tmp_path, 10 * 2**20)
    sent = put(store)
    _rewrite_header(only_file(store), lambda h: None)
    got, _ = store.get(IMG_A, ID, LAYOUT)
    assert torch.equal(got["high_res_feats.1"], sent["high_res_feats.1"])
