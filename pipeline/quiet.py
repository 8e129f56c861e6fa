"""Narrow filters for third-party warnings that users of the ``pipeline`` commands cannot act on.

Each filter names the exact message and the package that emits it, so that any other warning
(ours, or a new one from these packages) still shows.
"""

from __future__ import annotations

import warnings

__all__ = ["THIRD_PARTY_WARNINGS", "quiet_third_party_warnings"]

THIRD_PARTY_WARNINGS: tuple[tuple[str, type[Warning], str], ...] = (
    # pyspark >= 4.1 on pandas 3 (the default stack; the suite tests our pandas paths there).
    (r"PySpark does not yet fully support pandas >= 3", FutureWarning, r"pyspark(\.|$)"),
    # petastorm 0.12.1 (the petastorm extra) calls pyarrow 14's legacy dataset API.
    (r"", FutureWarning, r"petastorm(\.|$)"),
    (r"", DeprecationWarning, r"petastorm(\.|$)"),
)
"""``(message regex, category, module regex)`` of each silenced warning."""


def quiet_third_party_warnings() -> None:
    """Install the filters of :data:`THIRD_PARTY_WARNINGS` (idempotent)."""
    for message, category, module in THIRD_PARTY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
