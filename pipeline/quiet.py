"""Filters for third-party warnings that users of the ``pipeline`` commands cannot act on.

:func:`quiet_third_party_warnings` installs narrow filters, each naming the exact message and
the package that emits it (``spark_session`` installs them too, for library users).
:func:`quiet_all_third_party_warnings` is what the commands do unless ``-v``: no warning from the
packages in :data:`THIRD_PARTY_PACKAGES` reaches the terminal; ours still show.
"""

from __future__ import annotations

import warnings

__all__ = [
    "THIRD_PARTY_PACKAGES",
    "THIRD_PARTY_WARNINGS",
    "quiet_all_third_party_warnings",
    "quiet_third_party_warnings",
]

THIRD_PARTY_PACKAGES = (
    "pyspark",
    "py4j",
    "pyarrow",
    "petastorm",
    "pandas",
    "numpy",
    "torch",
    "h5py",
    "PIL",
    "botocore",
    "fsspec",
)
"""Packages whose warnings the commands show only with ``-v``."""

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


def quiet_all_third_party_warnings() -> None:
    """Ignore every warning raised from a module of :data:`THIRD_PARTY_PACKAGES` (and the named ones)."""
    quiet_third_party_warnings()
    for package in THIRD_PARTY_PACKAGES:
        warnings.filterwarnings("ignore", module=rf"{package}(\.|$)")
