"""The Python-worker daemon of the local Spark sessions this package starts (``spark.python.daemon.module``).

PySpark's own daemon, with three changes:

* it runs in a process group of its own: a Ctrl-C in a terminal reaches the whole foreground
  process group, and each Python worker in it would die printing a ``KeyboardInterrupt``
  traceback while the driver is already cancelling the job. Cancelling is the driver's business
  (see :func:`pipeline.spark.spark_session`); Spark still stops the workers.
* PySpark is imported from the installed package, not from the ``pyspark.zip`` that Spark puts
  first on the workers' ``PYTHONPATH``, when that zip is the one inside this very package (a
  pip-installed PySpark ships both, same version): modules in a zip are compiled from source at
  every start (~0.5 CPU-s for the daemon alone), the package's have their ``.pyc`` files.
* ``pyspark.worker`` (what every worker imports right after it is forked) is imported once, here,
  before the first fork, instead of once in every worker.
"""

from __future__ import annotations

import os
import re
import sys


def _installed_home(name: str) -> str | None:
    """The folder of the installed package ``name`` (``sys.path`` as it is now), else ``None``."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    return os.path.dirname(spec.origin) if spec is not None and spec.origin else None


def _prefer_installed_pyspark() -> None:
    """Move Spark's ``python/lib`` zips to the end of ``sys.path`` when the installed packages are
    the same: ``pyspark.zip`` when it lies inside the installed ``pyspark`` package (pip's PySpark
    ships both), ``py4j-<version>-src.zip`` when the installed ``py4j`` is that version."""
    zips = [p for p in sys.path if re.fullmatch(r"pyspark\.zip|py4j-.+-src\.zip", os.path.basename(p))]
    if not zips:
        return
    saved = list(sys.path)
    sys.path[:] = [p for p in saved if p not in zips]
    movable = []
    for path in zips:
        name = os.path.basename(path)
        if name == "pyspark.zip":
            home = _installed_home("pyspark")
            spark_home = os.path.dirname(os.path.dirname(os.path.dirname(path)))
            same = home is not None and os.path.realpath(home) == os.path.realpath(spark_home)
        else:
            home = _installed_home("py4j")
            version = name[len("py4j-") : -len("-src.zip")]
            try:
                with open(os.path.join(home or "", "version.py"), encoding="utf-8") as fh:
                    same = home is not None and f"'{version}'" in fh.read().replace('"', "'")
            except OSError:
                same = False
        if same:
            movable.append(path)
    sys.path[:] = [p for p in saved if p not in movable] + movable


if __name__ == "__main__":
    os.setpgid(0, 0)
    _prefer_installed_pyspark()
    import pyspark.worker  # noqa: F401  (inherited by every forked worker)
    from pyspark.daemon import manager

    manager()
