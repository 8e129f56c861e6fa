"""spark-submit job: Spark table, SQL query or Parquet -> dataset (= `pipeline convert table`).

    PYSPARK_PYTHON=.venv/bin/python .venv/bin/spark-submit --master spark://HOST:7077 \
        jobs/convert_table.py SOURCE DEST [--sql | --parquet] ...
"""

import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", "table", *sys.argv[1:]]))
