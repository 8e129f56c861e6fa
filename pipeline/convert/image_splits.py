"""``pipeline convert images SRC DEST --split train=0.8,heldout=0.2``: one dataset per split.

SRC is listed once; :func:`~pipeline.convert.splits.assign_splits` puts every image in exactly
one split (stratified by class, deterministic for ``--seed``); each split is written as a
complete dataset (one Spark job per split). For a local DEST all splits go into one staging
folder next to DEST, which moves into place only when every split succeeded -- a failed run
leaves no DEST. An object store has no rename: each split is its own conversion to
``DEST/<split>`` with the object-store commit protocol (``docs/storage.md``), so each split is
replaced atomically on its own, not all of them together; ``_splits.json`` is written last
(see :func:`_write_remote`). DEST then holds::

    DEST/_splits.json     the spec, seed and rows per split (marks DEST as a split dataset)
    DEST/train/           a dataset (pipeline.open_loader, inspect, bench, petastorm)
    DEST/heldout/         a dataset

Every split's provenance keeps the full ``class_names`` list, so label ``i`` means the same class
in every split even when a small class is missing from one.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pipeline.convert.common import ConversionResult, ConvertConfig
from pipeline.convert.image_sources import ImageSource
from pipeline.convert.splits import assign_splits, parse_split
from pipeline.convert.staging import SPLITS_FILE, check_destination, remote_split_layout
from pipeline.errors import InputError
from pipeline.storage import delete_paths, is_remote, list_files, resolve, write_bytes
from pipeline.storage.publish import COMMON_METADATA, SKIPPED_REPORT

__all__ = ["SPLITS_FILE", "SplitConversionResult", "write_splits"]

log = logging.getLogger(__name__)


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

    def write_part(at: str, part: ImageSource, how: ConvertConfig, name: str) -> ConversionResult:
        return write_images(spark, src, at, part, options, how, encoding=encoding, extra={"split": name})

    def parts() -> Iterator[tuple[str, ImageSource]]:
        for index, name in enumerate(plan.names):
            part = ImageSource(
                source.layout,
                plan.items_of(index, source.items),  # type: ignore[arg-type]
                plan.items_of(index, source.sizes),  # type: ignore[arg-type]
                source.class_names,
            )
            log.info("split %s: %d image(s)", name, len(part.items))
            yield name, part

    def record_of(results: dict[str, ConversionResult]) -> bytes:
        record = {
            "split": options.split,
            "seed": options.seed,
            "rows": {name: r.rows for name, r in results.items()},
            "images": dict(plan.counts),
            "classes_missing_from_a_split": short,
        }
        return (json.dumps(record, indent=2, sort_keys=True) + "\n").encode("utf-8")

    results: dict[str, ConversionResult] = {}
    if is_remote(dest):
        output = os.fspath(dest).rstrip("/")
        _write_remote(output, src, settings, parts(), record_of, results, write_part)
        outputs = {name: r.output for name, r in results.items()}
        reports = {name: r.skipped_report for name, r in results.items()}
    else:
        inner = replace(settings, overwrite=False)  # each split is new inside the staging folder
        with StagedOutput(dest, overwrite=settings.overwrite, source=src) as stage:
            stage.data_dir.mkdir()
            for name, part in parts():
                results[name] = write_part(str(stage.data_dir / name), part, inner, name)
            (stage.data_dir / SPLITS_FILE).write_bytes(record_of(results))
            stage.commit()
        final = Path(stage.dest)
        output = "file://" + str(final)
        outputs = {name: "file://" + str(final / name) for name in results}
        reports = {
            name: str(final / name / SKIPPED_REPORT) if r.skipped else None for name, r in results.items()
        }
    splits = {
        name: {
            "rows": r.rows,
            "skipped": r.skipped,
            "output": outputs[name],
            "files": r.files,
            "row_groups": r.row_groups,
            "output_bytes": r.output_bytes,
            "passed_through": r.extra.get("passed_through", 0),
            "re_encoded": r.extra.get("re_encoded", 0),
            "skipped_report": reports[name] if r.skipped else None,
        }
        for name, r in results.items()
    }
    values = list(results.values())
    result = SplitConversionResult(
        kind="images",
        source=str(src),
        output=output,
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


def _write_remote(
    url: str,
    src: str,
    settings: ConvertConfig,
    parts: Iterable[tuple[str, Any]],
    record_of: Callable[[dict[str, ConversionResult]], bytes],
    results: dict[str, ConversionResult],
    write_part: Callable[[str, Any, ConvertConfig, str], ConversionResult],
) -> None:
    """Object-store DEST: each split is its own dataset at ``DEST/<split>``, then ``_splits.json``.

    1. DEST is checked as for a local DEST (a split DEST, a dataset or ``_splits.json`` without
       ``--overwrite`` is refused); with ``--overwrite`` an old ``_splits.json`` is deleted first,
       so a DEST whose splits are partly replaced never carries a record that describes it;
    2. each split is written and committed on its own (``_common_metadata`` of ``DEST/<split>``
       is its commit point: a reader of a split sees the old or the new one, never a mix);
    3. what the new splits do not own is deleted: splits of an old run that the new ``--split``
       does not name, an old dataset at DEST itself (its ``_common_metadata`` first);
    4. ``_splits.json`` is written last, in one PUT.

    A run that fails into a DEST that held nothing deletes the splits it committed (the DEST is
    left as it was); one that fails under ``--overwrite`` leaves the splits it replaced, the old
    ones it did not reach, and no ``_splits.json``.
    """
    check_destination(url, overwrite=settings.overwrite, source=src)
    fs, prefix = resolve(url)

    def listing() -> dict[str, str]:
        return {e.path[len(prefix) :].lstrip("/"): e.path for e in list_files(fs, prefix, url=url)}

    before = listing()
    layout = remote_split_layout(url) if before else None
    fresh = not before or (layout is not None and not layout.exists)
    if SPLITS_FILE in before:
        delete_paths(fs, [before[SPLITS_FILE]], url=url)
    try:
        for name, part in parts:
            results[name] = write_part(f"{url}/{name}", part, settings, name)
    except BaseException:
        if fresh and results:
            log.info("removing the split(s) %s this failed run committed under %s", ", ".join(results), url)
            try:
                objects = listing()
                delete_paths(fs, [p for r, p in objects.items() if r.split("/", 1)[0] in results], url=url)
            except Exception as error:  # never hide the conversion's own error
                log.warning("could not remove the splits of this run from %s: %s", url, error)
        raise
    objects = listing()
    stale = {r: p for r, p in objects.items() if r != SPLITS_FILE and r.split("/", 1)[0] not in results}
    if stale:
        log.info("removing %d object(s) under %s that the new splits replace", len(stale), url)
        marks = [p for r, p in stale.items() if r.rsplit("/", 1)[-1] == COMMON_METADATA]
        delete_paths(fs, marks, url=url)  # each old dataset stops being one before its files go
        delete_paths(fs, [p for p in stale.values() if p not in marks], url=url)
    write_bytes(fs, f"{prefix}/{SPLITS_FILE}", record_of(results), url=url)


def _class_name(source: ImageSource, label: int) -> str:
    if 0 <= label < len(source.class_names):
        return source.class_names[label]
    return "(no label)" if label == -1 else str(label)
