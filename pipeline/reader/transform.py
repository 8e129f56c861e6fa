"""Petastorm ``TransformSpec`` semantics on numpy columns: per row, or per ``pandas.DataFrame``.

* Row form (``make_reader``, Petastorm datasets): ``func(row_dict) -> row_dict`` for each row,
  then ``removed_fields`` are dropped.
* Batch form (``make_batch_reader``, plain Parquet): ``func(DataFrame) -> DataFrame`` per
  row-group slice, then ``removed_fields`` are dropped.

The fields after the transform follow petastorm's ``transform_schema`` (``edit_fields``,
``removed_fields``, ``selected_fields``; :func:`pipeline.format.transform_schema`); their :class:`FieldSpec` fixes how values are held.
A transform must keep the number of rows: the shard plan counts rows before reading them.
The reader writes the row form's results straight into its row buffer
(:func:`transform_rows_into`: in worker processes, the shared-memory rows).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.errors import PipelineError
from pipeline.format import transform_schema
from pipeline.reader.decode import FieldSpec, ReadCancelled, spec_from_unischema

__all__ = ["apply_transform_spec", "transform_rows_into", "transformed_specs"]


def transformed_specs(unischema: Any, spec: Any) -> dict[str, FieldSpec]:
    """Field specs after ``spec`` (ours or petastorm's ``TransformSpec``), in output order."""
    schema = transform_schema(unischema, spec)
    return {name: spec_from_unischema(f) for name, f in schema.fields.items()}


def apply_transform_spec(
    spec: Any, columns: dict[str, np.ndarray], rows: int, out_specs: dict[str, FieldSpec], *, batch: bool
) -> dict[str, np.ndarray]:
    """Apply ``spec`` to one chunk of columns and return the columns ``out_specs`` describes."""
    if spec.func is None:
        values: dict[str, Any] = dict(columns)
    elif batch:
        values = _apply_to_frame(spec.func, columns, rows)
    else:
        values = _apply_to_rows(spec.func, columns, rows)
    for name in spec.removed_fields:
        values.pop(name, None)
    out = {}
    for name, fspec in out_specs.items():
        if name not in values:
            raise _missing(name)
        out[name] = _as_column(fspec, values[name], rows)
    return out


def transform_rows_into(
    spec: Any,
    columns: dict[str, np.ndarray],
    rows: int,
    out_specs: dict[str, FieldSpec],
    out: dict[str, np.ndarray],
    positions: np.ndarray,
    cancel: Any = None,
) -> None:
    """Row form: apply ``spec.func`` to each row and write its fields straight into
    ``out[name][positions[i]]`` (the reader's row buffer): no stacked column per chunk, no second
    copy. The same checks as :func:`apply_transform_spec`; ``cancel``, when set, stops the loop
    (``ReadCancelled``)."""
    func = spec.func
    names = list(columns)
    for i in range(rows):
        if cancel is not None and i % 64 == 0 and cancel.is_set():
            raise ReadCancelled
        result = func({name: columns[name][i] for name in names})
        position = positions[i]
        for name, fspec in out_specs.items():
            if name not in result:
                raise _missing(name)
            out[name][position] = _row_value(fspec, result[name])


def _missing(name: str) -> PipelineError:
    return PipelineError(
        f"transform did not return field {name!r}",
        hint="return every field of the post-transform schema, or list it in removed_fields",
    )


def _apply_to_rows(func: Any, columns: dict[str, np.ndarray], rows: int) -> dict[str, list[Any]]:
    results = [func({name: col[i] for name, col in columns.items()}) for i in range(rows)]
    names = results[0].keys() if results else columns.keys()
    return {name: [r.get(name) for r in results] for name in names}


def _apply_to_frame(func: Any, columns: dict[str, np.ndarray], rows: int) -> dict[str, Any]:
    import pandas as pd

    frame = pd.DataFrame({name: col if col.ndim == 1 else list(col) for name, col in columns.items()})
    result = func(frame)
    if not isinstance(result, pd.DataFrame):
        raise PipelineError(
            f"batch-form TransformSpec func must return a pandas DataFrame, got {type(result).__name__}"
        )
    if len(result) != rows:
        raise PipelineError(
            f"transform changed the number of rows from {rows} to {len(result)}",
            hint="keep one output row per input row; filter rows with a petastorm predicate instead",
        )
    return {name: result[name].to_numpy() for name in result.columns}


def _as_column(spec: FieldSpec, values: Any, rows: int) -> np.ndarray:
    """Hold ``values`` (a list, a Series' array or an ndarray) the way ``spec`` prescribes."""
    if len(values) != rows:
        raise PipelineError(f"field {spec.name!r}: transform returned {len(values)} values for {rows} rows")
    if spec.kind == "fixed":
        if isinstance(values, np.ndarray) and values.dtype != object and values.shape[1:] == spec.shape:
            return values.astype(spec.dtype, copy=False)
        out = np.empty((rows, *spec.shape), dtype=spec.dtype)
    else:
        out = np.empty(rows, dtype=object)
    for i, value in enumerate(values):
        out[i] = _row_value(spec, value)
    return out


def _row_value(spec: FieldSpec, value: Any) -> Any:
    """One row's value of a field as ``spec`` holds it (fixed: an array of the declared shape)."""
    if spec.kind == "fixed":
        value = np.asarray(value)
        if value.shape != spec.shape:
            raise PipelineError(
                f"field {spec.name!r}: transform returned shape {value.shape}, the schema says {spec.shape}",
                hint="declare the new shape with TransformSpec(edit_fields=[(name, dtype, shape, nullable)])",
            )
        return value
    return np.asarray(value, dtype=spec.dtype) if spec.kind == "ragged" else value
