"""Which exceptions the engine treats as the device running out of memory (the worker turns
them into ``out_of_memory`` replies after freeing memory; see tests/unit/test_worker.py)."""

from __future__ import annotations

import pytest
import torch

from sam2_service.daemon.inference.engine import Sam2Engine


@pytest.mark.parametrize("exc, oom", [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
    (torch.cuda.OutOfMemoryError("CUDA out of memory."), True),
    (RuntimeError("MPS backend out of memory (MPS allocated: 8.00 GB)"), True),
    (RuntimeError("Expected all tensors to be on the same device"), False),
    (MemoryError(), False),  # host memory: not the device's; reported as internal
    (ValueError("out of memory"), False),
])
def test_is_out_of_memory(exc, oom):
    assert Sam2Engine.is_out_of_memory(exc) is oom
