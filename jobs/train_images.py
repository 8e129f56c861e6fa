"""Train the image classifier (SmallCNN) on a converted image dataset through TorchDistributor.

    .venv/bin/python jobs/train_images.py --train-url data/demo/datasets/train --eval-url data/demo/datasets/heldout
    .venv/bin/python jobs/train_images.py --num-processes 2 --no-gpu          # 2 CPU ranks (gloo)
    .venv/bin/python jobs/train_images.py --gpu                               # one rank per GPU (NCCL)
    spark-submit --master spark://HOST:7077 jobs/train_images.py --cluster    # ranks on the executors

Defaults: conf/train_images.yaml. Writes RUN_DIR/checkpoint.pt, metrics.json, loss_curve.png;
running again on the same RUN_DIR resumes (``--no-resume`` starts over).
"""

import sys

from pipeline.train.image_classifier import ImageTrainConfig, run_image_training
from pipeline.train.jobs import job_main

if __name__ == "__main__":
    sys.exit(job_main("images", ImageTrainConfig, run_image_training))
