"""Loader throughput from local disk vs an S3 server with added latency, side by side.

Starts moto's S3 server and a latency-adding TCP proxy on 127.0.0.1 (both from ``tests/``),
writes one Petastorm dataset locally, uploads it, then reads it:

* ``local``: ``open_loader`` on the local folder (second run: the page cache is warm);

Every figure is one epoch from ``open_loader`` on (opening included).
* ``s3_cold``: ``open_loader`` on ``s3://`` through the proxy (``--latency-ms`` per request);
* ``s3_cache_fill`` / ``s3_warm``: ``open_loader`` through the disk cache of
  ``pipeline.access`` (a first loader fills it, a second one reads the data from local disk;
  listing and file sizes still come from the store);
* ``petastorm``: petastorm's ``make_reader`` on the same ``s3://`` URL through the proxy, in the
  petastorm environment (``.venv-petastorm`` with ``s3fs``, which petastorm needs for ``s3://``;
  skipped when the environment is missing).

Run small::

    .venv/bin/python benchmarks/bench_s3.py --rows 4096 --json

The figures in docs/storage.md come from the command printed there.
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
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.s3_server import KEY, create_bucket, start_latency_proxy, start_moto, stop  # noqa: E402

PETASTORM_PY = REPO / ".venv-petastorm" / "bin" / "python"


def write_dataset(folder: Path, rows: int, dim: int, row_group_rows: int, files: int) -> None:
    """A Petastorm dataset: ``x`` float32 ``(dim,)`` (NdarrayCodec) and ``label`` int64."""
    from pyspark.sql.types import LongType

    from pipeline.format import NdarrayCodec, ScalarCodec, Unischema, UnischemaField
    from pipeline.format.metadata import format_metadata, write_common_metadata

    schema = Unischema(
        "Bench",
        [
            UnischemaField("x", np.float32, (dim,), NdarrayCodec(), False),
            UnischemaField("label", np.int64, (), ScalarCodec(LongType()), False),
        ],
    )
    x_field = schema.fields["x"]
    arrow = pa.schema([("x", pa.binary()), ("label", pa.int64())])
    rng = np.random.default_rng(0)
    per_file = -(-rows // files)
    counts = {}
    for f in range(files):
        ids = range(f * per_file, min(rows, (f + 1) * per_file))
        xs = [bytes(x_field.codec.encode(x_field, rng.standard_normal(dim).astype(np.float32))) for _ in ids]
        table = pa.table(
            {"x": pa.array(xs, pa.binary()), "label": pa.array(list(ids), pa.int64())}, schema=arrow
        )
        name = f"part-{f:05d}.parquet"
        pq.write_table(table, folder / name, row_group_size=row_group_rows)
        counts[name] = pq.read_metadata(folder / name).num_row_groups
    write_common_metadata(folder, arrow, format_metadata(schema, counts))


def run_loader(
    url: str, *, filesystem: Any = None, epochs: int = 1, workers: int | None, batch: int
) -> list[float]:
    """Seconds of each epoch, from ``open_loader`` on (open time is in the first)."""
    import pipeline

    times = []
    started = time.perf_counter()
    with pipeline.open_loader(
        url, batch_size=batch, shuffle=False, num_epochs=epochs, workers=workers, filesystem=filesystem
    ) as loader:
        epoch, rows = 0, 0
        for b in loader:
            if loader.epoch != epoch:
                times.append(time.perf_counter() - started)
                started, epoch = time.perf_counter(), loader.epoch
            rows += len(b["label"])
        times.append(time.perf_counter() - started)
    return times


_PETASTORM = """
import sys, time
from petastorm import make_reader
endpoint, url = sys.argv[1], sys.argv[2]
opts = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}
t = time.perf_counter(); n = 0
with make_reader(url, storage_options=opts, num_epochs=1, shuffle_row_groups=False, workers_count=int(sys.argv[3])) as r:
    for row in r:
        n += 1
