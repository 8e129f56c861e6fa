"""``pipeline convert images SRC DEST --split train=0.8,heldout=0.2``: one dataset per split.

SRC is listed once; :func:`~pipeline.convert.splits.assign_splits` puts every image in exactly
one split (stratified by class, deterministic for ``--seed``); each split is written as a
complete dataset (one Spark job per split) into one staging folder next to DEST, which moves into
place only when every split succeeded -- a failed run leaves no DEST. DEST then holds::

    DEST/_splits.json     the spec, seed and rows per split (marks DEST as a split dataset)
    DEST/train/           a dataset (pipeline.open_loader, inspect, bench, petastorm)
    DEST/heldout/         a dataset

Every split's provenance keeps the full ``class_names`` list, so label ``i`` means the same class
in every split even when a small class is missing from one.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

from pipeline.convert.common import ConversionResult, ConvertConfig
from pipeline.convert.image_sources import ImageSource
from pipeline.convert.splits import assign_splits, parse_split
from pipeline.errors import InputError

__all__ = ["SPLITS_FILE", "SplitConversionResult", "write_splits"]

log = logging.getLogger(__name__)

SPLITS_FILE = "_splits.json"
"""Written at the top of a split DEST; lets ``--overwrite`` replace it like a dataset."""


@dataclass(frozen=True)
class SplitConversionResult(ConversionResult):
    """A split conversion: totals over every split plus ``splits`` (name -> its own figures)."""

    splits: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per split: ``rows``, ``skipped``, ``output``, ``files``, ``row_groups``, ``output_bytes``,
    ``passed_through``, ``re_encoded`` and ``skipped_report``."""

    def summary(self) -> str:
        lines = [super().summary()]
        for name, split in self.splits.items():
            lines.append(
                f"  split {name}: rows {split['rows']:,}  skipped {split['skipped']:,}  -> {split['output']}"
            )
            if split.get("skipped_report"):
                lines.append(f"    skipped records listed in {split['skipped_report']}")
        return "\n".join(lines)


def write_splits(
    spark: Any,
    src: str,
    dest: str,
    source: ImageSource,
    options: Any,
    settings: ConvertConfig,
    *,
    encoding: str,
    started: float | None = None,
) -> SplitConversionResult:
    """Write one dataset per split of ``options.split`` under ``dest`` (see the module doc).

    Raises:
        InputError: A split would get no image at all (too few images for the spec).
        DatasetError: DEST exists and ``settings.overwrite`` is off.
    """
    from pipeline.convert.images import write_images
    from pipeline.convert.staging import StagedOutput

    started = time.perf_counter() if started is None else started
    spec = parse_split(options.split)
    plan = assign_splits([label for _, _, label in source.items], spec, seed=options.seed)
    empty = [name for name, count in plan.counts.items() if count == 0]
    if empty:
        raise InputError(
            f"{src}: split {empty[0]!r} of --split {options.split} gets no image "
            f"({len(source.items)} image(s) in all)",
            hint="add images, give that split a larger fraction, or use fewer splits",
        )
    short = {_class_name(source, label): counts for label, counts in plan.short.items()}
    for name, counts in short.items():
        missing = ", ".join(n for n, c in counts.items() if c == 0)
        log.warning("class %r has %d image(s): none in split(s) %s", name, sum(counts.values()), missing)
    inner = replace(settings, overwrite=False)  # each split is new inside the staging folder
    results: dict[str, ConversionResult] = {}
    with StagedOutput(dest, overwrite=settings.overwrite, source=src) as stage:
        stage.data_dir.mkdir()
        for index, name in enumerate(plan.names):
            part = ImageSource(
                source.layout,
                plan.items_of(index, source.items),  # type: ignore[arg-type]
                plan.items_of(index, source.sizes),  # type: ignore[arg-type]
                source.class_names,
            )
            log.info("split %s: %d image(s)", name, len(part.items))
            results[name] = write_images(
                spark,
                src,
                str(stage.data_dir / name),
                part,
                options,
                inner,
                encoding=encoding,
                extra={"split": name},
            )
        record = {
            "split": options.split,
            "seed": options.seed,
            "rows": {name: r.rows for name, r in results.items()},
            "images": dict(plan.counts),
            "classes_missing_from_a_split": short,
        }
        (stage.data_dir / SPLITS_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        stage.commit()
    final = stage.dest
    splits = {
        name: {
            "rows": r.rows,
            "skipped": r.skipped,
            "output": "file://" + str(final / name),
            "files": r.files,
            "row_groups": r.row_groups,
            "output_bytes": r.output_bytes,
            "passed_through": r.extra.get("passed_through", 0),
            "re_encoded": r.extra.get("re_encoded", 0),
            "skipped_report": str(final / name / "_skipped.jsonl") if r.skipped else None,
        }
        for name, r in results.items()
    }
    values = list(results.values())
    result = SplitConversionResult(
        kind="images",
        source=str(src),
        output="file://" + str(final),
        rows=sum(r.rows for r in values),
        skipped=sum(r.skipped for r in values),
        input_bytes=sum(source.sizes),
        output_bytes=sum(r.output_bytes for r in values),
        files=sum(r.files for r in values),
        row_groups=sum(r.row_groups for r in values),
        seconds=time.perf_counter() - started,
        extra={
            "class_names": source.class_names,
            "layout": source.layout,
            "encoding": encoding,
            "passed_through": sum(s["passed_through"] for s in splits.values()),
            "re_encoded": sum(s["re_encoded"] for s in splits.values()),
            "split": options.split,
            "seed": options.seed,
            "classes_missing_from_a_split": short,
        },
        splits=splits,
    )
    log.info("%s", result.summary())
    return result


def _class_name(source: ImageSource, label: int) -> str:
    if 0 <= label < len(source.class_names):
        return source.class_names[label]
    return "(no label)" if label == -1 else str(label)
