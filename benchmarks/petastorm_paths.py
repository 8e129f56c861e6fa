"""Petastorm env side of the benchmarks: petastorm's own loaders, timed with pipeline.bench.

Run by bench_loader.py with ``.venv-petastorm/bin/python`` (petastorm 0.12.1 cannot import on the
default stack); prints one JSON line ``{path name: BenchResult as dict}`` on stdout::

    .venv-petastorm/bin/python benchmarks/petastorm_paths.py URL --batch-size 64 --epochs 1 \\
        --repeat 3 --workers 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pipeline
from pipeline.bench import BenchResult, measure

warnings.filterwarnings("ignore", module=r"petastorm(\.|$)")

FIELDS = ["image", "label"]
"""Fields every path reads (petastorm's DataLoaders cannot batch the dataset's string fields)."""


def make_reader_path(url: str, args: argparse.Namespace) -> BenchResult:
    from petastorm import make_reader
    from petastorm.pytorch import DataLoader

    return measure(
        lambda: DataLoader(
            make_reader(
                url,
                schema_fields=FIELDS,
                num_epochs=args.epochs,
                workers_count=args.workers,
                reader_pool_type="thread",
            ),
            batch_size=args.batch_size,
        )
    )


def batch_reader_path(url: str, args: argparse.Namespace) -> BenchResult:
    import cv2
    from petastorm import make_batch_reader
    from petastorm.pytorch import BatchedDataLoader
    from petastorm.transform import TransformSpec

    shape = tuple(args.image_shape)

    def decode(frame):
        frame["image"] = frame["image"].map(
            lambda b: cv2.cvtColor(
                cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB
            )
        )
        return frame

    spec = TransformSpec(decode, edit_fields=[("image", np.uint8, shape, False)])
    return measure(
        lambda: BatchedDataLoader(
            make_batch_reader(
                url,
                schema_fields=FIELDS,
                num_epochs=args.epochs,
                workers_count=args.workers,
                transform_spec=spec,
            ),
            batch_size=args.batch_size,
        )
    )


def engine_path(url: str, args: argparse.Namespace) -> BenchResult:
    return measure(
        lambda: pipeline.open_loader(
            url, engine="petastorm", fields=FIELDS, batch_size=args.batch_size, workers=args.workers,
            num_epochs=args.epochs, seed=0, config=None,
        )
    )  # fmt: skip


PATHS = {
    "petastorm make_reader + DataLoader": make_reader_path,
    "petastorm make_batch_reader + TransformSpec + BatchedDataLoader": batch_reader_path,
    'open_loader(engine="petastorm")': engine_path,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--image-shape", type=int, nargs=3, default=(64, 64, 3))
    args = parser.parse_args(argv)
    best: dict[str, BenchResult] = {}
    for _ in range(args.repeat):
        for name, path in PATHS.items():
            result = path(args.url, args)
            if name not in best or result.samples_per_s > best[name].samples_per_s:
                best[name] = result
    print(json.dumps({name: dataclasses.asdict(r) for name, r in best.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
