"""A ``SAM2VideoPredictor`` over the daemon's already loaded SAM2 model.

``sam2.build_sam.build_sam2_video_predictor`` builds the model a second time and loads the
checkpoint again. Here the predictor is made from the same Hydra config and the same
overrides (``SAM2VideoPredictor`` as target, SAM2's post-processing: dynamic multimask,
masks from points binarised for the memory encoder, holes up to 8 pixels filled), built
once on the CPU (SAM2's Hiera cannot be built on torch's ``meta`` device) and then given
every part and parameter of the image model, so both predictors share one set of weights on
the device; the CPU copy it was built with is freed.
"""

from __future__ import annotations

from typing import Any

#: ``build_sam2_video_predictor``'s overrides with ``apply_postprocessing=True`` (sam2 1.1.0).
VIDEO_OVERRIDES = (
    "++model._target_=sam2.sam2_video_predictor.SAM2VideoPredictor",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98",
    "++model.binarize_mask_from_pts_for_mem_enc=true",
    "++model.fill_hole_area=8",
)


def build_video_predictor(image_model: Any, model_config: str) -> Any:
    """A ``SAM2VideoPredictor`` (eval mode) sharing ``image_model``'s modules, parameters
    and buffers (a ``SAM2Base`` from ``build_sam2(model_config, ...)``).

    Raises:
        RuntimeError: a parameter or buffer of the new predictor is not the image model's
            (a sam2 whose model holds state this sharing does not know).
    """
    import torch
    from hydra import compose
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = compose(config_name=model_config, overrides=list(VIDEO_OVERRIDES))
    OmegaConf.resolve(cfg)
    with torch.device("cpu"):
        video = instantiate(cfg.model, _recursive_=True)
    for name, child in image_model.named_children():
        setattr(video, name, child)
    for name, param in image_model.named_parameters(recurse=False):
        setattr(video, name, param)
    for name, buf in image_model.named_buffers(recurse=False):
        video.register_buffer(name, buf)
    shared = {id(t) for t in [*image_model.parameters(), *image_model.buffers()]}
    left = [n for n, t in [*video.named_parameters(), *video.named_buffers()]
            if id(t) not in shared]
    if left:
        raise RuntimeError(f"video predictor tensors not shared with the image model: {left[:5]}")
    video.eval()
    return video
