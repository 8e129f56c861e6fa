"""Train / held-out splits made during a conversion: ``--split train=0.8,heldout=0.2 --seed N``.

Pure functions, no Spark. :func:`parse_split` validates the spec; :func:`assign_splits` decides
which split every item goes to:

* **stratified**: each label (class) is split on its own. Its items are put in a random order
  drawn from ``numpy.random.default_rng([seed, class position])`` and cut into consecutive runs of
  ``n * fraction`` items, rounded by largest remainder (ties go to the split named first), so
  that every class has the fractions as closely as whole items allow. A flat folder (label
  ``-1``) is one class.
* **exact**: every item lands in exactly one split; the same items, spec and seed give the same
  assignment on every machine (it does not depend on the number of Spark tasks).
* **small classes**: a class with too few items for every split to get one is still split by
  the same rule (its items go to the largest splits first) and is listed in
  :attr:`SplitPlan.short`, which the conversion logs and reports.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from pipeline.errors import ConfigError

__all__ = ["SplitPlan", "assign_splits", "parse_split"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_HINT = "write it like train=0.8,heldout=0.2 (names of letters, digits, _ . -; fractions summing to 1)"


def parse_split(spec: str) -> tuple[tuple[str, Fraction], ...]:
    """Parse ``"train=0.8,heldout=0.2"`` into ``(("train", 4/5), ("heldout", 1/5))``.

    Fractions are decimals (``0.8``), ratios (``1/3``) or percents (``80%``), each in (0, 1],
    read exactly (no floating point) and summing to exactly 1 (for thirds write ``1/3``). Names
    are folder names: letters, digits, ``_``, ``.`` and ``-``, not starting with ``.``, ``_`` or
    ``-``, and unique.

    Raises:
        ConfigError: The spec is malformed; the message names the part at fault.
    """
    parts = [p.strip() for p in str(spec).split(",")]
    if not spec or not str(spec).strip() or any(not p for p in parts):
        raise ConfigError(f"--split {spec!r}: empty split", hint=_HINT)
    splits: list[tuple[str, Fraction]] = []
    for part in parts:
        name, eq, value = (v.strip() for v in part.partition("="))
        if not eq or not name or not value:
            raise ConfigError(f"--split {spec!r}: {part!r} is not NAME=FRACTION", hint=_HINT)
        if not _NAME.fullmatch(name):
            raise ConfigError(f"--split {spec!r}: {name!r} is not a usable folder name", hint=_HINT)
        try:
            fraction = Fraction(value[:-1]) / 100 if value.endswith("%") else Fraction(value)
        except (ValueError, ZeroDivisionError):
            raise ConfigError(f"--split {spec!r}: {value!r} is not a number", hint=_HINT) from None
        if not 0 < fraction <= 1:
            raise ConfigError(
                f"--split {spec!r}: fraction of {name!r} must be in (0, 1], got {value}", hint=_HINT
            )
        splits.append((name, fraction))
    names = [n for n, _ in splits]
    if len(set(names)) != len(names):
        raise ConfigError(f"--split {spec!r}: a split name appears twice", hint=_HINT)
    total = sum(f for _, f in splits)
    if total != 1:
        raise ConfigError(f"--split {spec!r}: fractions sum to {float(total):g}, not 1", hint=_HINT)
    return tuple(splits)


@dataclass(frozen=True)
class SplitPlan:
    """Which split each item goes to, and what the split looks like."""

    names: tuple[str, ...]
    assignment: tuple[int, ...]
    """Index into ``names`` for each item, in the order the items were given."""
    counts: dict[str, int]
    """Items per split."""
    short: dict[int, dict[str, int]]
    """Classes (labels) that have no item in some split: label -> items per split."""

    def items_of(self, split: int, items: Sequence[object]) -> list[object]:
        """The items of split number ``split``, in their given order."""
        return [item for item, s in zip(items, self.assignment, strict=True) if s == split]


def _apportion(n: int, fractions: Sequence[Fraction]) -> list[int]:
    """``n`` items into parts of ``n * fraction``, largest remainder first (ties: earlier part)."""
    exact = [n * f for f in fractions]
    counts = [int(x) for x in exact]  # floor (non-negative)
    order = sorted(range(len(exact)), key=lambda i: (-(exact[i] - counts[i]), -fractions[i], i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def assign_splits(
    labels: Sequence[int], splits: Sequence[tuple[str, Fraction]], *, seed: int = 0
) -> SplitPlan:
    """Assign each item (given by its label) to one split, stratified by label (see module doc).

    Args:
        labels: One label per item; items with the same label are one class (``-1`` too).
        splits: ``(name, fraction)`` pairs from :func:`parse_split`.
        seed: Seed of the random order inside each class. Defaults to ``0``.

    Raises:
        ConfigError: ``seed`` is negative.
    """
    if seed < 0:
        raise ConfigError(f"--seed must be >= 0, got {seed}")
    names = tuple(n for n, _ in splits)
    fractions = [f for _, f in splits]
    assignment = np.full(len(labels), -1, dtype=np.int64)
    label_array = np.asarray(labels, dtype=np.int64)
    short: dict[int, dict[str, int]] = {}
    for position, label in enumerate(sorted(set(label_array.tolist()))):
        members = np.flatnonzero(label_array == label)
        order = np.random.default_rng([seed, position]).permutation(len(members))
        counts = _apportion(len(members), fractions)
        bounds = np.cumsum([0, *counts])
        for split, (a, b) in enumerate(itertools.pairwise(bounds)):
            assignment[members[order[a:b]]] = split
        if min(counts) == 0:
            short[int(label)] = dict(zip(names, counts, strict=True))
    totals = np.bincount(assignment, minlength=len(names)) if len(labels) else np.zeros(len(names), int)
    return SplitPlan(
        names=names,
        assignment=tuple(int(v) for v in assignment),
        counts={name: int(c) for name, c in zip(names, totals, strict=True)},
        short=short,
    )
