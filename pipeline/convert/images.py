"""Convert an image folder, flat folder or manifest into a Petastorm dataset of RGB images.

Sources (``SRC``):

* **image-folder tree** -- ``SRC/<class>/**/<image>``: each sub-folder of SRC that holds images is
  a class; classes are sorted by name and ``label`` is the index into that list (stored as
  ``class_names`` in the dataset's provenance). Images directly in SRC next to class folders are
  an error (their class would be unknown).
* **flat folder** -- images directly in SRC, no sub-folders: ``label`` is ``-1`` (no label) and
  ``class_names`` is empty.
* **manifest** -- a ``.csv`` or ``.jsonl`` file with a ``path`` column (relative to the manifest's
  folder, or absolute) and an optional ``label``: integers are stored as they are; names are
  sorted into ``class_names`` and stored as their index; a missing label is ``-1``.

Fields: ``image`` (uint8 ``H x W x 3``, PNG or JPEG compressed; ``H`` and ``W`` fixed with
``--size``, variable without), ``label`` (int64) and ``path`` (the file's path relative to SRC,
or as written in the manifest). Decoding rules: :mod:`pipeline.convert.imaging`.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from pipeline.config import load_config
from pipeline.convert.common import ConversionResult, ConvertConfig, RecordErrors
from pipeline.convert.image_sources import ImageSource, find_images
from pipeline.convert.imaging import JPEG_EXTENSIONS, ImageError, prepare_image
from pipeline.convert.splits import parse_split
from pipeline.errors import ConfigError
from pipeline.storage import open_input

__all__ = [
    "ImageOptions",
    "ImageSource",
    "convert_images",
    "find_images",
    "write_images",
]

log = logging.getLogger(__name__)

_BATCH_BYTES = 8 * 1024 * 1024
_BATCH_ROWS = 4096


@dataclass(frozen=True)
class ImageOptions:
    """How images are stored (``conf/convert_images.yaml``)."""

    size: tuple[int, int] | None = None
    """``(height, width)`` of every stored image; ``None`` keeps each image's own size. Defaults to ``None``."""
    fit: Literal["center-crop", "resize", "pad"] = "center-crop"
    """How an image is fitted to ``size``. Defaults to ``"center-crop"``."""
    encoding: Literal["auto", "png", "jpeg"] = "auto"
    """Stored encoding; ``auto`` = ``jpeg`` when every source is a JPEG, else ``png``. Defaults to ``"auto"``."""
    jpeg_quality: int = 95
    """JPEG quality (1-100) when images are (re-)encoded as JPEG. Defaults to ``95``."""
    png_compression: int = 1
    """PNG zlib level (0-9) when images are encoded as PNG; 1 is fast. Defaults to ``1``."""
    resample: Literal["nearest", "bilinear", "bicubic", "lanczos"] = "bilinear"
    """Resampling filter used when resizing. Defaults to ``"bilinear"``."""
    pass_through: bool = True
    """Keep the source bytes when no change is needed (see :mod:`~pipeline.convert.imaging`). Defaults to ``True``."""
    jpeg_draft: bool = False
    """Decode large JPEGs at 1/2..1/8 scale before resizing: faster, pixels differ slightly. Defaults to ``False``."""
    split: str | None = None
    """``"train=0.8,heldout=0.2"``: write one dataset per split under DEST, stratified by class
    (see :mod:`pipeline.convert.splits`). Defaults to ``None`` (one dataset at DEST)."""
    seed: int = 0
    """Seed of ``split``'s random order. Defaults to ``0``."""

    def __post_init__(self) -> None:
        if self.split is not None:
            parse_split(self.split)
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")
        if self.size is not None and (len(self.size) != 2 or min(self.size) < 1):
            raise ConfigError(f"size must be [height, width] with positive integers, got {self.size!r}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")
        if not 0 <= self.png_compression <= 9:
            raise ConfigError(f"png_compression must be in 0..9, got {self.png_compression}")


