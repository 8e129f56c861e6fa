"""Loader throughput from local disk vs an S3 server with added latency, side by side.

Starts moto's S3 server and a latency-adding TCP proxy on 127.0.0.1 (both from ``tests/``),
writes one Petastorm dataset locally per ``--rows`` size, uploads it, then reads it:

* ``local``: ``open_loader`` on the local folder (second run: the page cache is warm);
* ``s3_cold``: ``open_loader`` on ``s3://`` through the proxy (``--latency-ms`` per request);
* ``s3_cache_fill`` / ``s3_warm``: ``open_loader`` through the disk cache of
  ``pipeline.access`` (a first loader fills it at the start of the round, written back to disk
  with ``os.sync()`` as a later process finds it; after the local and cold runs, a loader on a
  new cached filesystem, as a new process would open, reads the data from local disk; the
  listing still comes from the store);
* ``petastorm``: petastorm's ``make_reader`` on the same ``s3://`` URL through the proxy, in the
  petastorm environment (``.venv-petastorm`` with ``s3fs``, which petastorm needs for ``s3://``;
  skipped when the environment is missing), with its default 10 threads.

Two kinds of dataset (``--kind``): ``arrays`` (default), 4 KiB float32 rows, whose decoding
costs ~1 us a row, so that every run measures I/O alone (local disk at 700+ MiB/s against the
S3 server on the same cores); ``images``, 64x64 JPEGs (2-4 KiB), whose decoding (~25 us a
row) is what a training job reads from a store.

Each run starts at ``open_loader`` and reports: ``open_s`` (``open_loader`` returned),
``first_batch_s``, ``seconds`` (the first epoch, opening included) and its ``samples_per_s``;
when the dataset has at least ``STEADY_MIN_ROW_GROUPS`` row groups, the runs other than the
cache fill read three epochs, and the second one's rate is ``steady_per_s`` (no opening, the
reader under way at its start and at its end; in ``s3_cold`` it reads the store again). A
smaller dataset fits the reader's window (threads x read-ahead row groups, 40 and more on S3)
whole, so that its second epoch is mostly read during the first: no steady rate for it. ``requests`` counts the requests the proxy
saw during the run (``--trace`` prints them, with their times); ``loader_cpu_s`` and
``server_cpu_s`` the CPU-seconds per epoch of this process and of the S3 server + proxy (which
share the machine's cores with the loader); ``vs_local`` and
``steady_vs_local`` are ratios to the local run of the same size. ``--repeat N`` runs the four
runs N times, interleaved, and reports the median of each figure (and every round's rate).

The S3 server shares the machine's cores with the loader and reads a whole object for every
ranged GET (moto 5.2), so its CPU time per request bounds the S3 figures here; objects are kept
in its memory (``MOTO_S3_DEFAULT_KEY_BUFFER_SIZE``).

The dataset's layout (``--layout``): ``convert`` (default), row groups and files as ``pipeline
convert`` writes them with ``conf/convert.yaml`` (16 MB row groups: ~9,000 64x64 JPEGs or
~4,000 4 KiB arrays; at least one file per core), what a user reads; ``small``, 256-row row
groups in 2,048-row files (0.4-1 MiB per request, 128+ row groups: the steady rate is measured),
a stress case for the read-ahead and for the S3 server, which handles each request in Python on
the same cores.

``--warm-only`` measures the warm cache against local alone: one fill, then rounds of the local
and warm runs with nothing between them.

Run small::

    .venv/bin/python benchmarks/bench_s3.py --rows 4096 --json

The figures in docs/storage.md come from the command printed there.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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

STEADY_MIN_ROW_GROUPS = 128
RUNS = ("local", "s3_cold", "s3_cache_fill", "s3_warm")
PETASTORM_PY = REPO / ".venv-petastorm" / "bin" / "python"


def layout(args: argparse.Namespace, rows: int) -> tuple[int, int]:
    """``(rows per row group, rows per file)`` of the dataset of ``rows`` rows.

    ``convert``: what ``pipeline convert`` writes with the settings of ``conf/convert.yaml``:
    row groups of ``row_group_mb``, and ``max(cores, input / file_mb)`` files (its Spark tasks;
    the rows' stored bytes stand for the input's). ``small``: 256-row row groups in 2,048-row
    files (a dataset of many small requests). ``--row-group-rows`` / ``--file-rows`` override.
    """
    from pipeline.config import load_config
    from pipeline.convert.common import ConvertConfig

    if args.layout == "small":
        group, per_file = 256, 2048
    else:
        settings = load_config(ConvertConfig, REPO / "conf" / "convert.yaml")
        row_bytes = sample_row_bytes(args.kind, args.dim, args.image_size)
        group = max(1, settings.row_group_mb * 2**20 // row_bytes)
        files = max(os.cpu_count() or 1, -(-rows * row_bytes // (settings.file_mb * 2**20)))
        per_file = -(-rows // files)
    group = args.row_group_rows or group
    per_file = args.file_rows or per_file
    return min(group, per_file), per_file


def sample_row_bytes(kind: str, dim: int, image_size: int) -> int:
    """Stored bytes of a row (its encoded value and label), from a small dataset written the same way."""
    with tempfile.TemporaryDirectory(prefix="bench-s3-sample-") as folder:
        write_dataset(Path(folder), 256, dim, 256, 1, kind, image_size)
        meta = pq.read_metadata(Path(folder) / "part-00000.parquet")
        return max(1, meta.row_group(0).total_byte_size // 256)


def write_dataset(
    folder: Path,
    rows: int,
    dim: int,
    row_group_rows: int,
    files: int,
    kind: str = "arrays",
    image_size: int = 64,
) -> None:
    """A Petastorm dataset: ``x`` float32 ``(dim,)`` (NdarrayCodec), or with ``kind="images"``
    ``image`` uint8 ``(image_size, image_size, 3)`` JPEGs (CompressedImageCodec, quality 90, smooth
    random pictures: 2-4 KiB at 64x64); and ``label`` int64."""
    import cv2
    from pyspark.sql.types import LongType

    from pipeline.format import CompressedImageCodec, NdarrayCodec, ScalarCodec, Unischema, UnischemaField
    from pipeline.format.metadata import format_metadata, write_common_metadata

    if kind == "images":
        name, field = (
            "image",
            UnischemaField(
                "image",
                np.uint8,
                (image_size, image_size, 3),
                CompressedImageCodec("jpeg", quality=90),
                False,
            ),
        )
    else:
        name, field = "x", UnischemaField("x", np.float32, (dim,), NdarrayCodec(), False)
    schema = Unischema(
        "Bench", [field, UnischemaField("label", np.int64, (), ScalarCodec(LongType()), False)]
    )
    arrow = pa.schema([(name, pa.binary()), ("label", pa.int64())])
    rng = np.random.default_rng(0)

    def value() -> np.ndarray:
        if kind != "images":
            return rng.standard_normal(dim).astype(np.float32)
        coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        smooth = cv2.resize(coarse, (image_size, image_size), interpolation=cv2.INTER_CUBIC)
        return np.clip(smooth + rng.normal(0, 6, smooth.shape), 0, 255).astype(np.uint8)

    per_file = -(-rows // files)
    counts = {}
    for f in range(files):
        ids = range(f * per_file, min(rows, (f + 1) * per_file))
        values = [bytes(field.codec.encode(field, value())) for _ in ids]
        table = pa.table(
            {name: pa.array(values, pa.binary()), "label": pa.array(list(ids), pa.int64())}, schema=arrow
        )
        file_name = f"part-{f:05d}.parquet"
        pq.write_table(table, folder / file_name, row_group_size=row_group_rows)
        counts[file_name] = pq.read_metadata(folder / file_name).num_row_groups
    write_common_metadata(folder, arrow, format_metadata(schema, counts))


def run_loader(
    url: str, *, filesystem: Any = None, workers: int | None, batch: int, epochs: int = 1
) -> dict[str, float]:
    """``epochs`` epochs from ``open_loader`` on: wall-clock marks (see the module docstring)."""
    import pipeline

    started = time.perf_counter()
    wall = time.time()
    first_batch, rows, ends = None, 0, []
    with pipeline.open_loader(
        url, batch_size=batch, shuffle=False, num_epochs=epochs, workers=workers, filesystem=filesystem
    ) as loader:
        opened = time.perf_counter() - started
        epoch = 0
        for b in loader:
            if first_batch is None:
                first_batch = time.perf_counter() - started
            if loader.epoch != epoch:  # the first batch of the next epoch
                ends.append(time.perf_counter() - started)
                epoch = loader.epoch
            rows += len(b["label"])
    ends.append(time.perf_counter() - started)
    assert first_batch is not None and len(ends) == epochs
    per_epoch = rows // epochs
    out = {
        "open_s": round(opened, 3),
        "first_batch_s": round(first_batch, 3),
        "seconds": round(ends[0], 3),
        "samples_per_s": round(per_epoch / ends[0], 1),
        "wall_start": wall,
        "wall_end": wall + ends[0],
    }
    if epochs > 2:  # the middle epochs: no opening, the reader under way at both ends (no drain)
        out["steady_per_s"] = round(per_epoch * (epochs - 2) / (ends[-2] - ends[0]), 1)
    return out


def read_proxy_log(path: Path) -> list[dict[str, Any]]:
    """The proxy's records (``tests/s3_proxy.py``): requests with their first/last response byte."""
    if not path.exists():
        return []
    conns: dict[int, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if "req" in rec:
            conns[rec["conn"]] = {"t": rec["t"], "req": rec["req"], "range": rec.get("range"), "bytes": 0}
        elif rec["conn"] in conns:
            c = conns[rec["conn"]]
            c.setdefault("first", rec["t"])
            c["last"], c["bytes"] = rec["t"], c["bytes"] + rec["bytes"]
    return sorted(conns.values(), key=lambda c: c["t"])


def requests_of(log: list[dict[str, Any]], run: dict[str, float]) -> list[dict[str, Any]]:
    return [r for r in log if run["wall_start"] <= r["t"] <= run["wall_end"]]


def waves(reqs: list[dict[str, Any]]) -> int:
    """Sequential round trips among ``reqs``: a request sent after one of the current wave had
    answered (so that it may have waited for it) starts the next wave."""
    count, wave_end = 0, float("-inf")
    for r in reqs:
        done = r.get("last", r["t"])
        if r["t"] >= wave_end:
            count, wave_end = count + 1, done
        else:
            wave_end = min(wave_end, done)
    return count


def summarize_requests(reqs: list[dict[str, Any]], run: dict[str, float]) -> dict[str, Any]:
    """Requests of a run: count, bytes, those before ``open_loader`` returned (and how many
    sequential round trips they took), those before the first batch."""
    opened = run["wall_start"] + run["open_s"]
    first = run["wall_start"] + run["first_batch_s"]
    during_open = [r for r in reqs if r["t"] < opened]
    return {
        "requests": len(reqs),
        "bytes": sum(r["bytes"] for r in reqs),
        "open_requests": len(during_open),
        "open_round_trips": waves(during_open),
        "before_first_batch": sum(r["t"] < first for r in reqs),
    }


def print_trace(name: str, reqs: list[dict[str, Any]], run: dict[str, float]) -> None:
    print(f"-- {name}: open {run['open_s']} s, first batch {run['first_batch_s']} s, end {run['seconds']} s")
    for r in reqs:
        sent = r["t"] - run["wall_start"]
        took = r.get("last", r["t"]) - r["t"]
        print(f"   {sent:7.3f} +{took:6.3f} {r['bytes']:>9} {r['req'][:70]} {r['range'] or ''}")


_PETASTORM = """
import posixpath, sys, time
import s3fs
from pyarrow.filesystem import S3FSWrapper
from petastorm import make_reader


class Wrapper(S3FSWrapper):
    def walk(self, path, refresh=False):  # pyarrow 14's calls s3fs's _ls, a coroutine since s3fs 0.5
        path = path.rstrip("/")
        entries = self.fs.ls(path, detail=True, refresh=refresh)
        dirs = sorted(posixpath.basename(e["name"].rstrip("/")) for e in entries if e["type"] == "directory")
        files = sorted(posixpath.basename(e["name"]) for e in entries if e["type"] == "file")
        yield path, dirs, files
        for d in dirs:
            yield from self.walk(posixpath.join(path, d), refresh=refresh)


endpoint, url = sys.argv[1], sys.argv[2]
t = time.perf_counter(); n = 0
s3 = s3fs.S3FileSystem(key="testing", secret="testing", client_kwargs={"endpoint_url": endpoint, "region_name": "us-east-1"})
with make_reader(url, filesystem=Wrapper(s3), num_epochs=1, shuffle_row_groups=False, workers_count=int(sys.argv[3])) as r:
    for row in r:
        n += 1
print(n, time.perf_counter() - t)
"""
# petastorm 0.12.1 builds a bare s3fs filesystem from storage_options= for an s3:// URL, which
# pyarrow 14 hands to its new ParquetDataset, where petastorm's legacy keyword fails ("Keyword
# 'validate_schema' is not yet supported with the new Dataset API"). Wrapped in pyarrow's legacy
# S3FSWrapper and passed as filesystem=, the same s3fs filesystem takes the legacy path petastorm
# was written for; that wrapper's walk calls an s3fs method that became a coroutine in s3fs 0.5,
# hence the same walk over s3fs's synchronous ls above. With both, make_reader reads s3:// on
# pyarrow 14 and a current s3fs.


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


def bench_size(
    args: argparse.Namespace,
    rows: int,
    endpoint: str,
    slow_endpoint: str,
    tmp: Path,
    log: Path,
    petastorm: bool,
    pids: list[int],
) -> dict[str, Any]:
    """Every run at one dataset size."""
    from pipeline.access.cachedfs import cached_filesystem
    from pipeline.storage import StorageConfig, upload_file
    from pipeline.storage.resolve import s3_filesystem

    creds = {"access_key_id": KEY, "secret_access_key": KEY, "region": "us-east-1"}
    local = tmp / f"ds-{rows}"
    local.mkdir()
    row_group_rows, file_rows = layout(args, rows)
    files = max(1, -(-rows // file_rows))
    write_dataset(local, rows, args.dim, row_group_rows, files, args.kind, args.image_size)
    direct = s3_filesystem(StorageConfig(endpoint_url=endpoint, **creds))
    prefix = f"bench/ds-{rows}"
    for f in sorted(local.iterdir()):
        upload_file(str(f), direct, f"{prefix}/{f.name}", url=f"s3://{prefix}")
    slow = s3_filesystem(StorageConfig(endpoint_url=slow_endpoint, **creds))
    out: dict[str, Any] = {
        "rows": rows,
        "files": files,
        "row_group_rows": row_group_rows,
        "mib": round(sum(f.stat().st_size for f in local.iterdir()) / 2**20, 1),
    }
    opts = {"workers": args.workers, "batch": args.batch_size}
    epochs = 3 if rows // row_group_rows >= STEADY_MIN_ROW_GROUPS else 1

    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in RUNS}

    def measured(name: str, url: str, filesystem: Any = None, epochs: int = 1) -> None:
        """``run_loader``, with the CPU-seconds per epoch of this process and of the server + proxy."""
        mine, theirs = _own_cpu(), _cpu_of(pids)
        result: dict[str, Any] = run_loader(url, filesystem=filesystem, epochs=epochs, **opts)
        result["loader_cpu_s"] = round((_own_cpu() - mine) / epochs, 2)
        result["server_cpu_s"] = round((_cpu_of(pids) - theirs) / epochs, 2)
        runs[name].append(result)

    run_loader(str(local), **opts)  # warm the page cache
    for k in range(args.repeat):  # interleaved, so that a burst of load hits every kind of run alike
        cache_dir = tmp / f"cache-{rows}-{k if not args.warm_only else 0}"
        if k == 0 or not args.warm_only:
            fill_fs, path = cached_filesystem(prefix, filesystem=slow, cache_dir=cache_dir)
            measured("s3_cache_fill", path, fill_fs)
            os.sync()  # the cache as a later process finds it: written back, not dirty pages being flushed
        measured("local", str(local), epochs=epochs)
        if not args.warm_only:
            measured("s3_cold", prefix, slow, epochs)  # epochs 2 and 3 read the store again
        warm_fs, path = cached_filesystem(prefix, filesystem=slow, cache_dir=cache_dir)  # as a new process
        measured("s3_warm", path, warm_fs, epochs)
    if petastorm:
        out["petastorm_make_reader"] = run_petastorm(
            slow_endpoint,
            f"s3://{prefix}",
            args.workers or 10,  # make_reader's default workers_count
        )
        if "seconds" in out["petastorm_make_reader"]:
            out["petastorm_make_reader"]["samples_per_s"] = round(
                rows / out["petastorm_make_reader"]["seconds"], 1
            )
    time.sleep(0.2)  # the proxy's last log lines
    proxy_log = read_proxy_log(log)
    for name, done in runs.items():
        if not done:
            continue
        for k, run in enumerate(done):
            if name != "local":
                reqs = requests_of(proxy_log, run)
                run.update(summarize_requests(reqs, run))
                if args.trace:
                    print_trace(f"{name}, {rows} rows, round {k + 1}", reqs, run)
            del run["wall_start"], run["wall_end"]
        out[name] = {key: _median([r[key] for r in done]) for key in done[0]}
        out[name]["samples_per_s_runs"] = [r["samples_per_s"] for r in done]
    base = out["local"]
    for name in RUNS[1:]:
        if name not in out:
            continue
        run = out[name]
        run["vs_local"] = round(run["samples_per_s"] / base["samples_per_s"], 2)
        if "steady_per_s" in run:
            run["steady_vs_local"] = round(run["steady_per_s"] / base["steady_per_s"], 2)
    petastorm_run = out.get("petastorm_make_reader", {})
    if "samples_per_s" in petastorm_run:
        petastorm_run["vs_local"] = round(petastorm_run["samples_per_s"] / base["samples_per_s"], 2)
    return out


def _own_cpu() -> float:
    """CPU-seconds of this process so far (all its threads)."""
    t = os.times()
    return t.user + t.system


def _cpu_of(pids: list[int]) -> float:
    """CPU-seconds of processes ``pids`` so far (Linux ``/proc``; 0 elsewhere)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    return total


def _median(values: list[float]) -> float:
    m = statistics.median(values)
    return int(m) if m == int(m) else round(m, 3)


def print_table(results: dict[str, Any]) -> None:
    head = (
        "run",
        "open s",
        "1st batch s",
        "epoch s",
        "samples/s",
        "vs local",
        "steady/s",
        "steady vs local",
        "requests",
        "open requests (round trips)",
        "CPU s/epoch: loader",
        "server + proxy",
    )
    print(" | ".join(head))
    for size in results["sizes"]:
        print(f"-- {size['rows']} rows, {size['files']} files, {size['mib']} MiB")
        for name in RUNS:
            if name not in size:
                continue
            r = size[name]
            cells = (
                name,
                r["open_s"],
                r["first_batch_s"],
                r["seconds"],
                r["samples_per_s"],
                r.get("vs_local", 1.0),
                r.get("steady_per_s", "-"),
                r.get("steady_vs_local", "-" if name != "local" else 1.0),
                r.get("requests", "-"),
                f"{r['open_requests']} ({r['open_round_trips']})" if "open_requests" in r else "-",
                r["loader_cpu_s"],
                r["server_cpu_s"],
            )
            print(" | ".join(str(c) for c in cells))
        if "petastorm_make_reader" in size:
            print(f"petastorm_make_reader: {size['petastorm_make_reader']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows", type=int, nargs="+", default=[8192, 65536], help="dataset sizes, one run each"
    )
    parser.add_argument(
        "--kind",
        choices=("arrays", "images"),
        default="arrays",
        help="arrays: float32 rows (NdarrayCodec, decoding ~1 us/row: I/O-bound); images: JPEGs",
    )
    parser.add_argument(
        "--dim", type=int, default=1024, help="arrays: float32 values per row (4 KiB at 1024)"
    )
    parser.add_argument("--image-size", type=int, default=64, help="images: side in pixels")
    parser.add_argument(
        "--layout",
        choices=("convert", "small"),
        default="convert",
        help="convert: row groups and files as `pipeline convert` writes them (conf/convert.yaml: "
        "16 MB row groups, 256 MB files, at least one file per core); small: 256-row row groups, "
        "2,048-row files (many small requests)",
    )
    parser.add_argument(
        "--row-group-rows", type=int, default=None, help="rows per row group (overrides --layout)"
    )
    parser.add_argument("--file-rows", type=int, default=None, help="rows per data file (overrides --layout)")
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument(
        "--workers", type=int, default=None, help="reader threads (default: CPU cores, more on S3)"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--no-petastorm", dest="petastorm", action="store_false", help="skip make_reader")
    parser.add_argument("--trace", action="store_true", help="print every request of the S3 runs")
    parser.add_argument(
        "--warm-only",
        action="store_true",
        help="the warm cache against local alone: one fill, then rounds of local and warm (no cold runs)",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds of the four runs per size (figures: medians)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    results: dict[str, Any] = {"config": vars(args), "load_before": os.getloadavg(), "sizes": []}
    with tempfile.TemporaryDirectory(prefix="bench-s3-") as tmp_name:
        tmp = Path(tmp_name)
        log = tmp / "proxy.log"
        server, endpoint = start_moto({"MOTO_S3_DEFAULT_KEY_BUFFER_SIZE": str(1 << 30)})  # objects in RAM
        proxy = None
        os.environ["PIPELINE_S3_PROXY_LOG"] = str(log)  # read by tests/s3_proxy.py
        try:
            create_bucket(endpoint, "bench")
            proxy, slow_endpoint = start_latency_proxy(endpoint, args.latency_ms)
            for rows in args.rows:
                results["sizes"].append(
                    bench_size(
                        args, rows, endpoint, slow_endpoint, tmp, log, args.petastorm, [server.pid, proxy.pid]
                    )
                )
        finally:
            os.environ.pop("PIPELINE_S3_PROXY_LOG", None)
            if proxy is not None:
                stop(proxy)
            stop(server)
    results["load_after"] = os.getloadavg()
    if not args.json:
        print_table(results)
        print(f"load average before {results['load_before']}, after {results['load_after']}")
    print(json.dumps(results, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
