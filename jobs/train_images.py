"""Train the image classifier (SmallCNN) on a converted image dataset through TorchDistributor (= `pipeline train images`, same flags and exit codes).

    .venv/bin/python jobs/train_images.py --train-url DATASET --epochs 5
    PYSPARK_PYTHON=.venv/bin/python .venv/bin/spark-submit --master spark://HOST:7077 jobs/train_images.py --cluster

Defaults: conf/train_images.yaml. Writes RUN_DIR/checkpoint.pt, metrics.json, loss_curve.png;
running again on the same RUN_DIR resumes (``--no-resume`` starts over).
"""

import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", "images", *sys.argv[1:]]))
