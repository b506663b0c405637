"""SAM2's mask decoder for many single-point prompts on one image, reassociated.

The automatic mask generator runs SAM2's ``MaskDecoder`` (sam2 1.1.0,
``modeling/sam/mask_decoder.py`` and ``transformer.py``) on a grid of one-point prompts.
SAM2 copies the 256x64x64 image embedding and its positional encoding once per prompt and
projects each copy, although half of that work does not depend on the prompt. This module
computes the same function with the products reordered (float32 rounding aside: logits
agree to ~1e-6, the tests compare with SAM2's decoder):

* Layer 1 of the two-way transformer sees the image embedding (plus the no-mask dense
  embedding) unchanged by the prompt: its token-to-image keys and values and its
  image-to-token queries are projected once per image (:class:`ImageTensors`).
* Tokens attending to the image (layer 2 and the final attention): with few tokens (8) and
  many image positions (4096), ``softmax(q Wk (x + pe)^T) (x Wv^T + b)`` is computed as
  ``softmax((q Wk) (x + pe)^T) x`` then ``Wv^T``: the projections move to the token side
  (the key bias adds a constant per row, which softmax ignores; value weights sum to 1).
* The image attending to tokens: ``out_proj(softmax(.) v)`` is ``softmax(.) (v out_proj)``
  per head, a product with 64 columns (8 heads x 8 tokens) instead of two with 128.
* The upscaling (two stride-2 ConvTranspose2d, LayerNorm2d, GELU, high-resolution features)
  is per pixel, so it runs as matrix products in a sub-pixel order and only the three
  output masks are put back in raster order; and only for the points whose predicted IoU
  lets a mask through (:meth:`PointDecoder.masks` takes the points to upscale): the IoU
  prediction comes from the tokens alone.

Blocking torch code for the inference thread; float32 (bfloat16 autocast would round the
reordered products differently from SAM2's, so the daemon uses this only in float32).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..inference import sam2_compat


@dataclass
class Tokens:
    """The transformer's output for B prompts: ``queries`` (B x T x 256 tokens: object
    score, IoU, 4 mask tokens, the point and the padding point) and ``keys`` (B x 4096 x
    256, the image positions), as ``TwoWayTransformer.forward`` returns them; ``iou``
    (B x 3, float32) the multimask IoU predictions (masks 1..3, as with
    ``multimask_output=True``)."""

    queries: Any
    keys: Any
    iou: Any


class ImageTensors:
    """The prompt-independent tensors of one image embedding (about 14 MiB).

    Args:
        model: the SAM2Base model (its ``sam_mask_decoder``, ``sam_prompt_encoder``).
        features: ``{"image_embed": 1x256x64x64, "high_res_feats": [1x32x256x256,
            1x64x128x128]}`` (SAM2ImagePredictor's ``_features``).
        pe: the dense positional encoding, 1x256x64x64 (``get_dense_pe()``).
    """

    def __init__(self, model: Any, features: dict[str, Any], pe: Any) -> None:
        dec = model.sam_mask_decoder
        layer = dec.transformer.layers[0]
        t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
        self.heads = t2i.num_heads
        dense = model.sam_prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        src = features["image_embed"] + dense
        self.h, self.w = src.shape[-2:]
        #: 1 x N x C image embedding plus the no-mask embedding, and its positional encoding.
        self.src = src.flatten(2).transpose(1, 2).contiguous()
        self.pe = pe.flatten(2).transpose(1, 2).contiguous()
        with_pe = self.src + self.pe
        #: Layer 1's projections of the image side, heads x N x head_dim.
        self.k1 = _split(t2i.k_proj(with_pe)[0], self.heads)
        self.v1 = _split(t2i.v_proj(self.src)[0], self.heads)
        self.q1 = _split(i2t.q_proj(with_pe)[0], self.heads)
        dc1, _, _, dc2, _ = sam2_compat.mask_upscaling(model)
        feat_s0, feat_s1 = features["high_res_feats"]
        h, w = self.h, self.w
        # ConvTranspose2d with stride == kernel == 2: out[o, 2i+a, 2j+b] = x[:, i, j] . W[:, o, a, b]
        self.w1 = dc1.weight.permute(0, 2, 3, 1).reshape(dc1.weight.shape[0], -1).contiguous()
        self.w2 = dc2.weight.permute(0, 2, 3, 1).reshape(dc2.weight.shape[0], -1).contiguous()
        c1, c0 = feat_s1.shape[1], feat_s0.shape[1]
        # feat_s1 pixel (2i+a, 2j+b) at row (i, j), columns (a, b, channel); plus dc1's bias
        f1 = feat_s1[0].view(c1, h, 2, w, 2).permute(1, 3, 2, 4, 0).reshape(1, h * w, 4 * c1)
        self.f1 = (f1 + dc1.bias.repeat(4)).contiguous()
        # feat_s0 pixel (4i+2a+c, 4j+2b+d) at row (i, j, a, b), columns (c, d, channel)
        f0 = feat_s0[0].view(c0, h, 2, 2, w, 2, 2).permute(1, 4, 2, 5, 3, 6, 0)
        self.f0 = (f0.reshape(1, h * w * 4, 4 * c0) + dc2.bias.repeat(4)).contiguous()


def _split(x: Any, heads: int) -> Any:
    """N x (heads*d) -> heads x N x d, contiguous."""
    return x.view(x.shape[0], heads, -1).transpose(0, 1).contiguous()


def _softmax_tokens(scores: Any) -> Any:
    """Softmax over dim -2 (the few tokens) of ``... x T x N``, in place, as elementwise
    passes over contiguous rows of N (torch's softmax over a last dim of 8 is slow)."""
    e = scores.sub_(scores.amax(-2, keepdim=True)).exp_()
    return e.div_(e.sum(-2, keepdim=True))


def _token_values(attn: Any, queries: Any) -> Any:
    """B x (heads*T) x C: each token's value through its head's slice of ``out_proj``, plus
    ``out_proj``'s bias / heads (each head's attention weights sum to 1 over the tokens,
    so the heads add the bias once)."""
    b, t, _ = queries.shape
    heads = attn.num_heads
    v = attn.v_proj(queries).view(b, t, heads, -1).transpose(1, 2)  # B x H x T x d
    wo = attn.out_proj.weight.t().reshape(heads, v.shape[-1], -1)   # H x d x C
    return (v @ wo + attn.out_proj.bias / heads).reshape(b, heads * t, -1)


def _tokens_to_image(attn: Any, q_in: Any, keys_pe: Any, keys: Any) -> Any:
    """``attn(q=q_in, k=keys_pe, v=keys)`` (SAM2's ``Attention``) for T tokens against N
    image positions, with the key and value projections moved to the token side."""
    b, t, _ = q_in.shape
    heads = attn.num_heads
    d = attn.internal_dim // heads
    q = attn.q_proj(q_in).view(b, t, heads, d).transpose(1, 2)       # B x H x T x d
    qk = (q @ attn.k_proj.weight.view(heads, d, -1)).mul_(1.0 / math.sqrt(d))
    weights = (qk.reshape(b, heads * t, -1) @ keys_pe.transpose(1, 2)).softmax(-1)
    mixed = (weights @ keys).view(b, heads, t, -1)                    # B x H x T x C
    out = mixed @ attn.v_proj.weight.view(heads, d, -1).transpose(1, 2)
    out = out + attn.v_proj.bias.view(heads, 1, d)
    return attn.out_proj(out.transpose(1, 2).reshape(b, t, heads * d))


class PointDecoder:
    """SAM2's prompt encoder and mask decoder for B one-point prompts on one image.

    Args:
        model: the SAM2Base model, float32, in eval mode.
        image: the image's :class:`ImageTensors`.

    Raises:
        ValueError: the decoder is not SAM2.1's (no object-score token, no
            high-resolution features, not 4 mask tokens).
    """

    def __init__(self, model: Any, image: ImageTensors) -> None:
        dec = model.sam_mask_decoder
        if not (dec.pred_obj_scores and dec.use_high_res_features
                and dec.num_mask_tokens == 4):
            raise ValueError("the fast point decoder mirrors SAM2.1's mask decoder "
                             "(object-score token, high-resolution features, 4 mask tokens)")
        self.model = model
        self.dec = model.sam_mask_decoder
        self.image = image

    def tokens(self, coords: Any, labels: Any) -> Tokens:
        """Run the two-way transformer.

        Args:
            coords: B x 1 x 2 float32 point coordinates (x, y) in the model's 1024x1024
                input frame (``SAM2Transforms.transform_coords``).
            labels: B x 1 int32 point labels (1 foreground).
        """
        import torch

        sparse, _ = self.model.sam_prompt_encoder(points=(coords, labels), boxes=None,
                                                  masks=None)
        dec = self.dec
        out = torch.cat([dec.obj_score_token.weight, dec.iou_token.weight,
                         dec.mask_tokens.weight], 0)
        tokens = torch.cat((out.expand(sparse.shape[0], -1, -1), sparse), 1)
        first, second = dec.transformer.layers
        queries, keys = self._layer1(first, tokens)
        queries, keys = self._layer2(second, queries, keys, tokens)
        final = dec.transformer.final_attn_token_to_image
        queries = queries + _tokens_to_image(final, queries + tokens, keys + self.image.pe, keys)
        queries = dec.transformer.norm_final_attn(queries)
        iou = dec.iou_prediction_head(queries[:, 1])[:, 1:]
        return Tokens(queries, keys, iou)

    def _layer1(self, layer: Any, tokens: Any) -> tuple[Any, Any]:
        """``TwoWayAttentionBlock.forward`` with ``skip_first_layer_pe``, the image side
        projected once (:class:`ImageTensors`)."""
        import torch

        im = self.image
        b, t, _ = tokens.shape
        heads = im.heads
        queries = layer.norm1(layer.self_attn(q=tokens, k=tokens, v=tokens))
        attn = layer.cross_attn_token_to_image
        d = attn.internal_dim // heads
        q = attn.q_proj(queries + tokens).view(b, t, heads, d).permute(2, 0, 1, 3)
        weights = (q.reshape(heads, b * t, d) @ im.k1.transpose(1, 2)).mul_(1.0 / math.sqrt(d))
        out = (weights.softmax(-1) @ im.v1).view(heads, b, t, d).permute(1, 2, 0, 3)
        queries = layer.norm2(queries + attn.out_proj(out.reshape(b, t, heads * d)))
        queries = layer.norm3(queries + layer.mlp(queries))
        attn = layer.cross_attn_image_to_token
        k = attn.k_proj(queries + tokens).view(b, t, heads, d).permute(2, 0, 1, 3)
        scores = (k.reshape(heads, b * t, d) @ im.q1.transpose(1, 2)).mul_(1.0 / math.sqrt(d))
        weights = _softmax_tokens(scores.view(heads, b, t, -1)).transpose(0, 1)
        weights = weights.reshape(b, heads * t, -1)
        keys = torch.baddbmm(im.src.expand(b, -1, -1), weights.transpose(1, 2),
                             _token_values(attn, queries))
        return queries, layer.norm4(keys)

    def _layer2(self, layer: Any, queries: Any, keys: Any, tokens: Any) -> tuple[Any, Any]:
        """``TwoWayAttentionBlock.forward`` with positional encodings, reassociated."""
        import torch

        b, t, _ = tokens.shape
        heads = self.image.heads
        q = queries + tokens
        queries = layer.norm1(queries + layer.self_attn(q=q, k=q, v=queries))
        keys_pe = keys + self.image.pe
        queries = layer.norm2(queries + _tokens_to_image(layer.cross_attn_token_to_image,
                                                         queries + tokens, keys_pe, keys))
        queries = layer.norm3(queries + layer.mlp(queries))
        attn = layer.cross_attn_image_to_token
        d = attn.internal_dim // heads
        k = attn.k_proj(queries + tokens).view(b, t, heads, d).transpose(1, 2)  # B x H x T x d
        scale = 1.0 / math.sqrt(d)
        # score[t, n] = (Wq_h^T k_t) . (x + pe)[n] + b_q_h . k_t
        qk = (k @ attn.q_proj.weight.view(heads, d, -1)).mul_(scale).reshape(b, heads * t, -1)
        bias = (k @ attn.q_proj.bias.view(heads, d, 1)).mul_(scale).reshape(b, heads * t, 1)
        scores = torch.baddbmm(bias, qk, keys_pe.transpose(1, 2))
        weights = _softmax_tokens(scores.view(b, heads, t, -1)).view(b, heads * t, -1)
        keys = torch.baddbmm(keys, weights.transpose(1, 2), _token_values(attn, queries))
        return queries, layer.norm4(keys)

    def masks(self, tokens: Tokens, index: Any) -> Any:
        """Low-resolution mask logits of prompts ``index`` (a 1-D int64 tensor into
        ``tokens``'s B): K x 3 x 256 x 256 float32, masks 1..3 of ``MaskDecoder.forward``
        with ``multimask_output=True`` (the 4x4-upscaled embedding times each mask
        token's hypernetwork output)."""
        import torch

        im = self.image
        dec = self.dec
        keys = tokens.keys[index]
        mask_tokens = tokens.queries[index, 2:2 + dec.num_mask_tokens]
        hyper = torch.stack([mlp(mask_tokens[:, i])
                             for i, mlp in enumerate(dec.output_hypernetworks_mlps)], 1)
        _, ln1, act1, _, act2 = sam2_compat.mask_upscaling(self.model)
        k, n = keys.shape[0], im.h * im.w
        y = torch.baddbmm(im.f1, keys, im.w1.expand(k, -1, -1)).view(k, n * 4, -1)
        y = act1(torch.nn.functional.layer_norm(y, (y.shape[-1],), ln1.weight, ln1.bias,
                                                ln1.eps))
        z = act2(torch.baddbmm(im.f0, y.view(k, n * 4, -1), im.w2.expand(k, -1, -1)))
        m = z.view(k, n * 16, -1) @ hyper[:, 1:].transpose(1, 2)  # K x (i,j,a,b,c,d) x 3
        m = m.view(k, im.h, im.w, 2, 2, 2, 2, 3).permute(0, 7, 1, 3, 5, 2, 4, 6)
        return m.reshape(k, 3, im.h * 4, im.w * 4)