print(n, time.perf_counter() - t)
"""
# Measured here: petastorm 0.12.1 + pyarrow 14 + s3fs 2026.9 fails on s3:// ("Keyword 'validate_schema'
# is not yet supported with the new Dataset API"); the benchmark then reports that error.


def run_petastorm(proxy: str, url: str, workers: int) -> dict[str, Any]:
    if not PETASTORM_PY.exists():
        return {"skipped": f"{PETASTORM_PY} not found"}
    proc = subprocess.run(
        [str(PETASTORM_PY), "-c", _PETASTORM, proxy, url, str(workers)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1][:300] if proc.stderr.strip() else "failed"}
    rows, seconds = proc.stdout.split()[-2:]
    return {"rows": int(rows), "seconds": float(seconds)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--dim", type=int, default=1024, help="float32 values per row (4 KiB at 1024)")
    parser.add_argument("--row-group-rows", type=int, default=256)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=None, help="reader threads (default: CPU cores)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    from pipeline.access.cachedfs import cached_filesystem
    from pipeline.storage import StorageConfig, upload_file
    from pipeline.storage.resolve import s3_filesystem

    results: dict[str, Any] = {"config": vars(args)}
    with tempfile.TemporaryDirectory(prefix="bench-s3-") as tmp:
        local = Path(tmp) / "ds"
        local.mkdir()
        write_dataset(local, args.rows, args.dim, args.row_group_rows, args.files)
        server, endpoint = start_moto()
        proxy = None
        try:
            create_bucket(endpoint, "bench")
            direct = s3_filesystem(
                StorageConfig(
                    endpoint_url=endpoint, access_key_id=KEY, secret_access_key=KEY, region="us-east-1"
                )
            )
            for f in sorted(local.iterdir()):
                upload_file(str(f), direct, f"bench/ds/{f.name}", url="s3://bench/ds")
            proxy, slow_endpoint = start_latency_proxy(endpoint, args.latency_ms)
            slow = s3_filesystem(
                StorageConfig(
                    endpoint_url=slow_endpoint, access_key_id=KEY, secret_access_key=KEY, region="us-east-1"
                )
            )
            rows = args.rows

            def rate(seconds: float) -> float:
                return round(rows / seconds, 1)

            run_loader(str(local), workers=args.workers, batch=args.batch_size)  # warm the page cache
            t_local = run_loader(str(local), workers=args.workers, batch=args.batch_size)
            results["local"] = {"seconds": t_local[0], "samples_per_s": rate(t_local[0])}
            t_cold = run_loader("bench/ds", filesystem=slow, workers=args.workers, batch=args.batch_size)
            results["s3_cold"] = {"seconds": t_cold[0], "samples_per_s": rate(t_cold[0])}
            cache_fs, path = cached_filesystem("bench/ds", filesystem=slow, cache_dir=Path(tmp) / "cache")
            t_fill = run_loader(path, filesystem=cache_fs, workers=args.workers, batch=args.batch_size)
            t_warm = run_loader(path, filesystem=cache_fs, workers=args.workers, batch=args.batch_size)
            results["s3_cache_fill"] = {"seconds": t_fill[0], "samples_per_s": rate(t_fill[0])}
            results["s3_warm"] = {"seconds": t_warm[0], "samples_per_s": rate(t_warm[0])}
            results["petastorm_make_reader"] = run_petastorm(
                slow_endpoint, "s3://bench/ds", args.workers or os.cpu_count() or 1
            )
            if "seconds" in results["petastorm_make_reader"]:
                results["petastorm_make_reader"]["samples_per_s"] = rate(
                    results["petastorm_make_reader"]["seconds"]
                )
        finally:
            if proxy is not None:
                stop(proxy)
            stop(server)
    base = results["local"]["samples_per_s"]
    for name in ("s3_cold", "s3_cache_fill", "s3_warm", "petastorm_make_reader"):
        if "samples_per_s" in results[name]:
            results[name]["vs_local"] = round(results[name]["samples_per_s"] / base, 2)
    if not args.json:
        for name, value in results.items():
            print(f"{name:24s} {value}")
    print(json.dumps(results, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
