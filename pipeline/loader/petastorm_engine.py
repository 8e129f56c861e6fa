"""``open_loader(url, engine="petastorm", ...)``: petastorm's own readers behind our torch batches.

``open_loader`` resolves its arguments against ``conf/reader.yaml`` as for the default engine
(:func:`~pipeline.loader.loader.resolve_configs`) and hands the settings over::

    open_petastorm_loader(url, reader: ReaderConfig, loader: LoaderConfig, *, fields, transform,
                          rank, world_size, predicate, filesystem, pool=None, cache="stream",
                          cache_dir=None, cache_limit=None, **petastorm_options) -> PetastormLoader

Called directly (for ``pool`` or ``petastorm_options``), ``reader``/``loader`` left out are
``conf/reader.yaml``'s.

A Petastorm dataset (Unischema metadata) is read with ``petastorm.make_reader`` (codecs
decoded by petastorm, row by row), any other Parquet store with ``petastorm.make_batch_reader``.
The seed, shuffle, shard and epochs go to petastorm (``seed``,
``shuffle_row_groups``/``shuffle_rows``, ``cur_shard``/``shard_count``, ``num_epochs``); a
TransformSpec (ours or petastorm's) becomes petastorm's ``transform_spec``. Rows then go through
the same seeded shuffle buffer semantics, collation (:mod:`pipeline.loader.collate`), pinned
buffers and device copies (:mod:`pipeline.loader.device`) as the default engine's Loader.
``petastorm_options`` (``cache_type``, ``cache_location``, ``hdfs_driver``, ``rowgroup_selector``,
``filters``, ``storage_options``...) go to the petastorm reader unchanged. petastorm is imported
here only, when a loader is opened: the default install has no petastorm (``pip install
".[petastorm]"`` adds it). See docs/petastorm.md for what this engine keeps and gives up.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from pipeline.errors import ConfigError, DatasetError
from pipeline.loader.collate import collate_batch, cpu_allocator
from pipeline.loader.loader import CONFIG_FILE, resolve_configs, resolve_shard
from pipeline.loader.rows import RowBuffer, stackable
from pipeline.loader.stages import PrefetchedBatches
from pipeline.reader.config import LoaderConfig, ReaderConfig

__all__ = ["PetastormLoader", "import_petastorm", "open_petastorm_loader"]

log = logging.getLogger(__name__)

_POOLS = ("thread", "process", "dummy")

try:  # petastorm's reader takes only its own predicate class; this module is imported lazily
    from petastorm.predicates import PredicateBase as _PetastormPredicateBase
except Exception:  # not installed (the default stack), or unable to import on this pyarrow
    _PetastormPredicateBase = object


class PetastormPredicate(_PetastormPredicateBase):  # type: ignore[misc,valid-type]
    """One of our predicates (:mod:`pipeline.predicates`) as petastorm's ``PredicateBase``."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def get_fields(self) -> set[str]:
        return set(self.inner.get_fields())

    def do_include(self, values: dict[str, Any]) -> bool:
        return bool(self.inner.do_include(values))


def _petastorm_predicate(predicate: Any) -> Any:
    if predicate is None or isinstance(predicate, _PetastormPredicateBase):
        return predicate
    if not (hasattr(predicate, "get_fields") and hasattr(predicate, "do_include")):
        raise ConfigError(
            f"predicate {predicate!r} has no get_fields()/do_include()", hint="use pipeline.predicates"
        )
    return PetastormPredicate(predicate)


def import_petastorm() -> Any:
    """The ``petastorm`` module, or a :class:`ConfigError` saying how to install it."""
    try:
        import petastorm
    except ImportError as exc:
        raise ConfigError(
            f'engine="petastorm" needs the petastorm package, which is not importable here ({exc})',
            hint='install the extra with its lock file: pip install -c constraints-petastorm.txt ".[petastorm]" '
            '(petastorm 0.12.1 needs pyarrow<15 and numpy<2), or use the default engine="pipeline"',
        ) from None
    # petastorm 0.12.1 on pyarrow 14 warns about its own use of pyarrow's legacy dataset API.
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=r"petastorm(\.|$)")
    return petastorm


