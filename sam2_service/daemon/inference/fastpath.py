"""The fast path: speed-ups around SAM2's image predictor that keep its results.

Each function here changes where, how often or in which memory layout SAM2's own
computation runs, never what it computes (the layout changes float rounding, ~1e-7 in the
logits); tests/integration/test_fastpath.py checks each against ``SAM2ImagePredictor`` with
the same weights. torch is imported inside the functions: this module is only used by
:mod:`sam2_service.daemon.inference.engine` on the inference thread. The sam2 internals it
changes or calls are reached through :mod:`.sam2_compat`.

* :func:`cache_dense_pe`: the prompt encoder's dense positional encoding, computed once.
* :func:`channels_last_upscaling`: the mask decoder's upscaling convolutions in the memory
  layout of the tensor they receive (CPU).
* :class:`DeviceTransforms`: ``set_image``'s resize and normalisation on the model's device
  (CUDA, MPS) instead of the CPU.
* :func:`predict_masks`: ``predict`` without its float copies: masks stay on the device
  until thresholded, and only the thresholded bytes come back (pinned memory on CUDA).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import sam2_compat


def cache_dense_pe(model: Any) -> None:
    """Make ``model.sam_prompt_encoder.get_dense_pe()`` return one precomputed tensor.

    SAM2's ``PromptEncoder.get_dense_pe`` (sam2 1.1.0, ``modeling/sam/prompt_encoder.py``)
    recomputes the same 1x256x64x64 positional encoding of the image-embedding grid on every
    ``predict``, as a permuted (non-contiguous) view, which ``MaskDecoder.predict_masks``
    then copies with ``repeat_interleave`` through strided reads. The encoding depends only on
    the layer's fixed random matrix, so it is computed once here, contiguous: the same values,
    and ``predict`` at 1080p went from 54.1 to 48.5 ms (medians of 15, 2-core CPU).

    Call it inside the inference context that requests use (bfloat16 autocast on CUDA
    changes the matmul inside), on the model's device. It sets an instance attribute on the
    prompt encoder, so every predictor over this model (the automatic mask generator's too)
    uses it.
    """
    pe = sam2_compat.dense_pe(model).contiguous()
    sam2_compat.replace_dense_pe(model, pe)


def channels_last_upscaling(model: Any) -> None:
    """Store the mask decoder's ``output_upscaling`` weights channels-last (NHWC).

    ``MaskDecoder.predict_masks`` (sam2 1.1.0, ``modeling/sam/mask_decoder.py``) hands the
    first ConvTranspose2d ``src.transpose(1, 2).view(b, c, h, w)``: a 1x256x64x64 tensor whose
    memory is already channels-last. With NCHW weights, the CPU convolution (oneDNN) copies that
    input to NCHW and each output back, through strided reads: at 1080p about 10 ms of
    ``copy_`` per ``predict`` on the 2-core development CPU. With channels-last weights
    the convolutions take the layout they are given: ``predict`` at 1080p 53.5 -> 39.3 ms
    (medians of 15, same process). The convolution kernels differ, so logits agree within
    float rounding (largest difference 1.5e-7 there), not bit for bit; a mask pixel can
    flip only where SAM2's own logit is that close to the threshold.

    Used on the CPU only: on CUDA and MPS it has not been measured (no GPU was lent).
    ``Module.to(memory_format=...)`` changes only 4-D parameters, here the two
    ConvTranspose2d weights; every predictor over ``model`` sees it.
    """
    import torch

    sam2_compat.mask_upscaling(model).to(memory_format=torch.channels_last)


class DeviceTransforms:
    """``SAM2Transforms`` with its image half (to tensor, resize to the model's square
    input, normalise) run on ``device`` instead of the CPU; the rest (``postprocess_masks``,
    ``transform_coords``, ``transform_boxes``) is the wrapped object's.

    ``SAM2ImagePredictor.set_image`` calls ``self._transforms(image)`` and moves the result
    to the model's device; with this in place of ``_transforms`` it receives a tensor already
    there, so the upload is the uint8 image (3 bytes a pixel) and the antialiased resize runs
    on the GPU. The operations are SAM2Transforms' own (``ToTensor``'s permute and division
    by 255, then its scripted ``Resize`` + ``Normalize``), so results agree within float
    tolerance (bit for bit on the CPU).

    Args:
        base: the predictor's ``SAM2Transforms``.
        device: torch device string (``cuda:0``, ``mps``; ``cpu`` for tests).
    """

    def __init__(self, base: Any, device: str) -> None:
        self.base = base
        self.device = device

    def __call__(self, image: np.ndarray) -> Any:
        """3xRxR float32 tensor on :attr:`device` (R: the model's input size, 1024) of an
        HxWx3 uint8 RGB image."""
        import torch

        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3:
            return self.base(image).to(self.device)  # SAM2's own path for anything else
        x = torch.from_numpy(np.ascontiguousarray(image)).to(self.device)
        x = x.permute(2, 0, 1).contiguous().to(torch.float32).div(255)
        return self.base.transforms(x)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.base, name)


def predict_masks(predictor: Any, prompts: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What ``SAM2ImagePredictor.predict(..., return_logits=False)`` returns, with the masks
    as bool instead of float32.

    SAM2's ``predict`` (sam2 1.1.0) is ``_prep_prompts`` + ``_predict`` followed by
    ``.float().cpu().numpy()`` of each output: the thresholded masks become float32 (4
    bytes a pixel) before leaving the device, and the daemon thresholded them again. Here
    the same two calls run and the bool masks (``logits > mask_threshold``, computed on the
    device by ``_predict``) are copied to host memory as they are.

    Args:
        predictor: a ``SAM2ImagePredictor`` with an image set.
        prompts: :class:`~sam2_service.daemon.inference.prompts.Prompts` (``point_coords`` Nx2 XY
            pixels, ``point_labels`` N, ``box`` XYXY pixels, 4 or Bx4, ``mask_input``
            1x256x256, ``multimask_output``).

    Returns:
        (masks, scores, low_res_logits) as SAM2's ``predict`` shapes them (batch dim
        squeezed when it is 1): masks ...xHxW bool, scores ... float32, logits ...x256x256
        float32.
    """
    mask_input, coords, labels, box = sam2_compat.prep_prompts(
        predictor, prompts.point_coords, prompts.point_labels, prompts.box, prompts.mask_input)
    masks, iou, low_res = sam2_compat.predict_tensors(predictor, coords, labels, box, mask_input,
                                                      prompts.multimask_output)
    return (to_host(masks.squeeze(0)), iou.squeeze(0).float().cpu().numpy(),
            low_res.squeeze(0).float().cpu().numpy())


def to_host(tensor: Any) -> np.ndarray:
    """``tensor`` as a numpy array in host memory: on the CPU without a copy; from CUDA
    through pinned (page-locked) memory, which the copy engine reads directly instead of
    staging through a pageable buffer."""
    import torch

    if tensor.device.type == "cuda":
        host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        host.copy_(tensor, non_blocking=True)
        torch.cuda.current_stream(tensor.device).synchronize()
        return host.numpy()
    return tensor.detach().cpu().numpy()
