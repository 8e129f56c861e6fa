"""``TransformSpec``: a user function applied to rows (or batches) plus the schema change it makes.

Same constructor and semantics as ``petastorm.transform`` 0.12.1. ``transform_schema`` also
accepts petastorm's own ``TransformSpec`` and ``Unischema`` objects (duck typing).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from pipeline.format.unischema import Unischema, UnischemaField

__all__ = ["TransformSpec", "edit_field", "transform_schema"]

log = logging.getLogger(__name__)


def edit_field(name: str, numpy_dtype: Any, shape: tuple[int | None, ...], nullable: bool = False) -> tuple:
    """The 4-tuple ``(name, numpy_dtype, shape, nullable)`` that ``edit_fields`` expects."""
    return name, numpy_dtype, shape, nullable


class TransformSpec:
    """A transform and the schema it produces.

    Args:
        func: Called on each row (a dict of field -> value) of a Petastorm dataset, or on each
            ``pandas.DataFrame`` batch of plain Parquet; returns the transformed row or frame.
            Defaults to ``None`` (only remove or select fields).
        edit_fields: Fields that ``func`` adds or changes, as ``(name, numpy_dtype, shape,
            nullable)`` tuples. Defaults to ``None`` (none).
        removed_fields: Names of fields dropped after ``func``. Defaults to ``None`` (none).
        selected_fields: Names of the fields to keep, in this order. Defaults to ``None`` (all).

    Raises:
        ValueError: Both ``removed_fields`` and ``selected_fields`` are given.
    """

    def __init__(
        self,
        func: Callable[[Any], Any] | None = None,
        edit_fields: Sequence[tuple] | None = None,
        removed_fields: Sequence[str] | None = None,
        selected_fields: Sequence[str] | None = None,
    ) -> None:
        self.func = func
        self.edit_fields = edit_fields or []
        if removed_fields is not None and selected_fields is not None:
            raise ValueError(
                "User can only specify one of removed_fields and selected_fields in TransformSpec."
            )
        self.removed_fields = removed_fields or []
        self.selected_fields = selected_fields

    def __repr__(self) -> str:
        return (
            f"TransformSpec(func={self.func!r}, edit_fields={self.edit_fields!r}, "
            f"removed_fields={self.removed_fields!r}, selected_fields={self.selected_fields!r})"
        )


def transform_schema(schema: Any, transform_spec: Any) -> Unischema:
    """The schema after ``transform_spec``: edited fields replace (or join, at the end) the
    originals, removed fields go, and ``selected_fields`` keeps those fields in its order.

    Unknown names in ``removed_fields`` / ``selected_fields`` are ignored (with a warning in the
    log), as petastorm does.
    """
    removed = set(transform_spec.removed_fields)
    unknown = removed - set(schema.fields)
    if unknown:
        log.warning("removed_fields names fields that are not in the schema, ignored: %s", sorted(unknown))
    excluded = {f[0] for f in transform_spec.edit_fields} | removed
    fields = [f for name, f in schema.fields.items() if name not in excluded]
    for edit in transform_spec.edit_fields:
        fields.append(
            UnischemaField(name=edit[0], numpy_dtype=edit[1], shape=edit[2], codec=None, nullable=edit[3])
        )
    selected = transform_spec.selected_fields
    if selected is not None:
        selected = list(selected)
        unknown = set(selected) - {f.name for f in fields}
        if unknown:
            log.warning(
                "selected_fields names fields that are not in the schema, ignored: %s", sorted(unknown)
            )
        fields = sorted((f for f in fields if f.name in selected), key=lambda f: selected.index(f.name))
    return Unischema(f"{schema._name}_transformed", fields)
