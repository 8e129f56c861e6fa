"""One HDF5 file's metadata on the driver: its datasets, which become fields, what is left out.

:func:`read_metadata` opens a file for metadata only (never its data), applies the type rules
(:mod:`pipeline.convert.hdf5_types`), picks the datasets
(:func:`~pipeline.convert.hdf5_schema.select_datasets`), checks that their filters decode and
collects the attributes and scalars that go into the provenance.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pipeline.convert.hdf5_attrs import collect_metadata
from pipeline.convert.hdf5_filters import missing_filter_error, register_plugins
from pipeline.convert.hdf5_schema import (
    Hdf5Dataset,
    Hdf5Field,
    dataset_fields,
    discover_datasets,
    map_fields,
    missing_filters,
    select_datasets,
    wanted_names,
)
from pipeline.errors import InputError
from pipeline.storage import is_remote, open_input

__all__ = ["SKIP_HINT", "FileMeta", "read_metadata"]

log = logging.getLogger(__name__)

_PYTABLES_INDEX = "PyTables index (internal)"
SKIP_HINT = "fix or remove the file, or pass --on-error skip to skip it and list it in DEST/_skipped.jsonl"


@dataclass
class FileMeta:
    """What the driver knows about one file: rows, chosen datasets, what is left out, fields."""

    rows: int
    chosen: list[Hdf5Dataset]
    left_out: list[tuple[str, str]]
    specs: list[Hdf5Field]
    attrs: dict[str, Any]


def read_metadata(path: str, wanted: tuple[str, ...] | None, *, first: bool = False) -> FileMeta:
    """Metadata of one file (never its data); raises :class:`InputError` for a bad file.

    ``first``: the file that decides the layout: its attributes and scalars are collected and
    what is left out is logged.
    """
    import h5py

    register_plugins()
    try:
        if not is_remote(path) and not h5py.is_hdf5(path):
            raise InputError(f"{path} is not an HDF5 file (no HDF5 signature)", hint=SKIP_HINT)
        with h5py.File(open_input(path) if is_remote(path) else path, "r") as h5:
            infos = discover_datasets(h5)
            attrs = collect_metadata(h5, [d.path for d in infos if not d.shape]) if first else {}
    except InputError:
        raise
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise InputError(f"{path}: cannot read HDF5 metadata: {exc}", hint=SKIP_HINT) from None
    usable, unusable = [], []
    for info in infos:
        if not wanted and any(part.startswith("_i_") for part in info.path.split("/")):
            unusable.append((info.path, _PYTABLES_INDEX))
            continue
        fields, lost = dataset_fields(info) if info.shape else ([], [])
        if fields or not info.shape:  # scalars are left out by select_datasets
            usable.append(info)
        else:
            unusable.append((info.path, "; ".join(why for _, why in lost)))
    if wanted:
        for p, why in unusable:
            if wanted_names(p) & set(wanted):
                raise InputError(
                    f"{path}: dataset {p} cannot be converted: {why}",
                    hint="leave it out of --datasets; docs/convert_text_hdf5.md lists the HDF5 types that convert",
                )
    if unusable and not any(d.shape for d in usable):
        listed = "; ".join(f"{p}: {why}" for p, why in unusable)
        raise InputError(
            f"{path}: no dataset can be converted ({listed})",
            hint="docs/convert_text_hdf5.md lists the HDF5 types that convert",
        )
    chosen, left_out = select_datasets(path, usable, wanted)
    for info in chosen:
        for code, name in missing_filters(info):
            raise missing_filter_error(path, info.path, code, name)
    specs, dropped = map_fields(path, chosen)
    left_out = [*unusable, *dropped, *left_out]
    if first:
        for p, why in [*unusable, *dropped]:
            if why != _PYTABLES_INDEX:
                log.warning("%s: leaving out %s: %s", path, p, why)
    return FileMeta(chosen[0].rows, chosen, sorted(left_out), specs, attrs)
