"""The file format of the embedding cache's disk tier, and its checks (no I/O here).

A file is

    8 bytes  magic b"S2SEMB\\x00\\x01"
    4 bytes  header length N, unsigned 32-bit little-endian, N <= 64 KiB
    N bytes  UTF-8 JSON header: format, imageId, identity (the model's, see
             :func:`sam2_service.daemon.inference.disk_cache.disk_identity`), origHw (H, W),
             crc32 (CRC-32 of the tensors' bytes, in order), and per tensor name, dtype,
             shape, strides (elements), offset and nbytes (from the data's start)
    padding  to a multiple of 64 bytes
    data     each tensor's elements in storage order, each at a 64-byte aligned offset

Nothing in it is trusted: no pickle, no ``torch.load``. :func:`decode` uses a file only when
its header parses within bounds, its key is the one asked for, its tensors are exactly those
the loaded model produces (:func:`embedding_layout`: names, shapes, dtypes), their strides
describe dense tensors, their offsets lie inside the file in order without overlap, the last
one ends the file, and the CRC-32 matches; else it raises :class:`DiskFileError`. Strides
are kept, so an embedding read back is bit for bit and layout for layout the one written
(SAM2's ``image_embed`` is channels-last), and the masks predicted from it are the same.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where used, so that importing the server needs none
    import numpy as np
    import torch

MAGIC = b"S2SEMB\x00\x01"
FORMAT = 1
HEADER_MAX = 64 * 2**10
ALIGN = 64
#: dtype name -> bytes per element, of the dtypes a stored tensor may have.
DTYPES: dict[str, int] = {"float32": 4, "bfloat16": 2, "float16": 2}
#: The tensors of SAM2's ``_features`` dict, flattened: ``image_embed``, then
#: ``high_res_feats`` [0] and [1] (see :func:`sam2_compat.image_features`).
TENSOR_NAMES = ("image_embed", "high_res_feats.0", "high_res_feats.1")


class DiskFileError(ValueError):
    """A file of the folder that is not a valid embedding of the key asked for."""


@dataclass(frozen=True)
class TensorSpec:
    """What one stored tensor must be: its ``name``, ``shape`` and allowed dtype names."""

    name: str
    shape: tuple[int, ...]
    dtypes: frozenset[str]


@dataclass(frozen=True)
class Encoded:
    """An embedding ready to be written: the header (without ``crc32``), each tensor's
    bytes (uint8 numpy arrays, storage order), the host tensors they view (what a lookup of
    a pending write returns) and the data's length in bytes."""

    header: dict[str, Any]
    chunks: list[np.ndarray]
    tensors: dict[str, torch.Tensor]
    nbytes: int


def embedding_layout(engine: Any) -> tuple[TensorSpec, ...] | None:
    """The tensors ``engine``'s SAM2 model puts in an image embedding: ``image_embed``
    1xCx S x S, ``high_res_feats`` 1x(C/8)x4Sx4S and 1x(C/4)x2Sx2S (C = 256, S = 64 for
    SAM2.1 at 1024x1024; channels read from the mask decoder's ``conv_s0``/``conv_s1``),
    float32, or also bfloat16 under bfloat16 autocast. None for an engine without a SAM2
    model (the tests' fake engine): no disk tier for it."""
    model = getattr(getattr(engine, "predictor", None), "model", None)
    try:
        s = int(model.sam_image_embedding_size)
        c = int(model.sam_prompt_embed_dim)
        c0 = int(model.sam_mask_decoder.conv_s0.out_channels)
        c1 = int(model.sam_mask_decoder.conv_s1.out_channels)
    except AttributeError:
        return None
    dtypes = frozenset({"float32"} if engine.precision == "float32" else {"float32", "bfloat16"})
    return (TensorSpec("image_embed", (1, c, s, s), dtypes),
            TensorSpec("high_res_feats.0", (1, c0, 4 * s, 4 * s), dtypes),
            TensorSpec("high_res_feats.1", (1, c1, 2 * s, 2 * s), dtypes))


