"""Petastorm env: read datasets with petastorm's own make_reader and make_batch_reader.

Usage: python read_with_petastorm.py OUT.pkl URL [URL ...]

For each URL, dumps (portable.dump) ``{"reader": [row dict, ...], "batch": {field: [value, ...]}}``
in stored order (one worker, no shuffling) for the default env to compare with its own reads.
"""

from __future__ import annotations

import sys
from pathlib import Path

from petastorm import make_batch_reader, make_reader

sys.path.insert(0, str(Path(__file__).resolve().parent))
import portable

ORDERED = {"workers_count": 1, "shuffle_row_groups": False, "num_epochs": 1}


def read(url: str) -> dict:
    with make_reader(url, **ORDERED) as reader:
        rows = [row._asdict() for row in reader]
    batch: dict[str, list] = {}
    with make_batch_reader(url, **ORDERED) as reader:
        for chunk in reader:
            for name, values in chunk._asdict().items():
                batch.setdefault(name, []).extend(list(values))
    return {"reader": rows, "batch": batch}


def main(out: str, *urls: str) -> None:
    portable.dump({url: read(url) for url in urls}, out)


if __name__ == "__main__":
    main(*sys.argv[1:])
