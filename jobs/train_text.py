"""Train the tiny causal language model on packed token rows through TorchDistributor (= `pipeline train text`, same flags and exit codes).

    .venv/bin/python jobs/train_text.py --train-url DATASET --epochs 5
    PYSPARK_PYTHON=.venv/bin/python .venv/bin/spark-submit --master spark://HOST:7077 jobs/train_text.py --cluster

Defaults: conf/train_text.yaml. Writes RUN_DIR/checkpoint.pt, metrics.json, loss_curve.png;
running again on the same RUN_DIR resumes (``--no-resume`` starts over).
"""

import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", "text", *sys.argv[1:]]))
