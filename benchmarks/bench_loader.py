"""Loader throughput against petastorm's own loaders, torch over files and the decode ceiling.

One run, one dataset (default: 20,000 64x64 JPEG files, converted by ``pipeline convert images``
into a Petastorm dataset with ``CompressedImageCodec('jpeg')``)::

    .venv/bin/python benchmarks/bench_loader.py                # generates data under $TMPDIR once
    .venv/bin/python benchmarks/bench_loader.py --url file:///data/my_petastorm_images

Our paths run here, on the default stack; petastorm's run in the petastorm env
(``.venv-petastorm/bin/python benchmarks/petastorm_paths.py``, petastorm 0.12.1 on pyarrow 14),
in the same run, on the same dataset, and the table puts them side by side.

Prints samples/s and ratios for: this loader; petastorm ``make_reader`` + ``DataLoader``;
``make_batch_reader`` + a decoding ``TransformSpec`` + ``BatchedDataLoader``;
``open_loader(engine="petastorm")``; a torch
``DataLoader`` over the image files (2 worker processes); the decode ceiling (single-thread
``cv2.imdecode`` of every image, times the cores). Then a dataset of raw uint8 arrays (no
codec) against a plain pyarrow scan of the same files. Each path is run ``--repeat`` times and
its best run is kept (the machine is shared).
"""

from __future__ import annotations

import argparse
import hashlib
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

from file_images import FileImages

import pipeline
from pipeline.bench import BenchResult, measure

SIZE = 64
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def make_image(i: int) -> np.ndarray:
    """A deterministic, photo-like 64x64 RGB image (smooth gradients, a shape, mild noise)."""
    rng = np.random.default_rng(i)
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE
    base = (
        rng.uniform(0, 255, 3)
        * (0.5 + 0.5 * np.sin(rng.uniform(1, 6) * x + rng.uniform(1, 6) * y))[..., None]
    )
    cy, cx, r = [*rng.uniform(0.2, 0.8, 2).tolist(), rng.uniform(0.1, 0.3)]
    disk = ((y - cy) ** 2 + (x - cx) ** 2) < r * r
    base[disk] = rng.uniform(0, 255, 3)
    return np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)


def write_image_files(files: Path, n: int) -> None:
    """Write (once) ``n`` images of :func:`make_image` as JPEG files in 10 class folders."""
    import cv2

    if (files / "done").exists():
        return
    for i in range(n):
        folder = files / f"class_{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{i:06d}.jpg"), make_image(i)[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 80])
    (files / "done").touch()


