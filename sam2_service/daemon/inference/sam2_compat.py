"""Every use of sam2's internals, in one place, checked against the sam2 it was written for.

The daemon runs SAM2's own code, but to reuse image embeddings (the embedding cache), skip
``predict``'s float copies (:mod:`.fastpath`) and run the automatic mask generator one
point batch at a time (:mod:`sam2_service.daemon.auto.generator`) it reads and writes state
that sam2 keeps private: the attributes ``SAM2ImagePredictor.set_image`` leaves, the
predictor's transforms, its ``_prep_prompts`` and ``_predict`` halves of ``predict``,
``SAM2AutomaticMaskGenerator._process_batch``, and two parts of the model that the fast
path changes (the prompt encoder's dense positional encoding, the mask decoder's upscaling
layers). Each of those accesses is one small function here, which names the sam2 1.1.0
code it mirrors; no other module of the package touches a private sam2 attribute
(tests/unit/test_sam2_compat.py checks it). A new sam2 release that renames or reshapes
any of them breaks here and nowhere else.

At import, :func:`check_version` compares the installed sam2 with :data:`WRITTEN_FOR` and
warns (:class:`Sam2VersionWarning`, on stderr) when they differ; the daemon still runs, and
the parity tests (tests/integration/test_parity.py) say whether its results still equal
SAM2's own. Neither torch nor sam2 is imported here: the functions take the objects.
"""

from __future__ import annotations

import importlib.metadata
import warnings
from typing import Any

#: The sam2 release (PyPI ``sam2``) whose internals this module was written against.
WRITTEN_FOR = "1.1.0"

#: The private (or internal) sam2 attribute names the functions below touch; no other
#: module of sam2_service may name them on a sam2 object (tests/unit/test_sam2_compat.py).
TOUCHED = frozenset({
    "_features", "_orig_hw", "_is_image_set", "_transforms",  # SAM2ImagePredictor state
    "_prep_prompts", "_predict",  # SAM2ImagePredictor.predict's halves
    "_process_batch",  # SAM2AutomaticMaskGenerator
    "get_dense_pe", "output_upscaling",  # prompt encoder, mask decoder internals
    "_sam2_service_compiled",  # this service's own mark on a compiled SAM2Base
})


class Sam2VersionWarning(UserWarning):
    """The installed sam2 is not the release this module was written for."""


def version_message(found: str | None, written_for: str = WRITTEN_FOR) -> str | None:
    """The warning for sam2 ``found`` (None: not installed), or None when it is
    ``written_for`` or absent (a missing sam2 is start-up's error, not this one)."""
    if found is None or found == written_for:
        return None
    return (f"sam2 {found} is installed, but sam2_service's use of sam2 internals "
            f"(sam2_service/daemon/inference/sam2_compat.py) was written for sam2 "
            f"{written_for}: results may differ from SAM2's own or requests may fail; "
            f"install sam2=={written_for} (make install)")


def installed_version() -> str | None:
    """The installed sam2's version (its distribution metadata; sam2 is not imported), or
    None when it is not installed."""
    try:
        return importlib.metadata.version("sam2")
    except importlib.metadata.PackageNotFoundError:
        return None


def check_version(found: str | None = None) -> str | None:
    """Warn (:class:`Sam2VersionWarning`) when sam2 ``found`` (default: the installed
    one) is not :data:`WRITTEN_FOR`; returns the message, or None when nothing was said.
    Never raises: a differing sam2 still runs."""
    message = version_message(installed_version() if found is None else found)
    if message is not None:
        warnings.warn(message, Sam2VersionWarning, stacklevel=2)
    return message


# SAM2ImagePredictor's image state (sam2/sam2_image_predictor.py, sam2 1.1.0)


def image_features(predictor: Any) -> dict[str, Any] | None:
    """``predictor._features``: what ``set_image`` computed, ``{"image_embed": 1x256x64x64,
    "high_res_feats": [1x32x256x256, 1x64x128x128]}`` tensors on the model's device
    (SAM2.1 at its 1024x1024 input; float32, or bfloat16 under autocast), or None when no
    image is set."""
    return predictor._features


