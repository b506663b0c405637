"""SAM2's mask decoder for a batch of point prompts on one image, image side computed once.

``SAM2ImagePredictor._predict`` (sam2 1.1.0) runs ``MaskDecoder.predict_masks`` on a batch
of B prompts by first copying the image embedding B times (``repeat_interleave``), so that
the two-way transformer's first layer projects the same 4096 image tokens B times: its
token-to-image keys and values and its image-to-token queries, and the positional encoding
added to them, are identical for every prompt, since until that layer's last step the image
tokens depend on the image only (the dense prompt embedding without a mask input is one
learned vector for all). :func:`decode_points` computes those once and lets the B prompts'
tokens attend to them together; everything after (the image tokens, once the prompts have
updated them, the second layer, the final attention, the upscaling and the hypernetworks)
runs per prompt, with the model's own modules, as in sam2. The only differences from
sam2's are float rounding (different matrix shapes, broadcasting instead of copies), which
tests/unit/test_auto_fast.py bounds against the model's own ``sam_mask_decoder``.

:func:`sam2_decode` is ``_predict`` itself minus its upsampling of the logits to the image
size, for a compiled decoder (``--compile``), whose compiled ``forward`` must be the one
called. torch is imported lazily; private sam2 state is read through
:mod:`~sam2_service.daemon.inference.sam2_compat`.
"""

from __future__ import annotations

from typing import Any

from ..inference import sam2_compat