def process_images(
    items: Sequence[tuple[str, str, int]],
    errors: RecordErrors,
    *,
    options: ImageOptions,
    encoding: str,
    stats: Mapping[str, Any] | None = None,
) -> Iterator[dict[str, list[Any]]]:
    """Partition function (runs in Spark tasks): read, convert and batch the images of ``items``.

    ``stats`` holds Spark accumulators ``passed_through`` and ``re_encoded`` (or is ``None``).
    """
    batch: dict[str, list[Any]] = {"image": [], "label": [], "path": []}
    held = passed = 0
    keep = ("jpeg", "png") if options.encoding == "auto" else None
    for path, rel, label in items:
        try:
            with open_input(path) if "://" in path else open(path, "rb") as fh:  # local, or s3:// URLs
                data = fh.read()
        except OSError as exc:
            errors.bad(path, f"cannot read file: {exc.strerror or exc}")
            continue
        try:
            stored, kept = prepare_image(
                data,
                size=options.size,
                fit=options.fit,
                encoding=encoding,
                resample=options.resample,
                jpeg_quality=options.jpeg_quality,
                png_compression=options.png_compression,
                pass_through=options.pass_through,
                jpeg_draft=options.jpeg_draft,
                keep_formats=keep,
            )
        except ImageError as exc:
            errors.bad(path, str(exc))
            continue
        except Exception as exc:  # any decoder failure on damaged data is bad input, not a crash
            errors.bad(path, f"cannot decode image: {type(exc).__name__}: {exc}")
            continue
        batch["image"].append(stored)
        batch["label"].append(label)
        batch["path"].append(rel)
        passed += kept
        held += len(stored)
        if held >= _BATCH_BYTES or len(batch["path"]) >= _BATCH_ROWS:
            _count(stats, passed, len(batch["path"]) - passed)
            yield _arrow_columns(batch)
            batch, held, passed = {"image": [], "label": [], "path": []}, 0, 0
    if batch["path"]:
        _count(stats, passed, len(batch["path"]) - passed)
        yield _arrow_columns(batch)


def _arrow_columns(batch: Mapping[str, list[Any]]) -> dict[str, Any]:
    """The batch's columns as Arrow arrays (``binary``, ``int64``, ``string``) built from buffers.

    ``pa.array(<list>)`` asks pyarrow's pandas shim whether the list is a pandas object, which
    imports pandas in every Spark worker (~0.6 CPU-s each) although nothing here uses it; an
    array built from its buffers is taken as it is by the task's writer.
    """
    import numpy as np
    import pyarrow as pa

    def variable(kind: Any, values: list[bytes]) -> Any:
        lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
        if int(lengths.sum()) >= 2**31:  # beyond 32-bit offsets: let pyarrow split it
            return pa.array(values, type=kind)
        offsets = np.zeros(len(values) + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        return pa.Array.from_buffers(
            kind, len(values), [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(values))]
        )

    labels = np.asarray(batch["label"], dtype=np.int64)
    return {
        "image": variable(pa.binary(), batch["image"]),
        "label": pa.Array.from_buffers(pa.int64(), len(labels), [None, pa.py_buffer(labels)]),
        "path": variable(pa.string(), [p.encode("utf-8") for p in batch["path"]]),
    }


def _count(stats: Mapping[str, Any] | None, passed: int, re_encoded: int) -> None:
    if stats is not None:
        stats["passed_through"].add(passed)
        stats["re_encoded"].add(re_encoded)


def image_schema(size: tuple[int, int] | None, encoding: str, jpeg_quality: int) -> Any:
    """The Unischema: ``image`` (uint8 HxWx3, compressed), ``label`` (int64), ``path`` (str)."""
    import numpy as np
    from pyspark.sql.types import LongType, StringType

    from pipeline.format import CompressedImageCodec, ScalarCodec, Unischema, UnischemaField

    shape = (size[0], size[1], 3) if size else (None, None, 3)
    return Unischema(
        "ImageSchema",
        [
            UnischemaField("image", np.uint8, shape, CompressedImageCodec(encoding, jpeg_quality), False),
            UnischemaField("label", np.int64, (), ScalarCodec(LongType()), False),
            UnischemaField("path", np.str_, (), ScalarCodec(StringType()), False),
        ],
    )


