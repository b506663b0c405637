"""How much memory one request may use, and how large its reply may be, checked before the work.

Every input of a request is bounded on its own (pixels, boxes, points, grid points); their
product is not: a 6000x6000 image with 16 boxes needs 16 full-size mask logits at once. This
module estimates a request's working memory from pixels x masks, before anything is decoded
or encoded, and refuses a request above ``--max-request-mb`` (:class:`RequestTooLarge`); an
``auto`` request is instead run in smaller steps (fewer grid points at once) so that it fits.
A reply whose size can be known up front (raw masks) is refused above ``--max-reply-mb``
before the work (:class:`ReplyTooLarge`); RLE and PNG replies are counted mask by mask as they
are encoded and stopped there (:class:`ReplyMeter`), so no oversized reply is ever built.

The per-pixel constants are of the arrays SAM2 makes (sam2 1.1.0) and were checked against the
daemon's resident memory (docs/protocol.md, "Memory and reply bounds"): a 6000x6000 image took
4.8 bytes per pixel per mask for 16 boxes and 4.1 for an ``auto`` step of 48 masks. No torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...wire.auto import AutoRequest
from ...wire.errors import ReplyTooLarge, RequestTooLarge
from ...wire.schema import SegmentRequest

#: The decoded image (HxWx3 uint8, 3 bytes) and SAM2's float32 copy of it before the resize to
#: the model's 1024x1024 input (``SAM2Transforms``' ``ToTensor``, 12 bytes), per pixel.
IMAGE_BYTES_PER_PIXEL = 15
#: One mask at the image's size: the float32 mask logits upscaled from 256x256
#: (``SAM2Transforms.postprocess_masks``, 4 bytes) and its bool threshold (1 byte), per pixel.
MASK_BYTES_PER_PIXEL = 5
#: What stitching tiled ``auto`` label maps holds besides the masks: an int64 map of the
#: whole image and an int64 copy of each tile's (``labels.stitch_tiles``), per pixel.
STITCH_BYTES_PER_PIXEL = 16


def raw_mask_chars(pixels: int) -> int:
    """Characters of one raw mask on the wire: base64 of ``pixels`` bytes (one per pixel)."""
    return 4 * ((pixels + 2) // 3)


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


@dataclass(frozen=True)
class RequestBudget:
    """The two bounds, in bytes (``ServiceConfig.max_request_bytes``, ``max_reply_bytes``).

    A request whose ``width`` x ``height`` is above ``max_image_pixels`` is not checked here:
    no image it may name can be that large, so the image checks refuse it (``image_too_large``
    from the header, or ``invalid_request`` for a size that is not the image's) before any
    model work, with the more useful message.
    """

    max_request_bytes: int
    max_reply_bytes: int
    max_image_pixels: int = 2**62

    def check_segment(self, request: SegmentRequest) -> None:
        """Refuse ``request`` before any work if its masks would not fit.

        Its image is ``request.width`` x ``request.height`` pixels (checked against the
        decoded image later); SAM2 predicts one mask per box of ``boxes``, three for
        ``multimask`` or a lone point, else one; the top-level mask of ``boxes`` is their
        union, one more.

        Raises:
            RequestTooLarge: the estimate (:data:`IMAGE_BYTES_PER_PIXEL` +
                :data:`MASK_BYTES_PER_PIXEL` x masks, per pixel) is above the bound.
            ReplyTooLarge: a raw reply (``maskEncoding`` raw, or the plain reply) would be
                above ``max_reply_bytes``.
        """
        pixels = request.width * request.height
        if pixels > self.max_image_pixels:
            return
        masks = len(request.boxes) or (3 if request.multimask or _one_point(request) else 1)
        masks += 1 if request.boxes else 0
        need = pixels * (IMAGE_BYTES_PER_PIXEL + MASK_BYTES_PER_PIXEL * masks)
        field = "boxes" if request.boxes else None
        if need > self.max_request_bytes:
            raise RequestTooLarge(
                f"{masks} masks of {request.width}x{request.height} pixels need about "
                f"{_mib(need)} of working memory, more than --max-request-mb "
                f"({_mib(self.max_request_bytes)}): send fewer boxes or a smaller image",
                field=field)
        if request.mask_encoding == "raw":
            sent = len(request.boxes) + 1 if request.boxes else (
                1 + (3 if request.multimask else 0) if request.extended else 1)
            self.check_reply(sent * raw_mask_chars(pixels), field=field,
                             hint="ask for maskEncoding rle or png, or send fewer boxes")

    def auto_step_points(self, request: AutoRequest, step_points: int) -> int:
        """The most grid points an ``auto`` step of ``request`` may run so that its masks
        fit the bound: ``step_points`` (``--auto-step-points``, or the request's
        ``pointsPerBatch`` if smaller) or fewer.

        Each point gives 3 masks with ``multimask_output``, else 1, at the size of a tile
        (or the whole image), uncropped to it as SAM2's generator does.

        Raises:
            RequestTooLarge: not even one grid point per step fits.
            ReplyTooLarge: the label map alone (uint16, base64) is above ``max_reply_bytes``.
        """
        h, w = request.height, request.width
        if h * w > self.max_image_pixels:
            return step_points
        self.check_reply(raw_mask_chars(2 * h * w), hint="send a smaller image")
        th, tw = request.tile_shape or (h, w)
        tile = min(h, th + 2 * request.halo[0]) * min(w, tw + 2 * request.halo[1])
        fixed = 3 * h * w + 12 * tile + (STITCH_BYTES_PER_PIXEL if request.tile_shape else 2) * h * w
        per_point = MASK_BYTES_PER_PIXEL * tile * (3 if request.settings.multimask_output else 1)
        fits = (self.max_request_bytes - fixed) // per_point
        if fits < 1:
            raise RequestTooLarge(
                f"one grid point of an auto request on {w}x{h} pixels needs about "
                f"{_mib(fixed + per_point)} of working memory, more than --max-request-mb "
                f"({_mib(self.max_request_bytes)}): tile the image (tileShape) or send a "
                "smaller one", field="tileShape")
        return int(min(step_points, request.settings.points_per_batch, fits))

    def check_reply(self, chars: int, *, field: str | None = None, hint: str = "") -> None:
        """Raise :class:`ReplyTooLarge` if a reply of ``chars`` characters (bytes: the
        reply's JSON is ASCII but for the requestId) is above the bound."""
        if chars > self.max_reply_bytes:
            raise ReplyTooLarge(
                f"the reply would be about {_mib(chars)}, more than --max-reply-mb "
                f"({_mib(self.max_reply_bytes)})" + (f": {hint}" if hint else ""), field=field)

    def meter(self) -> "ReplyMeter":
        """A fresh :class:`ReplyMeter` on this bound."""
        return ReplyMeter(self)


def _one_point(request: SegmentRequest) -> bool:
    """The daemon asks SAM2 for 3 masks for a lone point without a box (prompts.validate)."""
    return request.bbox is None and len(request.points) == 1


class ReplyMeter:
    """Counts a reply's characters as its masks are encoded, stopping at the bound."""

    def __init__(self, budget: RequestBudget) -> None:
        self.budget = budget
        self.chars = 0

    def add(self, chars: int) -> None:
        """Add ``chars``; raises :class:`ReplyTooLarge` once the total is above the bound."""
        self.chars += chars
        self.budget.check_reply(self.chars, hint="ask for fewer masks or a smaller image")


def encoded_chars(value: object) -> int:
    """An upper bound on the JSON characters of an encoded mask: a base64 string's length,
    or for RLE (``{"size": [h, w], "counts": [...]}``) 1 + the digits of its largest count
    per count, plus the keys."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict) and isinstance(value.get("counts"), list):
        counts = value["counts"]
        return 40 + len(counts) * (len(str(max(counts, default=0))) + 1)
    return len(str(value))