def _heads(x: Any, heads: int) -> Any:
    """BxNxC -> BxHxNx(C/H): ``Attention._separate_heads`` (sam2/modeling/sam/transformer.py)."""
    b, n, c = x.shape
    return x.reshape(b, n, heads, c // heads).transpose(1, 2)


def _unheads(x: Any) -> Any:
    """BxHxNxD -> BxNx(H*D): ``Attention._recombine_heads``."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def _tokens_to_shared_image(attn: Any, q: Any, k: Any, v: Any) -> Any:
    """``Attention.forward(q, k, v)`` for BxTxC queries over 1xNxC keys and values shared by
    the batch: the B*T queries attend as one batch (each query's softmax is over the keys
    alone, so this is the same attention); returns BxTxC."""
    import torch.nn.functional as F

    b, t, _ = q.shape
    h = attn.num_heads
    qh = _heads(attn.q_proj(q).reshape(1, b * t, -1), h)  # 1xHx(B*T)xD
    kh, vh = _heads(attn.k_proj(k), h), _heads(attn.v_proj(v), h)  # 1xHxNxD
    out = F.scaled_dot_product_attention(qh, kh, vh)
    return attn.out_proj(_unheads(out).reshape(b, t, -1))


def _shared_image_to_tokens(attn: Any, q: Any, k: Any, v: Any) -> Any:
    """``Attention.forward(q, k, v)`` for 1xNxC image queries shared by the batch over BxTxC
    keys and values: the queries are projected once; returns BxNxC."""
    import torch.nn.functional as F

    b = k.shape[0]
    h = attn.num_heads
    qh = _heads(attn.q_proj(q), h)  # 1xHxNxD
    kh, vh = _heads(attn.k_proj(k), h), _heads(attn.v_proj(v), h)  # BxHxTxD
    out = F.scaled_dot_product_attention(qh.expand(b, -1, -1, -1), kh, vh)
    return attn.out_proj(_unheads(out))


def _first_layer(layer: Any, tokens: Any, keys: Any, pe: Any) -> tuple[Any, Any]:
    """``TwoWayAttentionBlock.forward`` of the first layer (``skip_first_layer_pe``) with
    the image side shared: ``tokens`` BxTxC, ``keys`` and ``pe`` 1xNxC; returns (queries
    BxTxC, keys BxNxC)."""
    queries = layer.norm1(layer.self_attn(q=tokens, k=tokens, v=tokens))
    k = keys + pe
    queries = layer.norm2(queries + _tokens_to_shared_image(
        layer.cross_attn_token_to_image, queries + tokens, k, keys))
    queries = layer.norm3(queries + layer.mlp(queries))
    out = _shared_image_to_tokens(layer.cross_attn_image_to_token, k, queries + tokens, queries)
    return queries, layer.norm4(out.add_(keys))  # keys + out, without a second BxNxC


def _layer(layer: Any, queries: Any, tokens: Any, keys: Any, pe: Any) -> tuple[Any, Any]:
    """``TwoWayAttentionBlock.forward`` of a later layer (BxTxC queries, BxNxC keys; ``pe``
    1xNxC, broadcast instead of repeated; ``keys + pe`` computed once for both attentions)."""
    q = queries + tokens
    queries = layer.norm1(queries + layer.self_attn(q=q, k=q, v=queries))
    k = keys + pe
    queries = layer.norm2(queries + layer.cross_attn_token_to_image(q=queries + tokens, k=k,
                                                                    v=keys))
    queries = layer.norm3(queries + layer.mlp(queries))
    out = layer.cross_attn_image_to_token(q=k, k=queries + tokens, v=queries)
    return queries, layer.norm4(out.add_(keys))


def _transformer(transformer: Any, src: Any, pe: Any, tokens: Any) -> tuple[Any, Any]:
    """``TwoWayTransformer.forward`` on 1xCxHxW ``src`` and ``pe`` shared by BxTxC
    ``tokens``; returns (queries BxTxC, keys BxNxC, N = H*W)."""
    keys = src.flatten(2).permute(0, 2, 1)
    pe = pe.flatten(2).permute(0, 2, 1)
    first, *rest = transformer.layers
    queries, keys = _first_layer(first, tokens, keys, pe)
    for layer in rest:
        queries, keys = _layer(layer, queries, tokens, keys, pe)
    attn = transformer.final_attn_token_to_image(q=queries + tokens, k=keys + pe, v=keys)
    return transformer.norm_final_attn(queries + attn), keys


def _layer_norm_2d(ln: Any, x: Any) -> Any:
    """sam2's ``LayerNorm2d`` (sam2/modeling/sam2_utils.py: mean and biased variance over
    the channels of BxCxHxW, then ``weight`` and ``bias``) as one ``F.layer_norm`` over the
    channels-last view: the same normalisation in one pass instead of seven (the fast path's
    channels-last upscaling hands it channels-last memory, so the view needs no copy)."""
    import torch.nn.functional as F

    if type(ln).__name__ != "LayerNorm2d":
        return ln(x)
    y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), ln.weight, ln.bias, ln.eps)
    return y.permute(0, 3, 1, 2)


def _predict_masks(dec: Any, embed: Any, pe: Any, sparse: Any, dense: Any,
                   high_res: list[Any]) -> tuple[Any, Any]:
    """``MaskDecoder.predict_masks`` (sam2/modeling/sam/mask_decoder.py) for B prompts on one
    image (``repeat_image``): ``embed`` and ``pe`` 1x256x64x64, ``sparse`` BxTx256, ``dense``
    Bx256x64x64 (identical rows: no mask input), ``high_res`` [1x32x256x256, 1x64x128x128].
    Returns (logits Bx4x256x256, iou Bx4)."""
    import torch

    parts = [dec.obj_score_token.weight] if dec.pred_obj_scores else []
    s = len(parts)
    out_tokens = torch.cat([*parts, dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
    tokens = torch.cat((out_tokens.unsqueeze(0).expand(sparse.size(0), -1, -1), sparse), dim=1)
    b, c, h, w = sparse.size(0), *embed.shape[1:]
    hs, keys = _transformer(dec.transformer, embed + dense[:1], pe, tokens)
    src = keys.transpose(1, 2).view(b, c, h, w)
    dc1, ln1, act1, dc2, act2 = dec.output_upscaling
    feat_s0, feat_s1 = high_res
    up = act2(dc2(act1(_layer_norm_2d(ln1, dc1(src).add_(feat_s1)))).add_(feat_s0))
    mask_out = hs[:, s + 1:s + 1 + dec.num_mask_tokens, :]
    hyper = torch.stack([mlp(mask_out[:, i, :]) for i, mlp in
                         enumerate(dec.output_hypernetworks_mlps)], dim=1)
    b, c, h, w = up.shape
    masks = (hyper @ up.view(b, c, h * w)).view(b, -1, h, w)
    return masks, dec.iou_prediction_head(hs[:, s, :])


def decode_points(predictor: Any, coords: Any, labels: Any, multimask: bool) -> tuple[Any, Any]:
    """The low-resolution masks ``SAM2ImagePredictor._predict`` computes for B point prompts
    (``_predict(coords, labels, multimask_output=multimask)``'s third output, unclamped,
    and its second), with the image side of the decoder's first layer computed once.

    Args:
        predictor: a SAM2ImagePredictor with an image set (its ``_features``).
        coords: BxKx2 float32, (x, y) in the model's 1024x1024 input frame.
        labels: BxK int32 (1 foreground, 0 background).
        multimask: SAM2's ``multimask_output``.

    Returns:
        (logits BxCx256x256, float32 or bfloat16 under autocast; iou BxC), C 3 with
        ``multimask``, else 1; on the model's device.
    """
    model = predictor.model
    if not multimask and model.sam_mask_decoder.dynamic_multimask_via_stability:
        return sam2_decode(predictor, coords, labels, multimask)  # its choice: sam2's own
    feats = sam2_compat.image_features(predictor)
    sparse, dense = model.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=None)
    masks, iou = _predict_masks(model.sam_mask_decoder, feats["image_embed"][-1].unsqueeze(0),
                                sam2_compat.prompt_pe(model), sparse, dense,
                                [f[-1].unsqueeze(0) for f in feats["high_res_feats"]])
    keep = slice(1, None) if multimask else slice(0, 1)  # MaskDecoder.forward's choice
    return masks[:, keep], iou[:, keep]


def sam2_decode(predictor: Any, coords: Any, labels: Any, multimask: bool) -> tuple[Any, Any]:
    """``SAM2ImagePredictor._predict(coords, labels, multimask_output=multimask)`` (sam2
    1.1.0) up to the mask decoder: the model's own prompt encoder and ``sam_mask_decoder``
    (compiled ones when ``--compile`` compiled them), without the upsampling of every
    logit map to the image size. Arguments and returns as :func:`decode_points`."""
    model = predictor.model
    feats = sam2_compat.image_features(predictor)
    sparse, dense = model.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=None)
    masks, iou, _, _ = model.sam_mask_decoder(
        image_embeddings=feats["image_embed"][-1].unsqueeze(0),
        image_pe=sam2_compat.prompt_pe(model), sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense, multimask_output=multimask,
        repeat_image=coords.shape[0] > 1,
        high_res_features=[f[-1].unsqueeze(0) for f in feats["high_res_feats"]])
    return masks, iou
