"""Host-to-device path on a GPU: pinned copy bandwidth, and a loader-fed step vs on-device data.

::

    .venv/bin/python benchmarks/bench_h2d.py --url file:///data/images   # any dataset with an `image` field
    .venv/bin/python benchmarks/bench_h2d.py                             # synthetic uint8 dataset in $TMPDIR

1. GB/s of ``tensor.pin_memory()`` -> ``.to("cuda", non_blocking=True)`` copies (and of pageable
   copies, for comparison).
2. A synthetic training step (a small conv net, forward + backward) fed by
   ``open_loader(device="cuda")`` against the same step on batches already on the device.
   Target: within 5%.

Without CUDA it says so and exits 0: there is nothing to measure.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pipeline


def copy_bandwidth(megabytes: int, repeats: int, pinned: bool) -> float:
    host = torch.empty(megabytes * 2**20, dtype=torch.uint8, pin_memory=pinned)
    device = torch.empty_like(host, device="cuda")
    device.copy_(host, non_blocking=pinned)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        device.copy_(host, non_blocking=pinned)
    torch.cuda.synchronize()
    return megabytes * 2**20 * repeats / (time.perf_counter() - start) / 1e9


def synthetic_dataset(root: Path, rows: int, size: int) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = root / f"h2d-{rows}-{size}"
    if not (path / "done").exists():
        path.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        per_file = 1000
        for f, lo in enumerate(range(0, rows, per_file)):
            n = min(per_file, rows - lo)
            flat = pa.array(rng.integers(0, 256, n * size * size * 3, dtype=np.uint8))
            image = pa.FixedSizeListArray.from_arrays(
                pa.FixedSizeListArray.from_arrays(pa.FixedSizeListArray.from_arrays(flat, 3), size), size
            )
            label = pa.array(rng.integers(0, 10, n), pa.int64())
            pq.write_table(pa.table({"image": image, "label": label}), path / f"part-{f:03d}.parquet")
        (path / "done").touch()
    return path.as_uri()


def make_model() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 64, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(64, 64, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(64, 10),
    ).cuda()
    return model, torch.optim.SGD(model.parameters(), lr=0.01)


def step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor]) -> None:
    images = batch["image"].permute(0, 3, 1, 2).float().div_(255)
    loss = torch.nn.functional.cross_entropy(model(images), batch["label"] % 10)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def timed_steps(model, optimizer, batches) -> tuple[int, float]:
    torch.cuda.synchronize()
    start = time.perf_counter()
    count = 0
    for batch in batches:
        step(model, optimizer, batch)
        count += 1
    torch.cuda.synchronize()
    return count, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="dataset with `image` (uint8 HxWx3) and `label` fields")
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=64, help="synthetic image side (default 64)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "pipeline-bench"))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(
            f"bench_h2d: torch {torch.__version__} sees no CUDA GPU -- nothing to measure. "
            "Run it on a machine with an NVIDIA GPU and a CUDA build of torch."
        )
        return 0

    print(f"device {torch.cuda.get_device_name()}")
    for pinned in (True, False):
        gbps = copy_bandwidth(256, 20, pinned)
        print(f"host->device copy, {'pinned, non_blocking' if pinned else 'pageable':<22} {gbps:7.1f} GB/s")

    url = args.url or synthetic_dataset(Path(args.data_dir), args.rows, args.size)
    options = {"batch_size": args.batch_size, "workers": args.workers, "num_epochs": 1, "seed": 0}
    model, optimizer = make_model()
    with pipeline.open_loader(url, fields=["image", "label"], device="cuda", **options) as loader:
        staged = [dict(b) for b in loader]  # warm-up epoch, kept on the device
    timed_steps(model, optimizer, staged[:5])
    on_device = timed_steps(model, optimizer, staged)
    with pipeline.open_loader(url, fields=["image", "label"], device="cuda", **options) as loader:
        fed = timed_steps(model, optimizer, loader)
    rate_device = on_device[0] / on_device[1]
    rate_fed = fed[0] / fed[1]
    print(f"steps/s on device-resident batches {rate_device:8.1f}")
    print(
        f"steps/s fed by open_loader(cuda)   {rate_fed:8.1f}  ({rate_fed / rate_device:.1%} of on-device; target >= 95%)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
