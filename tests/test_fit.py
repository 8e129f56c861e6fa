"""Fit arithmetic (``center-crop``, ``resize``, ``pad``): every source size and every target size.

The pure integer arithmetic (:func:`fit_plan`) is checked over the whole grid of source sizes
1..400 x 1..400 for a few targets and over a dense random sample for more targets; a smaller
sample goes through the real Pillow path (:func:`fit_image`, :func:`prepare_image`).
"""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
from PIL import Image

from pipeline.convert.imaging import FITS, fit_image, fit_plan, prepare_image

GRID_TARGETS = [(64, 64), (32, 48)]
SAMPLE_TARGETS = [(1, 1), (1, 7), (7, 1), (224, 224), (33, 17), (17, 33), (399, 1), (401, 401)]


def _check(source: tuple[int, int], target: tuple[int, int], fit: str) -> None:
    h, w = source
    height, width = target
    plan = fit_plan(source, target, fit)
    left, top, right, bottom = plan.box
    assert 0 <= left < right <= w and 0 <= top < bottom <= h, (source, target, fit, plan)
    crop_w, crop_h = right - left, bottom - top
    new_h, new_w = plan.resized
    off_top, off_left = plan.offset
    assert 1 <= new_h <= height and 1 <= new_w <= width, (source, target, fit, plan)
    assert off_top + new_h <= height and off_left + new_w <= width
    if fit == "resize":
        assert plan == type(plan)((0, 0, w, h), target, (0, 0))
    elif fit == "center-crop":
        assert plan.resized == target and plan.offset == (0, 0)
        assert crop_w == w or crop_h == h, (source, target, plan)
        assert (left, top) == ((w - crop_w) // 2, (h - crop_h) // 2)
        # the crop has the target's aspect ratio up to rounding of its short side to a pixel
        if crop_w == w:
            assert crop_h in (1, h) or abs(2 * (crop_h * width - w * height)) <= width
        if crop_h == h:
            assert crop_w in (1, w) or abs(2 * (crop_w * height - h * width)) <= height
    else:  # pad
        assert plan.box == (0, 0, w, h)
        assert new_h == height or new_w == width, (source, target, plan)
        assert plan.offset == ((height - new_h) // 2, (width - new_w) // 2)
        if new_w == width:
            assert new_h in (1, height) or abs(2 * (new_h * w - h * width)) <= w
        if new_h == height:
            assert new_w in (1, width) or abs(2 * (new_w * h - w * height)) <= h


@pytest.mark.parametrize("fit", FITS)
@pytest.mark.parametrize("target", GRID_TARGETS)
def test_fit_plan_every_source_size(fit: str, target: tuple[int, int]) -> None:
    for source in itertools.product(range(1, 401), range(1, 401)):
        _check(source, target, fit)


@pytest.mark.parametrize("fit", FITS)
def test_fit_plan_sampled_targets(fit: str) -> None:
    rng = np.random.default_rng(16)
    sources = [tuple(int(v) for v in s) for s in rng.integers(1, 401, size=(4000, 2))]
    sources += [(103, 127), (156, 98), (1, 1), (1, 400), (400, 1)]
    for target in SAMPLE_TARGETS:
        for source in sources:
            _check(source, target, fit)  # type: ignore[arg-type]


def test_fit_plan_known_cases() -> None:
    # 127x103 (W x H) at 64x64 failed with a float crop box of -7e-15 before.
    assert fit_plan((103, 127), (64, 64), "center-crop").box == (12, 0, 115, 103)
    assert fit_plan((156, 98), (64, 64), "center-crop").box == (0, 29, 98, 127)
    assert fit_plan((10, 20), (10, 10), "pad").resized == (5, 10)
    assert fit_plan((10, 20), (10, 10), "pad").offset == (2, 0)
    with pytest.raises(ValueError, match="fit must be one of"):
        fit_plan((10, 10), (5, 5), "stretch")
    with pytest.raises(ValueError, match=">= 1"):
        fit_plan((0, 10), (5, 5), "pad")


@pytest.mark.parametrize("fit", FITS)
def test_fit_image_sampled_sources_through_pillow(fit: str) -> None:
    rng = np.random.default_rng(7)
    sources = [tuple(int(v) for v in s) for s in rng.integers(1, 321, size=(60, 2))]
    sources += [(103, 127), (156, 98), (1, 1), (2, 320), (320, 1)]
    for (h, w), target in itertools.product(sources, [(64, 64), (1, 1), (32, 48), (7, 3)]):
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
        out = fit_image(image, target, fit)
        assert (out.height, out.width) == target, ((h, w), target, fit)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("fit", FITS)
def test_prepare_image_sizes_that_failed(fmt: str, fit: str) -> None:
    rng = np.random.default_rng(0)
    for h, w in [(103, 127), (156, 98), (60, 40), (200, 300), (1, 1)]:
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB").save(buf, fmt)
        for size in [(64, 64), (224, 224), (32, 48)]:
            stored, _ = prepare_image(buf.getvalue(), size=size, fit=fit, encoding="png")
            assert Image.open(io.BytesIO(stored)).size == (size[1], size[0])
