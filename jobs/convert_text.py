"""spark-submit job: .txt / .jsonl corpus -> Petastorm dataset of token ids.

    spark-submit --master spark://HOST:7077 jobs/convert_text.py SRC DEST [--seq-len N] [--tokenizer bytes|PATH] ...

Same flags and behaviour as ``pipeline convert text`` (see ``--help``).
"""

import sys

from pipeline.convert.runner import job_main

if __name__ == "__main__":
    sys.exit(job_main("text"))