def image_size(predictor: Any) -> tuple[int, int]:
    """``predictor._orig_hw[0]``: (height, width) in pixels of the image ``set_image`` was
    given (``_orig_hw`` is a list of one (H, W) after ``set_image``, as sam2 stores it)."""
    return predictor._orig_hw[0]


def set_image_state(predictor: Any, features: dict[str, Any], orig_hw: tuple[int, int]) -> None:
    """Leave ``predictor`` as ``SAM2ImagePredictor.set_image`` does at its end: ``_features``
    = ``features`` (the dict of :func:`image_features`, not copied), ``_orig_hw`` =
    ``[orig_hw]`` ((H, W) pixels) and ``_is_image_set`` = True. Call ``reset_predictor()``
    first, as ``set_image`` does."""
    predictor._features = features
    predictor._orig_hw = [orig_hw]
    predictor._is_image_set = True


def transforms(predictor: Any) -> Any:
    """``predictor._transforms``: the predictor's ``SAM2Transforms`` (sam2/utils/transforms.py;
    image to 3x1024x1024 float32, prompt coordinates, mask post-processing)."""
    return predictor._transforms


def set_transforms(predictor: Any, value: Any) -> None:
    """Replace ``predictor._transforms`` (what ``set_image``, ``_prep_prompts`` and
    ``_predict`` call) by ``value``, an object with ``SAM2Transforms``' interface."""
    predictor._transforms = value


# SAM2ImagePredictor.predict's two halves


def prep_prompts(predictor: Any, point_coords: Any, point_labels: Any, box: Any,
                 mask_input: Any) -> tuple[Any, Any, Any, Any]:
    """``predictor._prep_prompts(point_coords, point_labels, box, mask_input, True)``, the
    first half of ``SAM2ImagePredictor.predict``: the numpy prompts in pixels (coords Nx2 or
    BxNx2 float32 XY, labels N or BxN int32, box 4 or Bx4 XYXY, mask_input 1x256x256 float32
    logits; each may be None) as tensors on the model's device, coordinates normalised to
    the model's 1024x1024 input.

    Returns:
        (mask_input 1x1x256x256 float32, coords BxNx2 float32, labels BxN int32, box Bx2x2
        float32), None where the prompt had none.
    """
    return predictor._prep_prompts(point_coords, point_labels, box, mask_input, True)


def predict_tensors(predictor: Any, coords: Any, labels: Any, box: Any, mask_input: Any,
                    multimask_output: bool) -> tuple[Any, Any, Any]:
    """``predictor._predict(coords, labels, box, mask_input, multimask_output,
    return_logits=False)``, the second half of ``SAM2ImagePredictor.predict``, on the
    tensors of :func:`prep_prompts`.

    Returns:
        (masks BxCxHxW bool, thresholded at ``mask_threshold`` on the device; iou BxC;
        low-resolution logits BxCx256x256 clamped to [-32, 32]), tensors on the model's
        device (C: 3 with ``multimask_output``, else 1; float32 or bfloat16).
    """
    return predictor._predict(coords, labels, box, mask_input, multimask_output,
                              return_logits=False)


# SAM2AutomaticMaskGenerator (sam2/automatic_mask_generator.py, sam2 1.1.0)


def process_batch(generator: Any, points: Any, im_size: tuple[int, int], crop_box: list[int],
                  orig_size: tuple[int, int]) -> Any:
    """``generator._process_batch(points, im_size, crop_box, orig_size, normalize=True)``:
    the masks of one batch of ``points`` (Kx2 float64, (x, y) pixels in the crop) on the
    image set in ``generator.predictor`` (``im_size``: the crop's (H, W)), filtered and
    turned into RLEs in the (H, W) image ``orig_size``; ``crop_box`` is [x0, y0, x1, y1].
    Returns sam2's ``MaskData``."""
    return generator._process_batch(points, im_size, crop_box, orig_size, normalize=True)