def _petastorm_transform(transform: Any) -> tuple[Any, Any]:
    """``(transform_spec for petastorm, batch callable for us)``: at most one is not ``None``."""
    if transform is None:
        return None, None
    if not hasattr(transform, "edit_fields"):
        if not callable(transform):
            raise ConfigError(f"transform {transform!r} is neither a TransformSpec nor a callable")
        return None, transform
    from petastorm.transform import TransformSpec

    if isinstance(transform, TransformSpec):
        return transform, None
    edits = [
        (f.name, f.numpy_dtype, f.shape, f.nullable) if hasattr(f, "numpy_dtype") else tuple(f)[:4]
        for f in transform.edit_fields or []
    ]
    spec = TransformSpec(
        transform.func,
        edit_fields=edits or None,
        removed_fields=list(transform.removed_fields or []) or None,
        selected_fields=transform.selected_fields,
    )
    return spec, None


def _is_petastorm_dataset(url: str, petastorm_options: dict[str, Any]) -> bool:
    from petastorm.etl.dataset_metadata import PetastormMetadataError, get_schema_from_dataset_url

    try:
        get_schema_from_dataset_url(
            url,
            hdfs_driver=petastorm_options.get("hdfs_driver", "libhdfs3"),
            storage_options=petastorm_options.get("storage_options"),
        )
    except PetastormMetadataError:
        return False
    return True


class PetastormLoader(PrefetchedBatches):
    """Torch batches from a petastorm reader; a context manager and an iterator.

    Build it with :func:`open_petastorm_loader`. Batches are ``dict[str, torch.Tensor]`` (strings
    and other objects stay lists), collated like the default engine's. petastorm streams all
    epochs as one sequence, so :attr:`epoch` is ``None`` and ``drop_last`` drops only the stream's
    last incomplete batch.
    """

    def __init__(self, reader: Any, batch_size: int, shuffle_buffer: int, seed: int | None,
                 device: Any, drop_last: bool, prefetch: int, pad_value: int, batch_fn: Any,
                 ngram: bool) -> None:  # fmt: skip
        super().__init__(device, prefetch, name="pipeline-petastorm")
        self._reader = reader
        self._reader_stopped = False
        self._stop_lock = threading.Lock()
        self.batch_size = batch_size
        self._rng = np.random.default_rng(seed) if shuffle_buffer > 0 else None
        self._shuffle_buffer = shuffle_buffer
        self.drop_last = drop_last
        self.pad_value = pad_value
        self._batch_fn = batch_fn
        self._ngram = ngram
        self.epoch: int | None = None
        self.batches_returned = 0
        self.rows_returned = 0
        self._opened = time.monotonic()
        self._waited = 0.0

    def _rows(self, reader: Any) -> Iterator[tuple[dict[str, Any], int]]:
        for item in reader:
            if self._ngram:  # {offset: row} -> one row with fields "<name>@<offset>"
                yield {f"{k}@{off}": v for off, row in item.items() for k, v in row._asdict().items()}, 1
            elif reader.is_batched_reader:
                columns = item._asdict()
                yield {k: list(v) for k, v in columns.items()}, len(next(iter(columns.values()), []))
            else:
                yield item._asdict(), 1

    def _host_batches(self) -> Iterator[tuple[dict[str, Any], Any, None]]:
        """Runs in the prefetch thread: petastorm rows -> (host batch, pinned slot or None, None)."""
        buffer = RowBuffer(self._shuffle_buffer, self._rng)
        try:
            for columns, count in self._rows(self._reader):
                buffer.add(columns, count)
                while buffer.full(self.batch_size):
                    yield self._collate(buffer.take(self.batch_size))
            while buffer.size >= self.batch_size or (buffer.size and not self.drop_last):
                yield self._collate(buffer.take(self.batch_size))
        finally:
            self._stop_reader()

    def _stop_reader(self) -> None:
        with self._stop_lock:  # from the prefetch thread's end or from close(), whichever is first
            if self._reader_stopped:
                return
            self._reader_stopped = True
        self._reader.stop()
        self._reader.join()

    def _collate(self, rows: dict[str, list[Any]]) -> tuple[dict[str, Any], Any, None]:
        slot = self._slots.acquire() if self._slots is not None else None
        alloc = slot.allocate if slot is not None else cpu_allocator
        values: dict[str, Any] = {name: stackable(items) for name, items in rows.items()}
        if self._batch_fn is not None:
            try:
                values = self._batch_fn(values)
            except Exception as exc:
                exc.add_note(f"in the batch transform {self._batch_fn!r} (petastorm engine)")
                raise
        return collate_batch(values, self.pad_value, alloc), slot, None

    def __next__(self) -> dict[str, Any]:
        self._start()
        started = time.monotonic()
        batch, _ = self._next()
        self._waited += time.monotonic() - started
        self.batches_returned += 1
        first = next((v for v in batch.values() if isinstance(v, (torch.Tensor, list))), [])
        self.rows_returned += len(first)
        return batch

    def stats(self) -> dict[str, Any]:
        """``samples_per_s``, ``batches``, ``wait_fraction`` and ``rss_bytes`` since the loader opened."""
        elapsed = max(time.monotonic() - self._opened, 1e-9)
        try:
            with open("/proc/self/statm") as f:
                rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            rss = 0
        return {
            "engine": "petastorm",
            "samples_per_s": self.rows_returned / elapsed,
            "batches": self.batches_returned,
            "wait_fraction": min(1.0, self._waited / elapsed),
            "rss_bytes": rss,
        }

    def close(self) -> None:
        """Stop the prefetch thread and petastorm's reader pool; safe to call twice."""
        super().close()
        self._stop_reader()


