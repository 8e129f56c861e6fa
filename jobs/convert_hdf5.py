"""spark-submit job: HDF5 file(s) -> dataset, one row per first-axis index (= `pipeline convert hdf5`, same flags and exit codes).

    PYSPARK_PYTHON=.venv/bin/python .venv/bin/spark-submit --master spark://HOST:7077 \
        jobs/convert_hdf5.py SRC DEST [--datasets A,B] ...
"""

import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", "hdf5", *sys.argv[1:]]))
