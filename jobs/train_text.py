"""Train the tiny causal language model on packed token rows through TorchDistributor.

    .venv/bin/pipeline convert text corpus/ data/corpus/train --seq-len 128
    .venv/bin/python jobs/train_text.py --train-url data/corpus/train --epochs 5
    spark-submit --master spark://HOST:7077 jobs/train_text.py --cluster

Defaults: conf/train_text.yaml. Writes RUN_DIR/checkpoint.pt, metrics.json, loss_curve.png;
running again on the same RUN_DIR resumes (``--no-resume`` starts over).
"""

import sys

from pipeline.train.jobs import job_main
from pipeline.train.text_lm import TextTrainConfig, run_text_training

if __name__ == "__main__":
    sys.exit(job_main("text", TextTrainConfig, run_text_training))