def generate(root: Path, n: int) -> tuple[str, Path, str]:
    """Write (once) the image files, their Petastorm dataset (``pipeline convert images``) and the
    raw-array Parquet dataset."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ds, files, raw = root / f"jpeg-{n}", root / f"files-{n}", root / f"raw-{n}"
    write_image_files(files, n)
    if not (ds / "_common_metadata").exists():
        from pipeline.cli import main as cli

        command = ["convert", "images", str(files), str(ds), "--size", f"{SIZE}x{SIZE}", "--overwrite"]
        if cli(["--quiet", *command, "--master", f"local[{CORES}]"]) != 0:
            raise SystemExit(f"pipeline {' '.join(command)} failed")
    if not (raw / "done").exists():
        raw.mkdir(parents=True, exist_ok=True)
        per_file = 2500
        pixel = pa.list_(pa.list_(pa.list_(pa.uint8(), 3), SIZE), SIZE)
        for f, lo in enumerate(range(0, n, per_file)):
            ids = range(lo, min(n, lo + per_file))
            flat = pa.array(np.stack([make_image(i) for i in ids]).reshape(-1))
            images = pa.FixedSizeListArray.from_arrays(
                pa.FixedSizeListArray.from_arrays(pa.FixedSizeListArray.from_arrays(flat, 3), SIZE), SIZE
            )
            assert images.type == pixel
            table = pa.table({"image": images, "label": pa.array([i % 10 for i in ids], pa.int64())})
            pq.write_table(table, raw / f"part-{f:03d}.parquet", row_group_size=1250)
        (raw / "done").touch()
    return ds.as_uri(), files, raw.as_uri()


def ours(url: str, args: argparse.Namespace, workers: int):
    return measure(
        lambda: pipeline.open_loader(
            url,
            fields=["image", "label"],
            batch_size=args.batch_size,
            workers=workers,
            num_epochs=args.epochs,
            seed=0,
            config=None,
        )
    )


def order_digest(url: str, workers: int, batches: int = 40) -> str:
    digest = hashlib.sha256()
    with pipeline.open_loader(url, batch_size=64, workers=workers, seed=7, config=None) as loader:
        for i, batch in enumerate(loader):
            digest.update(batch["label"].numpy().tobytes())
            digest.update(batch["image"][:, 0, 0].numpy().tobytes())
            if i + 1 == batches:
                break
    return digest.hexdigest()[:16]


def petastorm_paths(url: str, args: argparse.Namespace) -> dict[str, BenchResult]:
    """petastorm's loaders, measured in the petastorm env (benchmarks/petastorm_paths.py)."""
    python = Path(args.petastorm_python)
    if not python.exists():
        print(f"petastorm paths skipped: {python} does not exist (make petastorm-venv builds it)")
        return {}
    command = [
        str(python), str(Path(__file__).with_name("petastorm_paths.py")), url,
        "--batch-size", str(args.batch_size), "--epochs", str(args.epochs),
        "--repeat", str(args.repeat), "--workers", str(CORES), "--image-shape", str(SIZE), str(SIZE), "3",
    ]  # fmt: skip
    done = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"}
    )
    if done.returncode != 0:
        raise SystemExit(f"petastorm paths failed in {python}:\n{done.stderr[-3000:]}")
    return {name: BenchResult(**r) for name, r in json.loads(done.stdout.strip().splitlines()[-1]).items()}


def torch_files(files: Path, args: argparse.Namespace):
    import torch.utils.data as tud

    paths = sorted(str(p) for p in files.rglob("*.jpg"))
    return measure(
        lambda: tud.DataLoader(
            FileImages(paths),
            batch_size=args.batch_size,
            shuffle=True,
            num_workers=2,
            persistent_workers=False,
        )
    )


def decode_ceiling(url: str) -> tuple[float, float]:
    """Single-thread ``cv2.imdecode`` of every image: (images/s, CPU microseconds per image)."""
    import cv2
    import pyarrow.parquet as pq

    from pipeline.dataset import list_dataset_files

    blobs = []
    files = list_dataset_files(url)
    for path in files.files:
        with files.filesystem.open_input_file(path) as fh:
            column = pq.read_table(fh, columns=["image"]).column("image")
        blobs.extend(np.frombuffer(b, np.uint8) for b in column.to_pylist())
    start, cpu = time.perf_counter(), time.process_time()
    for blob in blobs:
        cv2.imdecode(blob, cv2.IMREAD_UNCHANGED)
    cpu_us = (time.process_time() - cpu) / len(blobs) * 1e6
    return len(blobs) / (time.perf_counter() - start), cpu_us


