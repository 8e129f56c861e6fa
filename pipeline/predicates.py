"""Row predicates for ``open_loader(..., predicate=...)``: petastorm's, without petastorm.

Same constructors and results as ``petastorm.predicates`` 0.12.1, including
:class:`in_pseudorandom_split`'s MD5 bucketing, so a split made here selects the same rows as
petastorm's. A predicate has ``get_fields()`` (the fields it reads) and ``do_include(values)``
(``values``: field -> decoded value of one row); petastorm's own predicates work as well.

Example::

    from pipeline.predicates import in_lambda, in_pseudorandom_split
    train = in_pseudorandom_split([0.8, 0.2], 0, "id")
    big = in_lambda(["label"], lambda label: label > 3)
"""

from __future__ import annotations

import abc
import collections.abc
import hashlib
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "PredicateBase",
    "in_intersection",
    "in_lambda",
    "in_negate",
    "in_pseudorandom_split",
    "in_reduce",
    "in_set",
]


def _is_predicate(value: Any) -> bool:
    return callable(getattr(value, "get_fields", None)) and callable(getattr(value, "do_include", None))


class PredicateBase(abc.ABC):
    """Base class of row predicates."""

    @abc.abstractmethod
    def get_fields(self) -> set[str]:
        """Names of the fields ``do_include`` reads."""

    @abc.abstractmethod
    def do_include(self, values: dict[str, Any]) -> bool:
        """Whether the row with these field values is kept."""


def _string_to_bucket(text: str, buckets: int) -> int:
    return int(hashlib.md5(text.encode("utf-8")).hexdigest(), 16) % buckets


class in_set(PredicateBase):
    """Keep rows whose ``predicate_field`` value is in ``inclusion_values``."""

    def __init__(self, inclusion_values: Iterable[Any], predicate_field: str) -> None:
        self._inclusion_values = set(inclusion_values)
        self._predicate_field = predicate_field

    def get_fields(self) -> set[str]:
        return {self._predicate_field}

    def do_include(self, values: dict[str, Any]) -> bool:
        return values[self._predicate_field] in self._inclusion_values


class in_intersection(PredicateBase):
    """Keep rows whose ``predicate_field`` (a list/array) holds at least one of ``inclusion_values``."""

    def __init__(self, inclusion_values: Iterable[Any], _predicate_field: str) -> None:
        self._inclusion_values = list(inclusion_values)
        self._predicate_field = _predicate_field

    def get_fields(self) -> set[str]:
        return {self._predicate_field}

    def do_include(self, values: dict[str, Any]) -> bool:
        value = values[self._predicate_field]
        if not isinstance(value, collections.abc.Iterable):
            raise ValueError("Predicate field should have iterable type")
        return bool(np.any(np.isin(np.asarray(value).ravel(), self._inclusion_values)))


class in_lambda(PredicateBase):
    """Keep rows for which ``predicate_func(*field values[, state_arg])`` is true.

    Args:
        predicate_fields: The fields passed to the function, in this order (a list).
        predicate_func: E.g. ``lambda label: label > 3``.
        state_arg: Passed after the field values when not ``None``. Defaults to ``None``.
    """

    def __init__(
        self, predicate_fields: list[str], predicate_func: Callable[..., Any], state_arg: Any = None
    ) -> None:
        if not isinstance(predicate_fields, list):
            raise ValueError("Predicate fields should be a list")
        self._predicate_fields = predicate_fields
        self._predicate_func = predicate_func
        self._state_arg = state_arg

    def get_fields(self) -> set[str]:
        return set(self._predicate_fields)

    def do_include(self, values: dict[str, Any]) -> bool:
        args = [values[field] for field in self._predicate_fields]
        if self._state_arg is not None:
            args.append(self._state_arg)
        return self._predicate_func(*args)


class in_negate(PredicateBase):
    """Keep the rows that ``predicate`` drops."""

    def __init__(self, predicate: Any) -> None:
        if not _is_predicate(predicate):
            raise ValueError("Predicate is nor derived from PredicateBase")
        self._predicate = predicate

    def get_fields(self) -> set[str]:
        return set(self._predicate.get_fields())

    def do_include(self, values: dict[str, Any]) -> bool:
        return not self._predicate.do_include(values)


class in_reduce(PredicateBase):
    """Combine predicates: ``reduce_func([p.do_include(values) for p in predicate_list])``.

    ``all`` is a logical AND, ``any`` a logical OR.
    """

    def __init__(self, predicate_list: Sequence[Any], reduce_func: Callable[[list[bool]], Any]) -> None:
        if not all(_is_predicate(p) for p in predicate_list):
            raise ValueError("Predicate is nor derived from PredicateBase")
        self._predicate_list = list(predicate_list)
        self._reduce_func = reduce_func

    def get_fields(self) -> set[str]:
        fields: set[str] = set()
        for predicate in self._predicate_list:
            fields |= set(predicate.get_fields())
        return fields

    def do_include(self, values: dict[str, Any]) -> bool:
        return self._reduce_func([p.do_include(values) for p in self._predicate_list])


class in_pseudorandom_split(PredicateBase):
    """Keep subset ``subset_index`` of a split of the rows in ``fraction_list`` proportions.

    A row goes to a subset by the MD5 hash of ``str(value of predicate_field)``, as petastorm
    does: the split is the same on every run and agrees with petastorm's. It is not exact;
    avoid tiny fractions.

    Args:
        fraction_list: Fractions of the subsets, e.g. ``[0.8, 0.2]``.
        subset_index: Which subset to keep.
        predicate_field: The field whose value is hashed (an id).

    Raises:
        ValueError: ``subset_index`` is out of range.
    """

    def __init__(self, fraction_list: Sequence[float], subset_index: int, predicate_field: str) -> None:
        if subset_index >= len(fraction_list):
            raise ValueError("subset_index is out of range")
        self._predicate_field = predicate_field
        borders = [sum(fraction_list[: i + 1]) for i in range(len(fraction_list))]
        low = borders[subset_index - 1] if subset_index else 0
        self._bucket_low = low * (sys.maxsize - 1)
        self._bucket_high = borders[subset_index] * (sys.maxsize - 1)

    def get_fields(self) -> set[str]:
        return {self._predicate_field}

    def do_include(self, values: dict[str, Any]) -> bool:
        if self._predicate_field not in values:
            raise ValueError(f"Tested values does not have split key: {self._predicate_field}")
        bucket = _string_to_bucket(str(values[self._predicate_field]), sys.maxsize)
        return self._bucket_low <= bucket < self._bucket_high
