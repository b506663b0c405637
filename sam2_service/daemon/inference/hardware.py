"""Which devices the models run on: ``--device`` entries resolved against what torch sees,
and the precision each runs at. torch is imported inside the functions (on first use).
"""

from __future__ import annotations

from typing import Any, Callable

from ..config import ALL_CUDA, StartupError


def _import_torch() -> Any:
    try:
        import torch
    except ImportError:
        raise StartupError("torch is not installed: run `make install` "
                           "(or pip install 'torch>=2.5.1' torchvision)") from None
    return torch


def resolve_device(requested: str) -> str:
    """Turn ``--device`` into a torch device string.

    ``auto`` picks cuda, then mps, then cpu (the order of the sam2 notebooks).

    Raises:
        StartupError: the requested backend is not available in this torch build.
    """
    torch = _import_torch()
    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise StartupError(f"--device {requested}: CUDA is not available to this torch "
                               f"({torch.__version__}); use --device cpu or auto")
        index = int(requested.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise StartupError(f"--device {requested}: only {torch.cuda.device_count()} CUDA "
                               "device(s) visible")
    if requested == "mps" and not has_mps:
        raise StartupError("--device mps: MPS is not available to this torch; use --device cpu")
    return requested


def cuda_device_count() -> int:
    """CUDA devices visible to torch (0 without CUDA), for ``--device cuda:all``."""
    torch = _import_torch()
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def expand_devices(specs: list[str], cuda_count: Callable[[], int] = cuda_device_count
                   ) -> list[str]:
    """``ServiceConfig.devices`` with ``cuda:all`` made ``cuda:0`` .. ``cuda:N-1`` (N from
    ``cuda_count()``, torch's device count; tests pass their own). One model per item.

    Raises:
        StartupError: ``cuda:all`` with no CUDA device visible.
    """
    if specs != [ALL_CUDA]:
        return list(specs)
    count = cuda_count()
    if count < 1:
        raise StartupError("--device cuda:all: no CUDA device is visible to torch; "
                           "use --device cpu or auto")
    return [f"cuda:{i}" for i in range(count)]


def resolve_precision(precision: str, device: str) -> str:
    """``auto`` is bfloat16 autocast on CUDA (as the sam2 examples do) and float32 elsewhere."""
    if precision == "auto":
        return "bfloat16" if device.startswith("cuda") else "float32"
    return precision