def pyarrow_scan(url: str) -> float:
    import pyarrow.parquet as pq

    from pipeline.dataset import list_dataset_files

    files = list_dataset_files(url)
    start = time.perf_counter()
    rows = 0
    for path in files.files:
        with files.filesystem.open_input_file(path) as fh:
            rows += pq.read_table(fh).num_rows
    return rows / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a Petastorm dataset with a JPEG/PNG `image` field (skips generation)")
    parser.add_argument("--files", help="image files of the same dataset for the torch-over-files path")
    parser.add_argument("--rows", type=int, default=20_000, help="images to generate (default 20000)")
    parser.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "pipeline-bench"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3, help="runs per path; the best is kept (default 3)")
    parser.add_argument("--json", action="store_true", help="print all figures as one JSON line at the end")
    parser.add_argument(
        "--petastorm-python",
        default=str(Path(__file__).resolve().parent.parent / ".venv-petastorm" / "bin" / "python"),
        help="the petastorm env's Python, for petastorm's paths (default .venv-petastorm/bin/python)",
    )
    args = parser.parse_args(argv)

    raw_url = None
    if args.url:
        url, files = args.url, Path(args.files) if args.files else None
    else:
        url, files, raw_url = generate(Path(args.data_dir), args.rows)
    print(
        f"dataset {url}  cores {CORES}  batch {args.batch_size}  epochs {args.epochs}  best of {args.repeat}"
    )

    figures: dict[str, float] = {}
    ceiling_core, decode_cpu_us = max(decode_ceiling(url) for _ in range(args.repeat))
    figures["decode ceiling (1 core)"] = ceiling_core
    figures[f"decode ceiling x {CORES} cores"] = ceiling_core * CORES
    paths = {"this loader": lambda: ours(url, args, CORES)}
    if files is not None:
        paths["torch DataLoader over files (2 workers)"] = lambda: torch_files(files, args)
    results: dict[str, BenchResult] = {}
    for _ in range(args.repeat):  # round robin, so that every path sees the same background load
        for name, run in paths.items():
            result = run()
            if name not in results or result.samples_per_s > results[name].samples_per_s:
                results[name] = result
    results.update(petastorm_paths(url, args))
    figures.update({name: r.samples_per_s for name, r in results.items()})

    best_petastorm = max((v for k, v in figures.items() if k.startswith("petastorm")), default=float("nan"))
    ours_rate = figures["this loader"]
    print(f"\n{'path':<66} {'samples/s':>10} {'vs ours':>8} {'CPU %':>6}")
    for name, rate in figures.items():
        cpu = f"{results[name].cpu_percent:>6.0f}" if name in results and "files" not in name else "     -"
        print(f"{name:<66} {rate:>10,.0f} {rate / ours_rate:>8.2f} {cpu}")
    mine = results["this loader"]
    ours_cpu_us = mine.cpu_percent / 100 * mine.seconds / mine.rows * 1e6
    ratios = {
        "ours / best petastorm": ours_rate / best_petastorm,
        "ours / decode ceiling": ours_rate / figures[f"decode ceiling x {CORES} cores"],
        "imdecode CPU / loader CPU per image": decode_cpu_us / ours_cpu_us,
    }
    digests = {w: order_digest(url, w) for w in (1, CORES, 4)}
    print(f"\nours / best petastorm path: {ratios['ours / best petastorm']:.2f}x (target >= 1.5)")
    print(f"ours / {CORES}-core decode ceiling: {ratios['ours / decode ceiling']:.2f}x (target >= 0.6)")
    print(
        f"CPU per image: cv2.imdecode alone {decode_cpu_us:.1f} us, this loader end to end {ours_cpu_us:.1f} us "
        f"(read + decode + RGB + shuffle + collate) -> {ratios['imdecode CPU / loader CPU per image']:.2f}"
    )
    same = len(set(digests.values())) == 1
    print(f"order digest by workers: {digests} -> {'identical' if same else 'DIFFERENT'}")

    if raw_url is not None:
        raw_ours, scan = 0.0, 0.0
        for _ in range(args.repeat):
            raw_ours = max(raw_ours, ours(raw_url, args, CORES).samples_per_s)
            scan = max(scan, pyarrow_scan(raw_url))
        figures["raw uint8 arrays: this loader"] = raw_ours
        figures["raw uint8 arrays: pyarrow read_table scan"] = scan
        print(
            f"\nraw uint8 arrays (no codec): this loader {raw_ours:,.0f}/s, pyarrow scan {scan:,.0f}/s "
            f"-> {raw_ours / scan:.2f}x"
        )
    if args.json:
        print(json.dumps({"samples_per_s": figures, "ratios": ratios, "order_digests": digests}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
