"""spark-submit job: HDF5 file(s) -> Petastorm dataset, one row per first-axis index.

    spark-submit --master spark://HOST:7077 jobs/convert_hdf5.py SRC DEST [--datasets A,B] ...

Same flags and behaviour as ``pipeline convert hdf5`` (see ``--help``).
"""

import sys

from pipeline.convert.runner import job_main

if __name__ == "__main__":
    sys.exit(job_main("hdf5"))