# The model's parts (sam2/modeling/sam/prompt_encoder.py, mask_decoder.py, sam2 1.1.0)


def dense_pe(model: Any) -> Any:
    """``PromptEncoder.get_dense_pe`` of ``model.sam_prompt_encoder``, computed afresh
    (the class's method, not an instance override of :func:`replace_dense_pe`): the
    1x256x64x64 float32 positional encoding of the image-embedding grid, a permuted
    (non-contiguous) view."""
    encoder = model.sam_prompt_encoder
    return type(encoder).get_dense_pe(encoder)


def replace_dense_pe(model: Any, pe: Any) -> None:
    """Make ``model.sam_prompt_encoder.get_dense_pe()`` return ``pe`` (an instance
    attribute over the class's method), for every predictor over ``model``."""
    model.sam_prompt_encoder.get_dense_pe = lambda: pe


def mask_upscaling(model: Any) -> Any:
    """``model.sam_mask_decoder.output_upscaling``: the mask decoder's upscaling
    ``nn.Sequential`` (ConvTranspose2d 256->64, LayerNorm2d, GELU, ConvTranspose2d 64->32,
    GELU), which turns the 1x256x64x64 image embedding into 1x32x256x256."""
    return model.sam_mask_decoder.output_upscaling


# torch.compile's mark on the model (sam2_service's own attribute on a SAM2Base)


def compiled_parts(model: Any) -> dict[str, str] | None:
    """What :func:`mark_compiled` recorded on ``model`` (part -> torch.compile mode), or
    None when it was not compiled."""
    return getattr(model, "_sam2_service_compiled", None)


def mark_compiled(model: Any, parts: dict[str, str]) -> None:
    """Record on ``model`` that ``parts`` (model attribute -> torch.compile mode) have been
    compiled, so that they are not compiled twice."""
    model._sam2_service_compiled = parts


# SAM2VideoPredictor's inference state (sam2/sam2_video_predictor.py, sam2 1.1.0): a dict
# whose keys are sam2's; only the functions below read or write it.


def new_video_state(images: Any, height: int, width: int, device: Any,
                    storage_device: Any) -> dict[str, Any]:
    """The dict ``SAM2VideoPredictor.init_state`` returns, with ``images`` given instead of
    loaded by ``load_video_frames`` (any sequence whose item ``i`` is frame i as a 3x1024x1024
    float32 tensor, normalised as that loader does) and without its warm-up of frame 0.
    ``storage_device`` is ``init_state``'s ``offload_state_to_cpu`` choice: the CPU, or
    ``device``."""
    from collections import OrderedDict

    offload = str(storage_device) != str(device)
    return {
        "images": images, "num_frames": len(images), "offload_video_to_cpu": True,
        "offload_state_to_cpu": offload, "video_height": height, "video_width": width,
        "device": device, "storage_device": storage_device,
        "point_inputs_per_obj": {}, "mask_inputs_per_obj": {}, "cached_features": {},
        "constants": {}, "obj_id_to_idx": OrderedDict(), "obj_idx_to_id": OrderedDict(),
        "obj_ids": [], "output_dict_per_obj": {}, "temp_output_dict_per_obj": {},
        "frames_tracked_per_obj": {},
    }


def video_object_ids(state: dict[str, Any]) -> list[int]:
    """``state["obj_ids"]``: the object ids in SAM2's object-index order."""
    return list(state["obj_ids"])


def video_prompted_frames(state: dict[str, Any]) -> set[int]:
    """Every frame holding a point or mask prompt of any object (``point_inputs_per_obj``,
    ``mask_inputs_per_obj``)."""
    frames: set[int] = set()
    for key in ("point_inputs_per_obj", "mask_inputs_per_obj"):
        for per_frame in state[key].values():
            frames.update(per_frame)
    return frames


