"""Fit arithmetic in whole pixels: which source region goes where in a ``--size`` target.

Pure integer functions (no floating point, no Pillow), used by :mod:`pipeline.convert.imaging`
and checked over every source size 1..400 x 1..400 by ``tests/test_fit.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FITS", "FitPlan", "draft_size", "fit_plan"]

FITS = ("center-crop", "resize", "pad")
"""The ``--fit`` modes."""


@dataclass(frozen=True)
class FitPlan:
    """Where a ``fit`` takes its pixels from and where it puts them, in whole pixels.

    The source region ``box = (left, top, right, bottom)`` is resized to ``resized = (height,
    width)`` and pasted at ``offset = (top, left)`` of the target (black elsewhere; only ``pad``
    leaves borders).
    """

    box: tuple[int, int, int, int]
    resized: tuple[int, int]
    offset: tuple[int, int]


def _round_div(num: int, den: int) -> int:
    """``round(num / den)`` for non-negative integers, halves rounded up; exact."""
    return (2 * num + den) // (2 * den)


def fit_plan(source: tuple[int, int], size: tuple[int, int], fit: str = "center-crop") -> FitPlan:
    """The integer arithmetic of :func:`fit_image`: which source region goes where in the target.

    Every value is an integer computed exactly (no floating point), so every source size and
    every target size gives a box inside the source and an output of exactly ``size``:

    * ``resize``: the whole source, stretched to ``size``.
    * ``center-crop``: the largest centered region of the source with the target's aspect ratio,
      its short side rounded to the nearest whole pixel (at least 1), resized to ``size``.
    * ``pad``: the whole source, resized so that its long side fills the target and its short
      side is rounded to the nearest whole pixel (at least 1), centered on black.

    Centering puts the odd pixel, if any, on the right/bottom.

    Args:
        source: ``(height, width)`` of the image, both >= 1.
        size: Target ``(height, width)``, both >= 1.
        fit: ``"center-crop"``, ``"resize"`` or ``"pad"``. Defaults to ``"center-crop"``.

    Raises:
        ValueError: A size is not positive, or ``fit`` is unknown.
    """
    h, w = (int(v) for v in source)
    height, width = (int(v) for v in size)
    if min(h, w, height, width) < 1:
        raise ValueError(f"source and target sizes must be >= 1, got source {source} and size {size}")
    whole = (0, 0, w, h)
    if fit == "resize":
        return FitPlan(whole, (height, width), (0, 0))
    # The target is relatively wider than the source when width / height >= w / h.
    wider = width * h >= height * w
    if fit == "center-crop":
        if wider:  # keep the full source width, crop rows: crop_h = w * height / width
            crop_w, crop_h = w, min(h, max(1, _round_div(w * height, width)))
        else:  # keep the full source height, crop columns: crop_w = h * width / height
            crop_w, crop_h = min(w, max(1, _round_div(h * width, height))), h
        left, top = (w - crop_w) // 2, (h - crop_h) // 2
        return FitPlan((left, top, left + crop_w, top + crop_h), (height, width), (0, 0))
    if fit == "pad":
        if wider:  # the height fills the target: new_w = w * height / h
            new_h, new_w = height, min(width, max(1, _round_div(w * height, h)))
        else:  # the width fills the target: new_h = h * width / w
            new_h, new_w = min(height, max(1, _round_div(h * width, w))), width
        return FitPlan(whole, (new_h, new_w), ((height - new_h) // 2, (width - new_w) // 2))
    raise ValueError(f"fit must be one of {', '.join(FITS)}, got {fit!r}")


def draft_size(width: int, height: int, size: tuple[int, int], fit: str, orientation: int) -> tuple[int, int]:
    """Smallest stored (un-rotated) size a JPEG may be decoded at for ``fit`` to ``size``."""
    if orientation in (5, 6, 7, 8):  # rotated by 90 degrees: the stored width is the upright height
        width, height = height, width
    target_h, target_w = size
    if fit == "resize":
        need_w, need_h = target_w, target_h
    else:
        # scale = pick(target_w / width, target_h / height), in integers: compare the cross products
        width_limits = target_w * height >= target_h * width  # target_w / width >= target_h / height
        by_width = width_limits if fit == "center-crop" else not width_limits
        if by_width:  # scale = target_w / width
            need_w, need_h = target_w, -(-height * target_w // width)
        else:  # scale = target_h / height
            need_w, need_h = -(-width * target_h // height), target_h
    return (need_h, need_w) if orientation in (5, 6, 7, 8) else (need_w, need_h)
