"""One image, bytes in, bytes out: decode to 8-bit RGB, fit to a size, encode -- or keep the bytes.

Pure functions without Spark, used inside the conversion's Spark tasks and by tests.

How inputs become 8-bit RGB (decoded with Pillow):

* EXIF orientation is applied (photos come out upright); GIF, TIFF and WebP give their first frame.
* Grayscale, palette, CMYK and YCbCr images are converted to RGB by Pillow.
* Alpha is dropped, as ``Image.convert("RGB")`` does (the same as torchvision's default loader):
  the color channels are kept and not blended with any background.
* 16- and 32-bit integer images are scaled ``value / 257`` (0..65535 -> 0..255) after clipping to
  0..65535; float images are taken as 0..1 when their maximum is <= 1 and as 0..255 otherwise.
  16-bit RGB PNG and TIFF are reduced to 8 bits by Pillow itself when it opens them.

Fit to ``size = (H, W)``: ``resize`` stretches; ``center-crop`` takes the largest centered
region with the target's aspect ratio and resizes it (one resampling step over the cropped
region); ``pad`` resizes the long side to the target and centers the image on black. The
arithmetic is done in integers (:func:`fit_plan`): every source and target size works and the
output is exactly ``size``.

Pass-through: when the source is already a complete 8-bit RGB JPEG (or PNG), in the target
encoding (or in one of ``keep_formats``: with ``encoding: auto`` every row may keep its own JPEG or
PNG bytes), upright (no EXIF rotation) and of the target size (or no size was asked for), its
bytes are stored unchanged -- no decode, no re-encode, no quality loss. Decoders (OpenCV,
Pillow, petastorm's codec, this project's reader) detect JPEG or PNG from the bytes, not from
the field's declared codec, so such a mixed field reads back everywhere.

``jpeg_draft`` (off by default): when a JPEG is at least twice as large as needed for the fit,
libjpeg decodes it directly at 1/2, 1/4 or 1/8 scale (never smaller than needed) before the
resize. Several times faster for camera photos; pixels differ slightly from a full decode.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.convert.fit import FITS, FitPlan, draft_size, fit_plan
from pipeline.convert.headers import image_header

__all__ = [
    "ENCODINGS",
    "EXTENSIONS",
    "FITS",
    "RESAMPLES",
    "FitPlan",
    "ImageError",
    "decode_rgb",
    "encode_rgb",
    "fit_image",
    "fit_plan",
    "passthrough_ok",
    "prepare_image",
]

EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".jpe",
    ".png",
    ".bmp",
    ".tif",
    ".tiff",
    ".gif",
    ".webp",
    ".ppm",
    ".pgm",
    ".pbm",
    ".pnm",
)
"""File suffixes (case-insensitive) taken as images when listing a folder."""
JPEG_EXTENSIONS = (".jpg", ".jpeg", ".jpe")
ENCODINGS = ("png", "jpeg")
RESAMPLES = ("nearest", "bilinear", "bicubic", "lanczos")

_ORIENTATION = 0x0112


class ImageError(ValueError):
    """An input is not a usable image (empty, truncated, corrupt, unsupported mode)."""


def _pil() -> Any:
    from PIL import Image

    return Image


def _open(data: bytes) -> Any:
    Image = _pil()
    if not data:
        raise ImageError("empty file")
    try:
        return Image.open(io.BytesIO(data))
    except Image.UnidentifiedImageError:
        raise ImageError("not an image Pillow can read (unknown format or corrupt header)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"cannot read the image header: {exc}") from None


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.floating):
        peak = float(np.nanmax(array)) if array.size else 0.0
        scaled = array * 255.0 if peak <= 1.0 else array
        return np.clip(np.nan_to_num(np.rint(scaled)), 0, 255).astype(np.uint8)
    clipped = np.clip(array.astype(np.int64), 0, 65535)
    return ((clipped * 2 + 257) // 514).astype(np.uint8)  # round(value / 257)


def decode_rgb(data: bytes, *, draft: tuple[tuple[int, int], str] | None = None) -> Any:
    """Decode ``data`` into an upright 8-bit RGB ``PIL.Image`` (see the module doc for the rules).

    Args:
        data: The encoded image.
        draft: ``(size, fit)`` that will be applied next: a JPEG may then be decoded at 1/2,
            1/4 or 1/8 scale (libjpeg DCT scaling) as long as it stays large enough. Defaults
            to ``None`` (full-size decode).

    Raises:
        ImageError: Empty, truncated, corrupt or not an image.
    """
    Image = _pil()
    from PIL import ImageOps

    image = _open(data)
    try:
        orientation = image.getexif().get(_ORIENTATION, 1)
        if draft is not None and image.format == "JPEG":
            image.draft("RGB", draft_size(image.width, image.height, draft[0], draft[1], orientation))
        image.load()
        if orientation in range(2, 9):
            image = ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"cannot decode {image.format or 'image'}: {exc}") from None
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith(("I", "F")):
        gray = _to_uint8(np.asarray(image))
        return Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2), "RGB")
    try:
        return image.convert("RGB")
    except ValueError as exc:
        raise ImageError(f"cannot convert {image.format} mode {mode} to RGB: {exc}") from None


def fit_image(image: Any, size: tuple[int, int], fit: str = "center-crop", resample: str = "bilinear") -> Any:
    """Fit an RGB ``PIL.Image`` to ``size = (height, width)`` (arithmetic: :func:`fit_plan`).

    Args:
        image: RGB image.
        size: Target ``(height, width)``.
        fit: ``"center-crop"``, ``"resize"`` or ``"pad"``. Defaults to ``"center-crop"``.
        resample: ``"nearest"``, ``"bilinear"``, ``"bicubic"`` or ``"lanczos"``. Defaults to
            ``"bilinear"``.
    """
    Image = _pil()
    height, width = size
    w, h = image.size
    if fit not in FITS:
        raise ValueError(f"fit must be one of {', '.join(FITS)}, got {fit!r}")
    if (h, w) == (height, width):
        return image
    plan = fit_plan((h, w), (height, width), fit)
    method = getattr(Image.Resampling, resample.upper())
    new_h, new_w = plan.resized
    resized = image.resize((new_w, new_h), method, box=plan.box)
    if plan.resized == (height, width):
        return resized
    canvas = Image.new("RGB", (width, height))
    canvas.paste(resized, (plan.offset[1], plan.offset[0]))
    return canvas


def encode_rgb(image: Any, encoding: str, *, jpeg_quality: int = 95, png_compression: int = 1) -> bytes:
    """Encode an RGB ``PIL.Image`` (or ``HxWx3`` uint8 array) as PNG or JPEG with OpenCV."""
    import cv2

    array = np.asarray(image, dtype=np.uint8)
    bgr = np.ascontiguousarray(array[:, :, ::-1])
    if encoding == "png":
        ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, png_compression])
    elif encoding == "jpeg":
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
    else:
        raise ValueError(f"encoding must be one of {', '.join(ENCODINGS)}, got {encoding!r}")
    if not ok:
        raise ImageError(f"OpenCV could not encode a {array.shape} image as {encoding}")
    return buf.tobytes()


def passthrough_ok(data: bytes, encoding: str | Sequence[str], size: tuple[int, int] | None) -> bool:
    """Whether ``data`` can be stored as it is (see the module doc), judged from its header only.

    ``encoding`` is the stored encoding, or several (``("jpeg", "png")``) when each row may keep
    its own format.
    """
    header = image_header(data)
    allowed = {encoding} if isinstance(encoding, str) else set(encoding)
    if header is None or {"JPEG": "jpeg", "PNG": "png"}.get(header.format) not in allowed:
        return False
    if header.channels != 3 or header.bits != 8 or header.transparency or header.orientation != 1:
        return False
    if not header.complete:
        return False  # truncated (or trailing bytes): decode to find out
    return size is None or (header.height, header.width) == tuple(size)


def prepare_image(
    data: bytes,
    *,
    size: tuple[int, int] | None,
    fit: str = "center-crop",
    encoding: str = "png",
    resample: str = "bilinear",
    jpeg_quality: int = 95,
    png_compression: int = 1,
    pass_through: bool = True,
    jpeg_draft: bool = False,
    keep_formats: Sequence[str] | None = None,
) -> tuple[bytes, bool]:
    """Turn source bytes into stored bytes; returns ``(bytes, passed_through)``.

    ``jpeg_draft`` lets large JPEGs be decoded at a reduced scale before ``fit`` (see
    :func:`decode_rgb`); ``keep_formats`` are the source formats (``"jpeg"``, ``"png"``) whose
    bytes may be kept as they are when no change is needed, defaults to ``None`` (only
    ``encoding``); an image that must be decoded is always encoded as ``encoding``. Other
    arguments as in :class:`~pipeline.convert.images.ImageOptions`.

    Raises:
        ImageError: The input is not a usable image.
    """
    if pass_through and passthrough_ok(data, keep_formats or encoding, size):
        return data, True
    image = decode_rgb(data, draft=(size, fit) if jpeg_draft and size is not None else None)
    if size is not None:
        image = fit_image(image, size, fit, resample)
    return encode_rgb(image, encoding, jpeg_quality=jpeg_quality, png_compression=png_compression), False
