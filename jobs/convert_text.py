"""spark-submit job: .txt / .jsonl corpus -> dataset of token ids (= `pipeline convert text`, same flags and exit codes).

    PYSPARK_PYTHON=.venv/bin/python .venv/bin/spark-submit --master spark://HOST:7077 \
        jobs/convert_text.py SRC DEST [--seq-len N] [--tokenizer bytes|PATH] ...
"""

import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", "text", *sys.argv[1:]]))
