"""The Python-worker daemon of the local Spark sessions this package starts (``spark.python.daemon.module``).

PySpark's own daemon, run in a process group of its own: a Ctrl-C in a terminal reaches the
whole foreground process group, and each Python worker in it would die printing a
``KeyboardInterrupt`` traceback while the driver is already cancelling the job. Cancelling is the
driver's business (see :func:`pipeline.spark.spark_session`); Spark still stops the workers.
"""

from __future__ import annotations

import os

if __name__ == "__main__":
    os.setpgid(0, 0)
    from pyspark.daemon import manager

    manager()
