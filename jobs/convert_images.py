"""spark-submit job: image folder / manifest -> dataset (= `pipeline convert images`, same flags and exit codes).

    PYSPARK_PYTHON=.venv/bin/python .venv/bin/spark-submit --master spark://HOST:7077 \
        jobs/convert_images.py SRC DEST [--size HxW] ...
"""

import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", "images", *sys.argv[1:]]))