def video_object_score(state: dict[str, Any], obj_id: int, frame: int) -> float | None:
    """The object score logit (``object_score_logits``, > 0: the object is present) of
    ``obj_id`` on ``frame``, from its temporary or kept outputs; None when it has none."""
    idx = state["obj_id_to_idx"].get(obj_id)
    if idx is None:
        return None
    for store in (state["temp_output_dict_per_obj"][idx], state["output_dict_per_obj"][idx]):
        for key in ("cond_frame_outputs", "non_cond_frame_outputs"):
            out = store[key].get(frame)
            if out is not None and out.get("object_score_logits") is not None:
                return float(out["object_score_logits"].float().reshape(-1)[0])
    return None


def clear_video_features(state: dict[str, Any]) -> None:
    """Drop the image features SAM2 keeps of the last frame it encoded (``cached_features``)."""
    state["cached_features"] = {}


def prune_video_outputs(state: dict[str, Any], frame: int, reverse: bool, num_maskmem: int,
                        max_obj_ptrs: int) -> int:
    """Drop each object's non-conditioning outputs (``output_dict_per_obj[i]
    ["non_cond_frame_outputs"]``) that SAM2's memory (``SAM2Base.
    _prepare_memory_conditioned_features``) can no longer read, after ``frame`` was tracked
    in the direction ``reverse``: frames up to ``num_maskmem`` behind ``frame`` keep
    everything; up to ``max_obj_ptrs`` behind, only their object pointer (``obj_ptr``); frames
    within ``max_obj_ptrs`` of one of the object's conditioning frames keep everything (a later
    pass from that frame, either way, reads them); the rest go. Returns the outputs dropped
    or thinned."""
    changed = 0
    for out_dict in state["output_dict_per_obj"].values():
        cond = list(out_dict["cond_frame_outputs"])
        non_cond = out_dict["non_cond_frame_outputs"]
        for g in list(non_cond):
            if any(abs(g - c) <= max_obj_ptrs for c in cond):
                continue
            behind = (g - frame) if reverse else (frame - g)
            if 0 <= behind <= num_maskmem:
                continue
            if 0 <= behind <= max_obj_ptrs:
                out = non_cond[g]
                if out.get("maskmem_features") is not None or out.get("pred_masks") is not None:
                    non_cond[g] = {"obj_ptr": out["obj_ptr"], "maskmem_features": None,
                                   "maskmem_pos_enc": None, "pred_masks": None,
                                   "object_score_logits": out["object_score_logits"]}
                    changed += 1
                continue
            del non_cond[g]
            changed += 1
    return changed


def drop_thinned_outputs(state: dict[str, Any], frame: int) -> None:
    """Remove the outputs :func:`prune_video_outputs` thinned to an object pointer on
    ``frame`` (before a prompt there: SAM2 reads a kept output's ``pred_masks`` on the frame it
    prompts)."""
    for out_dict in state["output_dict_per_obj"].values():
        out = out_dict["non_cond_frame_outputs"].get(frame)
        if out is not None and out.get("pred_masks") is None:
            del out_dict["non_cond_frame_outputs"][frame]


def set_video_frame_count(state: dict[str, Any], count: int) -> None:
    """``state["num_frames"]`` = ``count`` (after frames were added to ``state["images"]``)."""
    state["num_frames"] = count


def quiet_video_progress() -> None:
    """Make ``SAM2VideoPredictor.propagate_in_video``'s tqdm progress bar (a name in
    ``sam2.sam2_video_predictor``) a plain iteration: the daemon logs its own progress."""
    import sam2.sam2_video_predictor as module

    module.tqdm = lambda iterable, *args, **kwargs: iterable


def video_state_bytes(state: dict[str, Any]) -> int:
    """Bytes of the tensors each object's outputs hold (masks, memory features), counted
    once per tensor."""
    seen: set[int] = set()
    total = 0
    for store_key in ("output_dict_per_obj", "temp_output_dict_per_obj"):
        for out_dict in state[store_key].values():
            for outs in out_dict.values():
                for out in outs.values():
                    for key in ("maskmem_features", "pred_masks", "obj_ptr"):
                        t = out.get(key)
                        if t is not None and id(t) not in seen:
                            seen.add(id(t))
                            total += t.numel() * t.element_size()
    return total


check_version()
