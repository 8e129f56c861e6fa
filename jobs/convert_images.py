"""spark-submit job: image folder / manifest -> Petastorm dataset.

    spark-submit --master spark://HOST:7077 jobs/convert_images.py SRC DEST [--size HxW] ...

Same flags and behaviour as ``pipeline convert images`` (see ``--help``).
"""

import sys

from pipeline.convert.runner import job_main

if __name__ == "__main__":
    sys.exit(job_main("images"))
