"""EmbeddingCache: LRU by bytes, keyed by (imageId, model identity)."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sam2_service.daemon.inference.cache import EmbeddingCache
from sam2_service.wire.codecs import compute_image_id as image_id

M1 = ("tiny", "ckpt-a", "float32", "cpu")
M2 = ("tiny", "ckpt-b", "float32", "cpu")


def test_image_id_is_hex_sha256_of_the_bytes():
    assert image_id(b"abc") == hashlib.sha256(b"abc").hexdigest()
    assert len(image_id(b"")) == 64


def test_hit_and_miss_are_counted():
    c: EmbeddingCache[str] = EmbeddingCache(100)
    assert c.get("a", M1) is None
    assert c.put("a", M1, "A", 10)
    assert c.get("a", M1) == "A"
    s = c.stats()
    assert (s.hits, s.misses, s.entries, s.bytes) == (1, 1, 1, 10)


def test_evicts_least_recently_used_by_bytes():
    c: EmbeddingCache[str] = EmbeddingCache(30)
    for k in "abc":
        c.put(k, M1, k.upper(), 10)
    assert c.get("a", M1) == "A"  # a is now the most recent; b is the oldest
    c.put("d", M1, "D", 10)
    assert c.get("b", M1) is None
    assert [c.get(k, M1) for k in "acd"] == ["A", "C", "D"]
    assert c.stats().evictions == 1 and c.stats().bytes == 30


def test_a_big_entry_evicts_several():
    c: EmbeddingCache[str] = EmbeddingCache(30)
    for k in "abc":
        c.put(k, M1, k, 10)
    c.put("big", M1, "BIG", 25)
    assert len(c) == 1 and c.stats().evictions == 3 and c.stats().bytes == 25


def test_entry_larger_than_budget_is_not_kept():
    c: EmbeddingCache[str] = EmbeddingCache(30)
    c.put("a", M1, "A", 10)
    assert not c.put("huge", M1, "H", 31)
    assert c.get("huge", M1) is None
    assert c.get("a", M1) == "A"  # nothing was evicted for it


def test_zero_capacity_keeps_nothing():
    c: EmbeddingCache[str] = EmbeddingCache(0)
    assert not c.put("a", M1, "A", 1)
    assert len(c) == 0


def test_another_model_never_reuses_an_entry():
    c: EmbeddingCache[str] = EmbeddingCache(100)
    c.put("img", M1, "made by M1", 10)
    assert c.get("img", M2) is None
    c.put("img", M2, "made by M2", 10)
    assert c.get("img", M1) == "made by M1"
    assert c.get("img", M2) == "made by M2"


def test_put_same_key_replaces_and_recounts_bytes():
    c: EmbeddingCache[str] = EmbeddingCache(100)
    c.put("a", M1, "old", 40)
    c.put("a", M1, "new", 15)
    assert c.get("a", M1) == "new" and c.stats().bytes == 15 and len(c) == 1


def test_release_drops_every_model_entry_of_an_image():
    c: EmbeddingCache[str] = EmbeddingCache(100)
    c.put("a", M1, "1", 10)
    c.put("a", M2, "2", 10)
    c.put("b", M1, "3", 10)
    assert c.release("a") == 2
    assert c.release("a") == 0
    assert c.get("b", M1) == "3" and c.stats().bytes == 10


def test_clear_returns_bytes_freed():
    c: EmbeddingCache[str] = EmbeddingCache(100)
    c.put("a", M1, "1", 10)
    c.put("b", M1, "2", 20)
    assert c.clear() == 30
    assert len(c) == 0 and c.stats().bytes == 0


def test_negative_sizes_are_refused():
    with pytest.raises(ValueError):
        EmbeddingCache(-1)
    with pytest.raises(ValueError):
        EmbeddingCache(10).put("a", M1, "A", -1)


@settings(max_examples=200, deadline=None)
@given(cap=st.integers(0, 100),
       ops=st.lists(st.tuples(st.sampled_from(["put", "get", "release"]),
                              st.sampled_from("abcdef"), st.integers(0, 60)), max_size=40))
def test_property_bytes_never_exceed_capacity_and_match_entries(cap, ops):
    """Against a reference model: an ordered dict with the same LRU rule."""
    c: EmbeddingCache[int] = EmbeddingCache(cap)
    ref: dict[str, int] = {}  # key -> size, in recency order
    for op, key, size in ops:
        if op == "put":
            ref.pop(key, None)
            if size <= cap:
                while sum(ref.values()) + size > cap:
                    ref.pop(next(iter(ref)))
                ref[key] = size
            c.put(key, M1, size, size)
        elif op == "get":
            got = c.get(key, M1)
            assert got == ref.get(key)
            if key in ref:
                ref[key] = ref.pop(key)
        else:
            c.release(key)
            ref.pop(key, None)
        assert c.stats().bytes == sum(ref.values()) <= cap
        assert len(c) == len(ref)


def test_a_derived_entry_never_evicts_an_image_entry():
    """auto's crop and tile embeddings (derived) use only room images do not need."""
    c: EmbeddingCache[str] = EmbeddingCache(40)
    assert c.put("a", M1, "A", 10) and c.put("b", M1, "B", 10)
    assert c.put("a@1", M1, "crop1", 10, derived=True)
    assert c.put("a@2", M1, "crop2", 10, derived=True)
    assert not c.put("a@3", M1, "crop3", 25, derived=True)  # would need an image's room
    assert c.get("a@3", M1) is None and c.get("a@1", M1) == "crop1"
    assert c.put("a@4", M1, "crop4", 10, derived=True)  # evicts the oldest derived, a@2
    assert c.get("a@2", M1) is None
    assert [c.get(k, M1) for k in "ab"] == ["A", "B"]
    assert len(c) == 4 and c.stats().evictions == 1


def test_an_image_entry_evicts_derived_entries_first():
    c: EmbeddingCache[str] = EmbeddingCache(30)
    c.put("a", M1, "A", 10)
    c.put("a@1", M1, "crop1", 10, derived=True)
    c.put("a@2", M1, "crop2", 10, derived=True)
    assert c.get("a", M1) == "A" and c.get("a@2", M1) == "crop2"
    assert c.put("b", M1, "B", 10)  # a@1, the oldest derived, goes, not a
    assert c.get("a@1", M1) is None and c.get("a", M1) == "A"
    assert c.put("c", M1, "C", 20)  # then a@2, then the least recently used image, b
    assert [c.get(k, M1) for k in ("a@2", "a", "b", "c")] == [None, "A", None, "C"]
    assert c.stats().bytes == 30 and c.stats().evictions == 3
    assert c.release("a@1") == 0 and c.clear() == 30 and len(c) == 0