def open_petastorm_loader(
    url: str | os.PathLike[str],
    reader: ReaderConfig | None = None,
    loader: LoaderConfig | None = None,
    *,
    fields: Sequence[str] | Any | None = None,
    transform: Any = None,
    rank: int | None = None,
    world_size: int | None = None,
    predicate: Any = None,
    filesystem: Any = None,
    pool: str | None = None,
    cache: str = "stream",
    cache_dir: str | os.PathLike[str] | None = None,
    cache_limit: int | None = None,
    **petastorm_options: Any,
) -> PetastormLoader:
    """Open ``url`` through petastorm's ``make_reader`` / ``make_batch_reader``.

    ``open_loader(url, engine="petastorm", ...)`` resolves its arguments into ``reader`` and
    ``loader`` (:func:`~pipeline.loader.loader.resolve_configs`) and calls this; call it directly
    for what ``open_loader`` does not take (``pool``, ``petastorm_options``).

    Args:
        url: Dataset folder or URL; a Petastorm dataset goes to ``make_reader``, plain Parquet to
            ``make_batch_reader``.
        reader: ``shuffle`` (petastorm's row-group and row shuffling, and a seeded buffer of
            ``shuffle_buffer`` rows), ``seed`` (petastorm's, and the buffer's), ``num_epochs``,
            ``workers`` (petastorm's ``workers_count``; ``0``: its dummy pool; ``None``: the CPU
            count) and ``workers_type``; ``read_ahead`` is not used (petastorm bounds memory with
            its own ``results_queue_size``). Defaults to ``None`` (``conf/reader.yaml``'s).
        loader: ``batch_size``, ``drop_last`` (of the stream's last batch), ``prefetch``,
            ``pad_value``, ``device``. Defaults to ``None`` (``conf/reader.yaml``'s).
        fields: Field names or regex patterns (``schema_fields``), or a petastorm ``NGram``
            (fields named ``<name>@<offset>`` in the batch). Defaults to ``None`` (all).
        transform: A TransformSpec (ours or petastorm's: petastorm's ``transform_spec``) or a
            callable on each batch (dict of numpy arrays and lists). Defaults to ``None``.
        rank: ``cur_shard``. Defaults to ``None`` (``torch.distributed``'s, else no sharding).
        world_size: ``shard_count``. Defaults to ``None`` (``torch.distributed``'s, else 1).
        predicate: A predicate (ours or petastorm's). Defaults to ``None``.
        filesystem: A filesystem petastorm accepts (fsspec / pyarrow legacy). Defaults to ``None``.
        pool: petastorm's ``reader_pool_type``: ``"thread"``, ``"process"`` or ``"dummy"``.
            Defaults to ``None`` (``"process"`` when ``reader.workers_type`` is ``"process"``,
            else ``"thread"``).
        cache: Only ``"stream"`` (petastorm's own cache: ``cache_type="local-disk"`` and
            ``cache_location`` in ``petastorm_options``). Defaults to ``"stream"``.
        cache_dir: Not supported by this engine (``None``). Defaults to ``None``.
        cache_limit: Not supported by this engine (``None``). Defaults to ``None``.
        **petastorm_options: Passed to the petastorm reader unchanged (``cache_type``,
            ``cache_location``, ``hdfs_driver``, ``rowgroup_selector``, ``filters``...).

    Returns:
        A :class:`PetastormLoader`; use it as a context manager so that petastorm's pool stops.

    Raises:
        ConfigError: petastorm is not installed, or an option is invalid (a reader or loader
            setting among ``petastorm_options`` included).
        DatasetError: ``url`` is not a dataset petastorm can open.
    """
    if reader is None or loader is None:
        reader_default, loader_default = resolve_configs(CONFIG_FILE, {}, source="open_petastorm_loader()")
        reader, loader = reader or reader_default, loader or loader_default
    settings = sorted(
        set(petastorm_options) & {f.name for c in (ReaderConfig, LoaderConfig) for f in dataclasses.fields(c)}
    )
    if settings:
        raise ConfigError(
            f"{', '.join(settings)} are reader/loader settings, not petastorm options",
            hint='pass them to open_loader(url, engine="petastorm", ...), or in the reader/loader configs',
        )
    batch_size, shuffle, seed, num_epochs = loader.batch_size, reader.shuffle, reader.seed, reader.num_epochs
    workers, device, drop_last, prefetch = reader.workers, loader.device, loader.drop_last, loader.prefetch
    shuffle_buffer, pad_value, workers_type = reader.shuffle_buffer, loader.pad_value, reader.workers_type
    petastorm = import_petastorm()

    if pool is None:
        pool = "process" if workers_type == "process" else "thread"
    if pool not in _POOLS:
        raise ConfigError(f"pool must be one of {', '.join(_POOLS)}, got {pool!r}")
    if cache != "stream" or cache_dir is not None or cache_limit is not None:
        raise ConfigError(
            f'engine="petastorm" has no cache={cache!r}, cache_dir or cache_limit',
            hint='pass petastorm\'s own cache_type="local-disk", cache_location=DIR, cache_size_limit=BYTES '
            'to open_petastorm_loader, or use the default engine="pipeline"',
        )
    url = os.fspath(url)
    if "://" not in url:
        url = "file://" + os.path.abspath(url)
    rank, world_size = resolve_shard(rank, world_size)
    spec, batch_fn = _petastorm_transform(transform)
    if isinstance(fields, str):
        fields = [fields]
    ngram = fields is not None and type(fields).__name__ == "NGram"
    try:
        batched = not _is_petastorm_dataset(url, petastorm_options)
    except Exception as exc:
        raise DatasetError(
            f"petastorm cannot open {url}: {exc}",
            hint="check the path; `pipeline inspect URL` describes a dataset",
        ) from exc
    if ngram and batched:
        raise ConfigError(f"an NGram needs a Petastorm dataset; {url} is plain Parquet")
    count = workers if workers is not None else max(1, os.cpu_count() or 1)
    kwargs: dict[str, Any] = {
        "schema_fields": list(fields) if fields is not None and not ngram else fields,
        "reader_pool_type": "dummy" if count == 0 else pool,
        "workers_count": max(1, count),
        "seed": seed,
        "shuffle_rows": shuffle,
        "shuffle_row_groups": shuffle,
        "predicate": _petastorm_predicate(predicate),
        "num_epochs": num_epochs,
        "cur_shard": rank if world_size > 1 else None,
        "shard_count": world_size if world_size > 1 else None,
        "transform_spec": spec,
        **({"filesystem": filesystem} if filesystem is not None else {}),
        **petastorm_options,
    }
    make = petastorm.make_batch_reader if batched else petastorm.make_reader
    log.debug("petastorm engine on %s: %s(%s)", url, make.__name__, kwargs)
    reader = make(url, **kwargs)
    return PetastormLoader(
        reader,
        batch_size=batch_size,
        shuffle_buffer=shuffle_buffer if shuffle else 0,
        seed=seed,
        device=device,
        drop_last=drop_last,
        prefetch=prefetch,
        pad_value=pad_value,
        batch_fn=batch_fn,
        ngram=ngram,
    )