def tensors_of(features: dict[str, Any]) -> dict[str, torch.Tensor]:
    """SAM2's ``_features`` dict flattened to :data:`TENSOR_NAMES`."""
    hr = features["high_res_feats"]
    return {"image_embed": features["image_embed"], "high_res_feats.0": hr[0],
            "high_res_feats.1": hr[1]}


def features_of(tensors: dict[str, torch.Tensor], device: str) -> dict[str, Any]:
    """The inverse of :func:`tensors_of`, each tensor moved to ``device`` (strides kept)."""
    t = {k: v.to(device) for k, v in tensors.items()}
    return {"image_embed": t["image_embed"],
            "high_res_feats": [t["high_res_feats.0"], t["high_res_feats.1"]]}


def fits(tensors: dict[str, torch.Tensor], layout: tuple[TensorSpec, ...]) -> bool:
    """True if ``tensors`` are exactly ``layout``'s names, shapes and dtypes."""
    return set(tensors) == {s.name for s in layout} == set(TENSOR_NAMES) and all(
        tuple(tensors[s.name].shape) == s.shape and _dtype_name(tensors[s.name]) in s.dtypes
        for s in layout)


def encode(image_id: str, identity: tuple[str, ...], tensors: dict[str, torch.Tensor],
           orig_hw: tuple[int, int]) -> Encoded:
    """``tensors`` (keyed by :data:`TENSOR_NAMES`, any device: copied to the host, no copy
    for dense host tensors) as an :class:`Encoded` file body. Torch calls: run it on the
    inference thread."""
    entries, chunks, host, offset = [], [], {}, 0
    for key in TENSOR_NAMES:
        t = tensors[key]
        raw, strides = _storage_order(t)
        entries.append({"name": key, "dtype": _dtype_name(t), "shape": list(t.shape),
                        "strides": strides, "offset": offset, "nbytes": raw.numel()})
        chunks.append(raw.numpy())
        host[key] = raw.view(t.dtype).as_strided(tuple(t.shape), tuple(strides))
        offset += -(-raw.numel() // ALIGN) * ALIGN
    header = {"format": FORMAT, "imageId": image_id, "identity": list(identity),
              "origHw": [int(orig_hw[0]), int(orig_hw[1])], "tensors": entries}
    return Encoded(header, chunks, host, entries[-1]["offset"] + entries[-1]["nbytes"])


def file_head(body: Encoded) -> bytes:
    """Magic, header length, header (with the data's CRC-32) and padding: the bytes before
    the data; the data's offsets count from their end."""
    crc = 0
    for chunk in body.chunks:
        crc = zlib.crc32(chunk, crc)
    header = json.dumps({**body.header, "crc32": crc}).encode()
    head = MAGIC + struct.pack("<I", len(header)) + header
    return head + b"\0" * (-len(head) % ALIGN)


def max_file_bytes(layout: tuple[TensorSpec, ...]) -> int:
    """An upper bound of a valid file's size for ``layout`` (4 bytes per element at most)."""
    return HEADER_MAX + len(MAGIC) + 4 + ALIGN * (len(layout) + 1) + sum(
        4 * _numel(s.shape) for s in layout)


def decode(buf: bytearray, image_id: str, identity: tuple[str, ...],
           layout: tuple[TensorSpec, ...]) -> tuple[dict[str, torch.Tensor], tuple[int, int]]:
    """The host tensors (views of ``buf``, strides as written) and (H, W) of a whole file's
    bytes, checked as the module's docstring says.

    Raises:
        DiskFileError: anything is not as expected.
    """
    header, start = _parse_header(buf)
    if header.get("format") != FORMAT or header.get("imageId") != image_id \
            or header.get("identity") != list(identity):
        raise DiskFileError("another format, image or model")
    hw = header.get("origHw")
    if not (isinstance(hw, list) and len(hw) == 2
            and all(type(v) is int and 0 < v < 2**31 for v in hw)):
        raise DiskFileError("bad origHw")
    entries = _check_tensors(header.get("tensors"), layout, len(buf) - start)
    view, crc = memoryview(buf), 0
    for e in entries:
        crc = zlib.crc32(view[start + e["offset"]:start + e["offset"] + e["nbytes"]], crc)
    if crc != header.get("crc32"):
        raise DiskFileError("data does not match its CRC-32")
    import torch

    out = {}
    for e in entries:
        flat = torch.frombuffer(buf, dtype=torch.uint8, count=e["nbytes"],
                                offset=start + e["offset"]).view(getattr(torch, e["dtype"]))
        out[e["name"]] = flat.as_strided(tuple(e["shape"]), tuple(e["strides"]))
    return out, (hw[0], hw[1])


def dense(shape: tuple[int, ...], strides: tuple[int, ...]) -> bool:
    """True if ``strides`` (elements) lay ``shape`` out densely, each element once, at
    offsets below the element count (any dimension order; size-1 dimensions any stride)."""
    numel, expect = _numel(shape), 1
    for d in sorted((d for d in range(len(shape)) if shape[d] != 1), key=lambda d: strides[d]):
        if strides[d] != expect:
            return False
        expect *= shape[d]
    return all(0 <= s <= numel for s in strides)


def _numel(shape: tuple[int, ...] | list[int]) -> int:
    n = 1
    for v in shape:
        n *= v
    return n


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _storage_order(t: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """``t`` on the host as a 1-D uint8 view of its elements in storage order (no copy when
    ``t`` is a dense host tensor), and the strides that lay them out as ``t``: ``t``'s own
    when dense, else row-major ones (``t`` is copied contiguous)."""
    import torch

    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    if not dense(tuple(t.shape), tuple(t.stride())) or t.storage_offset() != 0:
        t = t.clone(memory_format=torch.contiguous_format)
    perm = sorted(range(t.dim()), key=lambda d: (-t.stride(d), -t.shape[d]))
    return t.permute(perm).contiguous().view(-1).view(torch.uint8), list(t.stride())


def _parse_header(buf: bytearray) -> tuple[dict[str, Any], int]:
    """The JSON header of a file and where its data starts (bounds checked)."""
    base = len(MAGIC) + 4
    if len(buf) < base or bytes(buf[:len(MAGIC)]) != MAGIC:
        raise DiskFileError("not an embedding file (magic)")
    (n,) = struct.unpack_from("<I", buf, len(MAGIC))
    if n > HEADER_MAX or base + n > len(buf):
        raise DiskFileError("header length out of bounds")
    try:
        header = json.loads(bytes(buf[base:base + n]).decode())
    except (UnicodeDecodeError, ValueError):
        raise DiskFileError("header is not JSON") from None
    if not isinstance(header, dict):
        raise DiskFileError("header is not an object")
    return header, -(-(base + n) // ALIGN) * ALIGN


def _check_tensors(entries: Any, layout: tuple[TensorSpec, ...], data_bytes: int
                   ) -> list[dict[str, Any]]:
    """``entries`` if they are exactly ``layout``'s tensors, in order, dense, aligned, inside
    ``data_bytes`` and not overlapping, the last one ending the file."""
    if not isinstance(entries, list) or len(entries) != len(layout):
        raise DiskFileError("not the model's tensors")
    end = 0
    for entry, spec in zip(entries, layout):
        if not isinstance(entry, dict) or entry.get("name") != spec.name:
            raise DiskFileError(f"expected tensor {spec.name}")
        dtype, shape, strides = entry.get("dtype"), entry.get("shape"), entry.get("strides")
        offset, nbytes = entry.get("offset"), entry.get("nbytes")
        if dtype not in spec.dtypes or dtype not in DTYPES:
            raise DiskFileError(f"{spec.name}: dtype {str(dtype)[:20]} is not the model's")
        if shape != list(spec.shape) or not isinstance(strides, list) \
                or len(strides) != len(shape) or not all(type(s) is int for s in strides) \
                or not dense(tuple(shape), tuple(strides)):
            raise DiskFileError(f"{spec.name}: shape or strides are not the model's")
        if type(offset) is not int or type(nbytes) is not int or offset % ALIGN \
                or offset < end or nbytes != _numel(shape) * DTYPES[dtype] \
                or offset + nbytes > data_bytes:
            raise DiskFileError(f"{spec.name}: offset or size out of bounds")
        end = offset + nbytes
    if end != data_bytes:
        raise DiskFileError("truncated or trailing data")
    return entries
