"""Random access beside the stream, and the memory mode's later epochs, in one run.

One dataset (default: ``--rows`` 64x64 JPEGs converted by ``pipeline convert images``, written
once under ``$TMPDIR``), read five ways::

    .venv/bin/python benchmarks/bench_random_access.py                 # 20,000 rows
    .venv/bin/python benchmarks/bench_random_access.py --rows 2000 --singles 300 --json   # small
    .venv/bin/python benchmarks/bench_random_access.py --url file:///data/my_dataset

1. ``ds[i]`` for random ``i`` (``open_dataset``, stream mode): p50/p99 latency and samples/s,
   cold (first touch of each row group) and warm (row groups in the LRU);
2. batched random access through torch's ``DataLoader`` with ``RandomSampler`` and
   ``--workers`` processes: as ``ds[indices]`` per batch (``BatchSampler``, ``batch_size=None``),
   and as rows collated by torch (``batch_size=B``: ``__getitems__`` + ``default_collate``);
3. the stream: ``open_loader`` (shuffled, ``--loader-workers`` threads), one epoch;
4. memory mode: ``open_dataset(cache="memory", preload=True)``: load time, then epochs 2+
   through a ``DataLoader`` with ``RandomSampler`` in batches (in-process: already decoded);
5. memory mode of the stream reader (``open_source(cache="memory")`` under the loader): epochs 2+.

Each stream and random-access figure is the best of ``--repeat`` epochs (shared machines are
noisy); memory figures are medians of epochs 2+. Aims (issue 14): memory epochs 2+ >= 3x the
stream; batched random access >= 0.5x the stream.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

import pipeline


def generate(root: Path, rows: int) -> str:
    """JPEG files -> ``pipeline convert images`` (once); returns the dataset URL."""
    from bench_loader import write_image_files

    files, ds = root / f"ra-files-{rows}", root / f"ra-jpeg-{rows}"
    write_image_files(files, rows)
    if not (ds / "_common_metadata").exists():
        cli = [
            sys.executable,
            "-m",
            "pipeline.cli",
            "convert",
            "images",
            str(files),
            str(ds),
            "--size",
            "64x64",
            "--encoding",
            "jpeg",
            "--overwrite",
            "--json",
        ]
        subprocess.run(cli, check=True, stdout=subprocess.DEVNULL)
    return ds.as_uri()


def singles(ds, indices: np.ndarray) -> dict[str, float]:
    times = np.empty(len(indices))
    for k, i in enumerate(indices.tolist()):
        t = time.perf_counter()
        ds[i]
        times[k] = time.perf_counter() - t
    return {
        "p50_ms": float(np.percentile(times, 50) * 1e3),
        "p99_ms": float(np.percentile(times, 99) * 1e3),
        "samples_per_s": float(len(times) / times.sum()),
    }


def epoch_rate(batches) -> float:
    t = time.perf_counter()
    rows = sum(len(b["label"]) for b in batches)
    return rows / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="dataset to read (default: generated JPEG dataset)")
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "pipeline-bench"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument(
        "--loader-workers", type=int, default=None, help="open_loader threads (default: cores)"
    )
    parser.add_argument("--singles", type=int, default=2000, help="random ds[i] calls timed")
    parser.add_argument("--epochs", type=int, default=3, help="memory mode epochs (1 load + the rest)")
    parser.add_argument("--repeat", type=int, default=3, help="epochs timed per path; the best is kept")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    url = args.url or generate(Path(args.data_dir), args.rows)
    bs = args.batch_size
    rng = np.random.default_rng(0)
    out: dict[str, object] = {"url": url, "batch_size": bs, "dataloader_workers": args.workers}

    ds = pipeline.open_dataset(url)
    out["rows"] = n = len(ds)
    picks = rng.integers(0, n, args.singles)
    out["single_cold"] = singles(ds, picks)
    out["single_warm"] = singles(ds, rng.integers(0, n, args.singles))
    out["stream_lru"] = ds.cache_info()

    def stream_epoch() -> float:
        with pipeline.open_loader(
            url, batch_size=bs, num_epochs=1, seed=0, workers=args.loader_workers, config=None
        ) as loader:
            return epoch_rate(loader)

    out["stream_samples_per_s"] = stream = max(stream_epoch() for _ in range(args.repeat))

    gen = torch.Generator().manual_seed(0)

    def batch_loader(data, workers: int) -> DataLoader:
        """Random batches as ``ds[indices]`` (one call per batch, columns converted to tensors)."""
        sampler = BatchSampler(RandomSampler(data, generator=gen), bs, drop_last=False)
        return DataLoader(
            data, sampler=sampler, batch_size=None, num_workers=workers, persistent_workers=workers > 0
        )

    rows_loader = DataLoader(
        ds,
        batch_size=bs,
        sampler=RandomSampler(ds, generator=gen),
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
    )
    epoch_rate(rows_loader)  # epoch 1 fills each worker's LRU
    out["batched_random_rows_samples_per_s"] = max(epoch_rate(rows_loader) for _ in range(args.repeat))
    del rows_loader
    batches = batch_loader(ds, args.workers)
    epoch_rate(batches)
    out["batched_random_samples_per_s"] = batched = max(epoch_rate(batches) for _ in range(args.repeat))
    del batches

    t = time.perf_counter()
    mem = pipeline.open_dataset(url, cache="memory", preload=True)
    out["memory_load_s"] = time.perf_counter() - t
    mem_loader = batch_loader(mem, 0)
    rates = [epoch_rate(mem_loader) for _ in range(max(1, args.epochs - 1))]
    out["memory_epochs_2plus_samples_per_s"] = memory = float(np.median(rates))

    from pipeline.access.source import open_source
    from pipeline.loader.loader import Loader
    from pipeline.reader.config import LoaderConfig, ReaderConfig
    from pipeline.reader.reader import Reader

    source = open_source(url, cache="memory")
    reader = Reader(
        source,
        ReaderConfig(num_epochs=args.epochs, workers=args.loader_workers),
        batch_size=bs,
        drop_last=False,
        rank=0,
        world_size=1,
    )
    with Loader(reader, LoaderConfig(batch_size=bs)) as stream_mem:
        per_epoch, t = len(stream_mem), time.perf_counter()
        rates = []
        for k, _ in enumerate(stream_mem, 1):
            if k % per_epoch == 0:
                rates.append(per_epoch * bs / (time.perf_counter() - t))
                t = time.perf_counter()
    out["loader_memory_epochs_2plus_samples_per_s"] = loader_mem = float(np.median(rates[1:] or rates))

    out["ratios"] = {
        "memory_epochs_2plus_vs_stream": memory / stream,
        "loader_memory_epochs_2plus_vs_stream": loader_mem / stream,
        "batched_random_vs_stream": batched / stream,
    }
    out["aims_met"] = {"memory_3x": memory / stream >= 3, "batched_half": batched / stream >= 0.5}
    if args.json:
        print(json.dumps(out))
    else:
        for key, value in out.items():
            print(f"{key:45s} {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
