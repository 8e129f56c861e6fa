"""HDF5 compression filters: load ``hdf5plugin``'s decoders, and name the one a file lacks.

``hdf5plugin`` registers Blosc, Blosc2, Bitshuffle, BZip2, LZ4, Zstd, ZFP, SZ, SZ3, SPERR,
FCIDECOMP and HTJ2K with the HDF5 library that ``h5py`` uses, on import. Spark executors are
separate Python processes, so :func:`register_plugins` runs in each task before it opens a
file, as well as on the driver.
"""

from __future__ import annotations

import functools
import logging

from pipeline.errors import InputError

__all__ = ["FILTERS", "missing_filter_error", "register_plugins"]

log = logging.getLogger(__name__)

FILTERS: dict[int, tuple[str, str | None]] = {
    1: ("deflate (gzip)", "h5py"),
    2: ("shuffle", "h5py"),
    3: ("fletcher32", "h5py"),
    4: ("szip", "h5py (wheels built with libaec)"),
    5: ("nbit", "h5py"),
    6: ("scaleoffset", "h5py"),
    32000: ("LZF", "h5py"),
    305: ("LZO", None),
    307: ("BZip2", "hdf5plugin"),
    32001: ("Blosc", "hdf5plugin"),
    32002: ("MAFISC", None),
    32003: ("Snappy", None),
    32004: ("LZ4", "hdf5plugin"),
    32008: ("Bitshuffle", "hdf5plugin"),
    32013: ("ZFP", "hdf5plugin"),
    32015: ("Zstd", "hdf5plugin"),
    32017: ("SZ", "hdf5plugin"),
    32018: ("FCIDECOMP", "hdf5plugin"),
    32024: ("SZ3", "hdf5plugin"),
    32026: ("Blosc2", "hdf5plugin"),
    32028: ("SPERR", "hdf5plugin"),
    32033: ("HTJ2K", "hdf5plugin"),
}
"""Registered HDF5 filter ids -> (name, the Python package that decodes it for h5py, or ``None``)."""


@functools.cache
def register_plugins() -> bool:
    """Import ``hdf5plugin`` (once per process) so that its filters decode; ``False`` if it is missing."""
    try:
        import hdf5plugin  # noqa: F401
    except ImportError:
        log.debug("hdf5plugin is not installed: Blosc, Zstd, LZ4, Bitshuffle, ... filters will not decode")
        return False
    return True


def missing_filter_error(source: str, dataset: str, code: int, stored_name: str) -> InputError:
    """The error for a dataset whose filter ``code`` no installed plugin decodes."""
    name, package = FILTERS.get(code, (stored_name or "unregistered", None))
    message = (
        f"{source}: dataset {dataset} is compressed with HDF5 filter {code} ({name}), which no "
        "installed HDF5 plugin decodes"
    )
    if package == "hdf5plugin":
        hint = "`pip install hdf5plugin` (>= 4.0) provides it"
    elif package:
        hint = f"it is provided by {package}; reinstall h5py from its wheel"
    elif code == 305:
        hint = (
            "LZO is written by PyTables and no package adds it to h5py; re-compress the file, e.g. "
            "`ptrepack --complib=blosc:zstd IN OUT` or `h5repack -f GZIP=4 IN OUT`"
        )
    else:
        hint = (
            "find the plugin in the HDF Group's list of registered filter plugins and point "
            "HDF5_PLUGIN_PATH at it, or re-compress with `h5repack -f GZIP=4 IN OUT`"
        )
    return InputError(message, hint=f"{hint}; or leave the dataset out with --datasets")
