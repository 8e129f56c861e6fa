"""Petastorm env: ``open_loader(url, engine="petastorm", ...)`` and its options, end to end.

Usage: python run_engine.py OUT.pkl PETASTORM_URL PARQUET_URL

Dumps (portable.dump) the batches of each run below, as lists of dicts of numpy arrays or lists,
for the default env's test to check: stored order against its own reader, seeds, shards, epochs,
a TransformSpec of ours, and a plain Parquet store (make_batch_reader).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

import pipeline
from pipeline.format import TransformSpec
from pipeline.loader.petastorm_engine import PetastormLoader
from pipeline.predicates import in_lambda

sys.path.insert(0, str(Path(__file__).resolve().parent))
import portable

FIELDS = ["id", "small", "ratio", "matrix", "varlen", "packed", "png", "png_gray", "jpeg", "name"]


def run(url: str, **kwargs) -> list[dict]:
    """Batches of one loader through open_loader(engine="petastorm")."""
    with pipeline.open_loader(url, engine="petastorm", **kwargs) as loader:
        assert isinstance(loader, PetastormLoader), type(loader)
        out = []
        for batch in loader:
            out.append({k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
        stats = loader.stats()
    assert stats["batches"] == len(out), stats
    return out


def double_ratio(row: dict) -> dict:
    row["ratio"] = row["ratio"] * 2
    row["twice"] = np.int64(row["id"] * 2)
    return row


def main(out: str, url: str, parquet_url: str) -> None:
    base = {"batch_size": 4, "fields": FIELDS, "workers": 1}
    spec = TransformSpec(
        double_ratio, edit_fields=[("twice", np.int64, (), False)], selected_fields=["id", "ratio", "twice"]
    )
    runs = {
        "stored": run(url, shuffle=False, **base),
        "seed3": run(url, shuffle=True, seed=3, **base),
        "seed3_again": run(url, shuffle=True, seed=3, **base),
        "seed4": run(url, shuffle=True, seed=4, **base),
        "rank0": run(url, shuffle=False, rank=0, world_size=2, **base),
        "rank1": run(url, shuffle=False, rank=1, world_size=2, **base),
        "epochs2": run(url, shuffle=False, num_epochs=2, **base),
        "predicate": run(url, shuffle=False, predicate=in_lambda(["id"], lambda i: i % 2 == 0), **base),
        "drop_last": run(url, shuffle=False, drop_last=True, **base),
        "transform": run(url, shuffle=False, batch_size=4, fields=["id", "ratio"], transform=spec, workers=1),
        "parquet": run(parquet_url, shuffle=False, batch_size=5, workers=1),
        # workers_type="process" selects petastorm's process pool
        "process_pool": run(
            url, shuffle=False, workers_type="process", batch_size=4, fields=["id", "png"], workers=2
        ),
    }
    portable.dump(runs, out)


if __name__ == "__main__":
    main(*sys.argv[1:])