def convert_images(
    spark: Any,
    src: str,
    dest: str,
    options: ImageOptions | None = None,
    *,
    settings: ConvertConfig | None = None,
    source: ImageSource | None = None,
) -> ConversionResult:
    """Convert the images of ``src`` into a Petastorm dataset at ``dest``.

    Args:
        spark: The SparkSession (see :func:`pipeline.spark.spark_session`).
        src: Image-folder tree, flat folder or manifest (``.csv``/``.jsonl``).
        dest: Output folder or ``file://`` URL; must not exist unless ``settings.overwrite``.
        options: Size, fit and encoding. Defaults to ``conf/convert_images.yaml``.
        settings: Row groups, compression, bad-input policy. Defaults to ``conf/convert.yaml``.
        source: ``find_images(src)``, when the caller listed SRC already (the CLI does, while
            Spark starts). Defaults to ``None`` (listed here).

    With ``options.split`` DEST holds one dataset per split (``DEST/train``, ``DEST/heldout``),
    written in one staging folder and moved into place together (see
    :mod:`pipeline.convert.image_splits`).

    Returns:
        The :class:`~pipeline.convert.common.ConversionResult`; ``extra`` holds ``class_names``,
        ``layout``, the resolved ``encoding`` and how many images were ``passed_through`` (source
        bytes kept) or ``re_encoded``. With a split, a ``SplitConversionResult`` whose ``splits``
        maps each split name to its rows, skipped and output.

    Raises:
        InputError: SRC holds no images, or a bad image under ``on_error="fail"``.
        DatasetError: DEST exists and ``overwrite`` is off.
    """
    from pipeline.convert.staging import check_destination

    started = time.perf_counter()
    options = options or load_config(ImageOptions, "convert_images.yaml")
    settings = settings or load_config(ConvertConfig, "convert.yaml")
    check_destination(dest, overwrite=settings.overwrite, source=src)
    source = find_images(src) if source is None else source
    encoding = options.encoding
    if encoding == "auto":
        all_jpeg = all(p.lower().endswith(JPEG_EXTENSIONS) for p, _, _ in source.items)
        encoding = "jpeg" if all_jpeg else "png"
    log.info(
        "%d images (%s layout, %d classes) in %s; storing %s%s",
        len(source.items),
        source.layout,
        len(source.class_names),
        src,
        encoding,
        f" {options.size[0]}x{options.size[1]} ({options.fit})" if options.size else "",
    )
    if options.split is not None:
        from pipeline.convert.image_splits import write_splits

        return write_splits(spark, src, dest, source, options, settings, encoding=encoding, started=started)
    return write_images(spark, src, dest, source, options, settings, encoding=encoding, started=started)


def write_images(
    spark: Any,
    src: str,
    dest: str,
    source: ImageSource,
    options: ImageOptions,
    settings: ConvertConfig,
    *,
    encoding: str,
    started: float | None = None,
    extra: Mapping[str, Any] | None = None,
) -> ConversionResult:
    """Write the images of ``source`` as one dataset at ``dest`` (one Spark job).

    ``extra`` facts are added to the provenance and the result's ``extra``, next to
    ``class_names``, ``layout``, ``encoding``, ``passed_through`` and ``re_encoded``.
    """
    from pipeline.convert.writer import plan_partitions, write_petastorm

    counters = {name: spark.sparkContext.accumulator(0) for name in ("passed_through", "re_encoded")}
    fixed = {
        "class_names": source.class_names,
        "layout": source.layout,
        "encoding": encoding,
        **(extra or {}),
    }

    def facts() -> dict[str, Any]:  # read after the Spark job, when the task counters are final
        return {**fixed, **{name: int(acc.value) for name, acc in counters.items()}}

    process = functools.partial(process_images, options=options, encoding=encoding, stats=counters)
    return write_petastorm(
        spark,
        kind="images",
        source=str(src),
        dest=dest,
        schema=image_schema(options.size, encoding, options.jpeg_quality),
        plan=plan_partitions(spark, source.items, source.sizes, settings),
        process=process,
        settings=settings,
        input_bytes=sum(source.sizes),
        options=replace(options, encoding=encoding),
        extra=facts,
        auto_compression="none",  # JPEG/PNG bytes do not compress further; snappy only costs CPU
        started=started,
    )
