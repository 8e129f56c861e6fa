"""``pipeline bench URL``: read a dataset through ``open_loader`` and report its throughput."""

from __future__ import annotations

import argparse
from typing import Any

from pipeline.cli.app import add_json_flag

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench",
        help="measure how fast a dataset loads into torch batches",
        description="Read N epochs (or batches) of a dataset through pipeline.open_loader and report "
        "samples/s, MB/s of batch tensors and of files on disk, the time the training loop waits for "
        "each batch (p50/p99) and the peak RSS. Unset options come from conf/reader.yaml.",
    )
    p.add_argument("url", metavar="URL", help="dataset folder or URL (file://, hdfs://, s3://...)")
    p.add_argument("--batch-size", type=int, default=None, help="rows per batch (reader.yaml: 64)")
    p.add_argument("--workers", type=int, default=None, help="reader threads (reader.yaml: CPU cores)")
    p.add_argument("--epochs", type=int, default=1, help="epochs to read (default 1)")
    p.add_argument("--batches", type=int, default=None, help="stop after this many batches")
    p.add_argument("--seed", type=int, default=None, help="shuffle seed (reader.yaml: 0)")
    p.add_argument("--no-shuffle", action="store_true", help="read in stored order")
    p.add_argument("--device", default=None, help='"cpu" (default), "cuda" or "cuda:N"')
    add_json_flag(p)
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> dict[str, Any]:
    import pipeline
    from pipeline.bench import measure  # imports torch: only when a benchmark runs
    from pipeline.dataset import list_dataset_files

    _check_device(args.device)
    options: dict[str, Any] = {"num_epochs": args.epochs}
    for key in ("batch_size", "workers", "seed", "device"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    if args.no_shuffle:
        options["shuffle"] = False
    disk_bytes = list_dataset_files(args.url).total_bytes
    opened: dict[str, Any] = {}

    def open_fn() -> Any:
        opened["loader"] = pipeline.open_loader(args.url, **options)
        return opened["loader"]

    result = measure(open_fn, max_batches=args.batches)
    loader = opened["loader"]
    rows_per_epoch = loader.reader.rows_per_epoch
    epochs_read = result.rows / rows_per_epoch if rows_per_epoch else 0.0
    out = result.to_dict()
    out.update(
        url=loader.reader.source.url,
        batch_size=loader.config.batch_size,
        workers=loader.reader.config.worker_threads,
        epochs=round(epochs_read, 3),
        disk_mb_per_s=round(disk_bytes * epochs_read / 1e6 / result.seconds, 2) if result.seconds else 0.0,
    )
    if not args.json:
        print(
            f"read      {out['rows']:,} rows in {out['batches']:,} batches ({out['epochs']:g} epochs) "
            f"in {out['seconds']:.2f} s\n"
            f"speed     {out['samples_per_s']:,.0f} samples/s, {out['mb_per_s']:,.1f} MB/s of tensors, "
            f"{out['disk_mb_per_s']:,.1f} MB/s from disk\n"
            f"wait      p50 {out['wait_p50_ms']:.2f} ms, p99 {out['wait_p99_ms']:.2f} ms per batch\n"
            f"memory    peak RSS {out['peak_rss_mb']:,.0f} MiB, CPU {out['cpu_percent']:.0f}% of one core\n"
            f"options   batch size {out['batch_size']}, {out['workers']} workers"
        )
        if out["stages"]:
            print(stage_table(out["stages"], out["batches"], out["workers"], out["bound_by"]))
    return out


def stage_table(stages: dict[str, float], batches: int, workers: int, bound: str | None) -> str:
    """The per-stage breakdown: seconds, ms per batch, and per batch per thread of the stage."""
    lines = ["stage       seconds  ms/batch  ms/batch per thread"]
    for name, seconds in stages.items():
        threads = workers if name in ("read", "decode") else 1
        per_batch = 1e3 * seconds / max(batches, 1)
        mark = "  <- bounds throughput" if name == bound else ""
        lines.append(f"{name:10s} {seconds:8.3f} {per_batch:9.3f} {per_batch / threads:14.3f}{mark}")
    if bound == "consumer":
        lines.append("bound by    the consumer: the loop waited for batches less than 10% of the time")
    else:
        lines.append(
            f"bound by    {bound}"
            + (f" ({workers} reader threads: more --workers may help)" if bound in ("read", "decode") else "")
        )
    return "\n".join(lines)


def _check_device(device: str | None) -> None:
    """``--device cuda`` on a machine without CUDA: say so in the command's words."""
    if not device or not device.startswith("cuda"):
        return
    import torch

    from pipeline.errors import ConfigError

    if not torch.cuda.is_available():
        raise ConfigError(
            f"--device {device}: torch {torch.__version__} sees no CUDA GPU on this machine",
            hint="pass --device cpu (the default), or install a CUDA build of torch",
        )
