"""Process workers: the same batches as threads, clean shutdown, errors with their origin, a
killed worker, no leaked shared memory (the autouse leak check in conftest covers /dev/shm)."""

from __future__ import annotations

import hashlib
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import numpy as np
import psutil
import pytest

import pipeline
from pipeline.errors import ConfigError, PipelineError
from pipeline.format import TransformSpec
from pipeline.reader.plan import WorkItem
from pipeline.reader.source import DatasetSource
from pipeline.reader.workers import seed_task, task_rng, time_reads, untimed
from pipeline.reader.workers_cores import cgroup_cpu_limit, usable_cores
from pipeline.reader.workers_process import ProcessWorkers, SourceRecipe, WorkerDied
from tests.datasets import write_format_dataset

ROWS = 90  # 9 row groups of 10 rows in 2 files


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    return write_format_dataset(
        tmp_path_factory.mktemp("workers") / "ds", rows=ROWS, files=2, row_group_rows=10
    )


def augment(row):
    """A random crop (task_rng) and a random flip (numpy's global generator), to float32 CHW."""
    y, x = task_rng().integers(0, 3, size=2)
    image = row["image"][y : y + 6, x : x + 6]
    if np.random.random() < 0.5:
        image = image[:, ::-1]
    row["image"] = (image.astype(np.float32) / 255.0).transpose(2, 0, 1).copy()
    return row


def task_rng_only(row):
    y, x = task_rng().integers(0, 3, size=2)
    row["image"] = (row["image"][y : y + 6, x : x + 6].astype(np.float32) / 255.0).transpose(2, 0, 1).copy()
    return row


def fail_on_row_42(row):
    if row["id"] == 42:
        raise ValueError("row 42 is bad")
    return row


def slow(row):
    time.sleep(0.05)
    return row


_EARLIER: set[int] = set()


@pytest.fixture(autouse=True)
def _earlier_children() -> Iterator[None]:
    """Children that existed before the test (an orphan this subreaper inherited, say)."""
    _EARLIER.clear()
    _EARLIER.update(p.pid for p in psutil.Process().children())
    yield
    _EARLIER.clear()


def workers() -> list[psutil.Process]:
    """This process's reader worker processes: forked copies of this process (same command
    line) or multiprocessing's spawned ones -- not its resource tracker, a Spark JVM, a Spark
    Python daemon or another test's orphan that this subreaper inherited."""
    own = psutil.Process().cmdline()
    found = []
    for child in psutil.Process().children():
        try:
            cmdline = child.cmdline()
            text = " ".join(cmdline)
            if (
                child.pid not in _EARLIER
                and child.status() != psutil.STATUS_ZOMBIE
                and (cmdline == own or "multiprocessing" in text)
                and not any(m in text for m in ("resource_tracker", "forkserver"))
            ):
                found.append(child)
        except psutil.Error:
            pass
    return found


def spec(func):
    return TransformSpec(func, edit_fields=[("image", np.float32, (3, 6, 6), False)])


def digest(url, **kw):
    """A hash of every batch's values, in order, and the number of batches."""
    kw.setdefault("config", None)
    h, n = hashlib.sha256(), 0
    with pipeline.open_loader(url, batch_size=16, shuffle_buffer=24, num_epochs=2, seed=5, **kw) as loader:
        for batch in loader:
            for name in ("id", "image", "vector"):
                h.update(batch[name].numpy().tobytes())
            h.update("|".join(batch["name"]).encode())
            n += 1
    return h.hexdigest(), n


def test_same_batches_for_every_worker_count_and_kind(url):
    reference = digest(url, transform=spec(task_rng_only), workers=1, workers_type="thread")
    assert reference[1] == 12  # 2 epochs of ceil(90 / 16)
    for kind, workers, method in [
        ("thread", 2, "spawn"),
        ("thread", 4, "spawn"),
        ("process", 1, "fork"),
        ("process", 2, "spawn"),
        ("process", 4, "fork"),
    ]:
        got = digest(
            url, transform=spec(task_rng_only), workers=workers, workers_type=kind, start_method=method
        )
        assert got == reference, (kind, workers, method)


def test_processes_seed_the_global_generators_per_item(url):
    """An augmentation that draws from np.random gives the same batches for 1, 2 and 4 processes."""
    one = digest(url, transform=spec(augment), workers=1, workers_type="process", start_method="fork")
    for workers in (2, 4):
        got = digest(
            url, transform=spec(augment), workers=workers, workers_type="process", start_method="fork"
        )
        assert got == one, workers


def test_auto_picks_processes_for_a_python_transform_only(url):
    with pipeline.open_loader(
        url, config=None, workers=2, transform=spec(augment), start_method="fork"
    ) as loader:
        assert loader.reader.workers_type == "process"
    with pipeline.open_loader(url, config=None, workers=2) as loader:
        assert loader.reader.workers_type == "thread"
    lam = TransformSpec(lambda row: row)
    with pipeline.open_loader(url, config=None, workers=2, transform=lam, start_method="spawn") as loader:
        assert loader.reader.workers_type == "thread"  # spawn workers cannot get a lambda
    with pytest.raises(ConfigError, match="cannot be sent to worker processes"):
        pipeline.open_loader(
            url, config=None, workers=2, transform=lam, workers_type="process", start_method="spawn"
        )
    with pipeline.open_loader(url, config=None, workers=2, transform=lam) as loader:
        assert loader.reader.workers_type == "process"  # fork (the default) workers inherit a lambda
        assert len(list(loader)) == 2  # fork workers inherit a lambda


def test_auto_reads_with_threads_when_the_row_buffer_does_not_fit_in_shared_memory(url, monkeypatch, caplog):
    """A container's /dev/shm (64 MB by default) cannot hold the row buffer of a realistic
    transform: "auto" reads with threads and warns with the sizes, instead of failing the way an
    explicit workers_type="process" does."""
    import logging

    from pipeline.reader import shm

    with pipeline.open_loader(url, config=None, workers=2, transform=spec(task_rng_only)) as loader:
        assert loader.reader.workers_type == "process"  # room enough here
        expected = [b["image"].numpy().tobytes() for b in loader]
    monkeypatch.setattr(shm, "shm_free_bytes", lambda: 64 * 1024)
    with (
        caplog.at_level(logging.WARNING, logger="pipeline"),
        pipeline.open_loader(url, config=None, workers=2, transform=spec(task_rng_only)) as loader,
    ):
        assert loader.reader.workers_type == "thread"
        assert [b["image"].numpy().tobytes() for b in loader] == expected
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("worker threads" in m and "/dev/shm has 64.0 KiB free" in m for m in warned), warned
    explicit = pipeline.open_loader(
        url, config=None, workers=2, workers_type="process", transform=spec(task_rng_only)
    )
    with explicit, pytest.raises(ConfigError, match="shared memory for the row buffer"):
        next(iter(explicit))
    with pipeline.open_loader(url, config=None, workers=2) as loader:  # no transform: threads, quietly
        assert loader.reader.workers_type == "thread"
    # room for one rank's buffer, not for the 4 ranks of this machine (sparse segments until written)
    monkeypatch.setattr(shm, "shm_free_bytes", lambda: 4 << 20)
    with pipeline.open_loader(url, config=None, workers=2, transform=spec(task_rng_only)) as loader:
        assert loader.reader.workers_type == "process"
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    with pipeline.open_loader(url, config=None, workers=2, transform=spec(task_rng_only)) as loader:
        assert loader.reader.workers_type == "thread"


@pytest.mark.parametrize("how", ["break", "exception", "ctrl-c"])
def test_leaving_the_loop_stops_the_workers_and_frees_shared_memory(url, how):
    mine = f"pipeline_{os.getpid()}_"
    expected = pytest.raises((RuntimeError, KeyboardInterrupt)) if how != "break" else _nothing()
    with (
        expected,
        pipeline.open_loader(
            url, config=None, workers=2, transform=spec(augment), start_method="fork", num_epochs=None
        ) as loader,
    ):
        for i, _ in enumerate(loader):
            assert any(name.startswith(mine) for name in os.listdir("/dev/shm"))
            if i == 3:
                if how == "break":
                    break
                raise RuntimeError("training step failed") if how == "exception" else KeyboardInterrupt
    assert not any(name.startswith(mine) for name in os.listdir("/dev/shm"))
    assert not workers()


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_a_workers_error_names_its_origin_and_keeps_its_traceback(url):
    with (
        pytest.raises(ValueError, match="row 42 is bad") as info,
        pipeline.open_loader(
            url, config=None, workers=2, transform=TransformSpec(fail_on_row_42), start_method="fork"
        ) as loader,
    ):
        list(loader)
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "while reading" in notes and "row group" in notes and ".parquet" in notes
    assert "in reader worker process" in notes
    assert "fail_on_row_42" in str(info.value.__cause__)  # the worker's traceback


@pytest.mark.timeout(60)
def test_a_killed_worker_is_an_error_naming_it_not_a_hang(url):
    with (
        pytest.raises(WorkerDied, match="SIGKILL") as info,
        pipeline.open_loader(
            url, config=None, workers=2, transform=TransformSpec(slow), start_method="fork", num_epochs=None
        ) as loader,
    ):
        next(loader)
        victim = workers()[0].pid
        os.kill(victim, signal.SIGKILL)
        for _ in loader:
            pass
    assert str(victim) in str(info.value)
    assert "row group" in str(info.value)


def test_resume_and_stats_work_with_process_workers(url):
    kw = dict(
        config=None, batch_size=8, shuffle_buffer=16, seed=2, num_epochs=2, transform=spec(task_rng_only)
    )
    with pipeline.open_loader(url, workers=2, workers_type="thread", **kw) as loader:
        reference = [batch["id"].tolist() for batch in loader]
    with pipeline.open_loader(url, workers=2, workers_type="process", start_method="fork", **kw) as loader:
        head = [next(loader)["id"].tolist() for _ in range(7)]
        state = loader.state_dict()
        stats = loader.stats()
    assert stats["stages"]["read"] > 0 and stats["stages"]["decode"] > 0 and stats["workers"] == 2
    with pipeline.open_loader(url, workers=1, workers_type="process", start_method="fork", **kw) as loader:
        loader.load_state_dict(state)
        rest = [batch["id"].tolist() for batch in loader]
    assert head + rest == reference


def test_every_loading_mode_gives_the_same_batches(url, tmp_path):
    reference = digest(url, workers=2)
    assert digest(url, workers=2, cache="memory") == reference
    assert digest(url, workers=2, cache="disk", cache_dir=tmp_path / "cache") == reference
    assert digest(url, workers=2, cache_dir=tmp_path / "cache") == reference  # from the disk cache now
    with_transform = digest(url, workers=2, transform=spec(task_rng_only), start_method="fork")
    got = digest(url, workers=2, transform=spec(task_rng_only), cache="disk", cache_dir=tmp_path / "c2")
    assert got == with_transform
    with pytest.raises(ConfigError, match="cache"):
        pipeline.open_loader(
            url, config=None, cache="memory", workers_type="process", transform=TransformSpec(slow)
        )


def test_usable_cores_reads_affinity_cgroup_quota_and_local_ranks(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(tmp_path) == 1.5
    affinity = len(os.sched_getaffinity(0))
    count = usable_cores({"LOCAL_WORLD_SIZE": "1"}, tmp_path)
    assert count.cores == min(affinity, 2) and count.quota == 1.5
    assert usable_cores({"LOCAL_WORLD_SIZE": "4"}, tmp_path).cores == 1
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("300000")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert cgroup_cpu_limit(v1) == 3.0
    assert "usable cores" in usable_cores({}, tmp_path).describe()


def test_a_full_dev_shm_is_a_config_error_in_the_worker_not_a_crash(monkeypatch):
    """MADV_POPULATE_WRITE fails with ENOMEM/EFAULT where the write would raise SIGBUS (no room
    left on /dev/shm, e.g. other ranks' buffers): the worker raises the ConfigError instead."""
    import errno

    from pipeline.reader import shm

    class Full:
        size = 1 << 20

        class _mmap:
            @staticmethod
            def madvise(*args):
                raise OSError(errno.ENOMEM, "Cannot allocate memory")

    monkeypatch.setattr(shm, "_populate_ok", True)
    layout = shm.ColumnLayout("image", "x", "<f4", (16, 3, 56, 56))
    with pytest.raises(ConfigError, match="/dev/shm is full"):
        shm.populate_rows([Full()], [layout], np.array([1, 2]))
    assert shm._populate_ok  # still on: the next item may find room


def test_available_memory_reads_meminfo_and_the_cgroup_limit(tmp_path):
    from pipeline.reader.workers_cores import available_memory

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24684084 kB\nMemAvailable:    2000000 kB\n")
    cgroup = tmp_path / "cg"
    cgroup.mkdir()
    assert available_memory(meminfo, cgroup) == 2_000_000 * 1024  # no cgroup limit
    (cgroup / "memory.max").write_text("max\n")
    (cgroup / "memory.current").write_text("1000\n")
    assert available_memory(meminfo, cgroup) == 2_000_000 * 1024
    (cgroup / "memory.max").write_text(f"{1 << 30}\n")  # a 1 GiB container, 256 MiB used
    (cgroup / "memory.current").write_text(f"{1 << 28}\n")
    assert available_memory(meminfo, cgroup) == (1 << 30) - (1 << 28)
    (cgroup / "memory.stat").write_text(f"anon 1000\ninactive_file {1 << 27}\nactive_file 5\n")
    assert available_memory(meminfo, cgroup) == (1 << 30) - (1 << 27)  # page cache is not used
    assert available_memory(tmp_path / "none", tmp_path / "none") is None


def test_a_row_buffer_larger_than_the_memory_left_is_warned_about(url, monkeypatch, caplog):
    """``shuffle_buffer`` counts rows: a large transformed row makes it gigabytes. The loader says
    so at open, with the sizes and what to lower, instead of leaving it to the OOM killer."""
    import logging

    import pipeline.reader.reader as reader_mod

    big = TransformSpec(task_rng_only, edit_fields=[("image", np.float32, (3, 6, 6), False)])
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        monkeypatch.setattr(reader_mod, "available_memory", lambda: 1 << 40)
        with pipeline.open_loader(url, config=None, workers=2, workers_type="thread", transform=big):
            pass
        assert not [r for r in caplog.records if "row buffer" in r.getMessage()]
        monkeypatch.setattr(reader_mod, "available_memory", lambda: 64 * 1024)
        with pipeline.open_loader(
            url, config=None, workers=2, workers_type="thread", transform=big
        ) as loader:
            assert len(list(loader)) == 2  # a warning, not an error
    warned = [r.getMessage() for r in caplog.records if "row buffer" in r.getMessage()]
    # 90 rows in an epoch (not the 4,096 of shuffle_buffer) and 5 items of 10 rows in flight
    assert len(warned) == 1 and "can hold 140 rows of 460 B" in warned[0], warned
    assert "lower shuffle_buffer" in warned[0], warned


def test_workers_do_not_take_ctrl_c(url):
    """SIGINT goes to the training loop; workers ignore it and keep going until the loader closes."""
    with pipeline.open_loader(
        url, config=None, workers=2, transform=TransformSpec(slow), start_method="fork"
    ) as loader:
        next(loader)
        for child in workers():
            os.kill(child.pid, signal.SIGINT)
        assert len(list(loader)) == len(loader) - 1  # the rest of the epoch


def read_on_a_rank(url: str) -> dict:
    """Run in each TorchDistributor rank: read the rank's shard through worker processes."""
    import torch.distributed as dist

    from pipeline.train.distributed import setup

    with setup(use_gpu=False) as ctx:
        with pipeline.open_loader(url, config=None, batch_size=8, transform=spec(task_rng_only)) as loader:
            ids = [i for batch in loader for i in batch["id"].tolist()]
            kind, count = loader.reader.workers_type, loader.reader.workers
        shards: list = [None] * ctx.world_size
        dist.all_gather_object(shards, ids)
        return {"shards": shards, "kind": kind, "workers": count, "local": os.environ.get("LOCAL_WORLD_SIZE")}


@pytest.mark.spark
def test_worker_processes_inside_torchdistributor_ranks(spark, url, monkeypatch):
    from pipeline.train.distributed import run_distributed
    from tests.conftest import REPO

    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the ranks unpickle read_on_a_rank by reference
    result = run_distributed(read_on_a_rank, url, num_processes=2, use_gpu=False)
    assert result["kind"] == "process" and result["local"] == "2"
    assert result["workers"] == max(1, usable_cores({}).cores // 2)
    first, second = result["shards"]
    assert sorted(first + second) == list(range(ROWS)) and not set(first) & set(second)


def test_strings_and_token_lists_cross_from_worker_processes(tmp_path):
    """Non-fixed fields (strings, variable-length token lists) travel back from the workers."""
    from tests.datasets import write_parquet_dataset

    plain = write_parquet_dataset(tmp_path / "pq", rows=101, files=4, row_group_rows=7)
    got = {}
    for kind in ("thread", "process"):
        with pipeline.open_loader(
            plain, config=None, batch_size=8, shuffle_buffer=16, workers=2, workers_type=kind, num_epochs=2
        ) as loader:
            got[kind] = [(b["id"].tolist(), b["tokens"].tolist(), b["name"]) for b in loader]
    assert got["process"] == got["thread"] and len(got["thread"]) == 26


def test_fork_workers_inherit_the_decoders_the_parent_imported(url):
    """Decoding imports OpenCV and pandas lazily; the parent imports them before it forks, so that
    each worker of each loader does not (0.3-0.5 s per worker on a 2-core machine)."""
    code = (
        "import sys\n"
        "from pipeline.reader.source import DatasetSource\n"
        "from pipeline.reader import workers_process\n"
        f"source = DatasetSource({url!r})\n"
        "before = {m for m in ('cv2', 'pandas') if m in sys.modules}\n"
        "workers_process._warm_decoders(source)\n"
        "print(sorted(before), sorted(m for m in ('cv2', 'pandas') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0] == "[] ['cv2', 'pandas']"


def test_the_parents_source_reaches_workers_without_its_read_timer(url):
    """Workers get the parent's source (pickled, or inherited by fork), never its stats wrapper."""
    source = DatasetSource(url)
    seen: list[float] = []
    time_reads(source, seen.append)
    time_reads(source, seen.append)  # a timed source is not wrapped twice
    source.read(WorkItem(0, 0, 0, 10))
    assert len(seen) == 1
    with pytest.raises(Exception):  # noqa: B017 -- the wrapper (a closure) does not pickle
        pickle.dumps(source)
    clone = pickle.loads(pickle.dumps(untimed(source)))
    assert clone.read(WorkItem(0, 0, 0, 10)).rows == 10 and len(seen) == 1
    assert clone.sizes == source.sizes and untimed(clone) is clone


def test_wind_down_lets_the_workers_exit_before_close(url):
    """The reader says when no item will follow: the workers exit while it drains its buffer."""
    source = DatasetSource(url)
    pool = ProcessWorkers(SourceRecipe(source.url, source.options), source, 2, seed=0, start_method="fork")
    mine = f"pipeline_{os.getpid()}_"
    try:
        buffer = pool.buffer(source.specs, capacity=20, size=0, rng=None)
        item = WorkItem(0, 0, 0, 10)
        rows = buffer.reserve(10)
        pool.finish(pool.submit(item, buffer, rows), item, buffer, rows)
        assert buffer.columns["id"][rows].tolist() == DatasetSource(url).read(item).columns["id"].tolist()
        assert workers()
        pool.wind_down()
        deadline = time.monotonic() + 30
        while workers() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not workers()
        assert any(name.startswith(mine) for name in os.listdir("/dev/shm"))  # close() unlinks it
        buffer.columns.clear()
    finally:
        pool.close()
    assert not any(name.startswith(mine) for name in os.listdir("/dev/shm"))


def missing_image(row):
    del row["image"]
    return row


def wrong_shape(row):
    row["image"] = np.zeros((2, 2), dtype=np.float32)
    return row


def test_row_transforms_write_straight_into_the_row_buffer(url):
    """read_into applies a row-form transform row by row into the buffer: the rows read() gives,
    and its errors."""
    source = DatasetSource(url, pipeline.reader.ReadOptions(transform=spec(task_rng_only)))
    item = WorkItem(0, 3, 2, 9)
    seed_task(0, item, global_rngs=False)
    expected = source.read(item).columns
    out = {name: np.zeros((12, *s.shape), dtype=s.dtype) if s.kind == "fixed" else np.empty(12, dtype=object)
           for name, s in source.specs.items()}  # fmt: skip
    rows = np.array([11, 0, 5, 3, 2, 7, 1])
    seed_task(0, item, global_rngs=False)
    source.read_into(item, out, rows)
    for name, column in expected.items():
        assert np.array_equal(np.stack(out[name][rows]), np.stack(column)), name
    for func, message in ((missing_image, "did not return field 'image'"), (wrong_shape, "shape")):
        bad = DatasetSource(url, pipeline.reader.ReadOptions(transform=spec(func)))
        with pytest.raises(PipelineError, match=message):
            bad.read_into(item, out, rows)


def _attach_segment(name):
    from multiprocessing import shared_memory

    segment = shared_memory.SharedMemory(name=name)  # registers with the resource tracker (< 3.13)
    segment.close()


def _fork_while_held(locks, target, *args):
    """Fork a child running ``target(*args)`` while another thread of this process holds
    ``locks``; returns whether the child hung (killed after 20 s) and its exit code."""
    import contextlib
    import multiprocessing
    import threading

    holding, release = threading.Event(), threading.Event()

    def hold():
        with contextlib.ExitStack() as stack:
            for lock in locks:
                stack.enter_context(lock)
            holding.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        holding.wait(10)
        child = multiprocessing.get_context("fork").Process(target=target, args=args)
        child.start()
        release.set()
        child.join(20)
        hung = child.is_alive()
        if hung:
            child.kill()
        return hung, child.exitcode
    finally:
        release.set()
        holder.join()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork start method")
def test_a_worker_forked_while_another_thread_holds_the_tracker_lock_does_not_hang():
    """The hang seen in CI: a fork worker attaching shared memory waited forever for the resource
    tracker's lock, held at the fork by another thread of the parent."""
    from multiprocessing import resource_tracker, shared_memory

    import pipeline.reader.workers_process  # noqa: F401 - registers the at-fork reset

    segment = shared_memory.SharedMemory(create=True, size=64)
    try:
        hung, code = _fork_while_held(
            [resource_tracker._resource_tracker._lock], _attach_segment, segment.name
        )
        assert not hung and code == 0, code
    finally:
        segment.close()
        segment.unlink()


def _use_storage_locks():
    import importlib

    import pyarrow.fs as pafs

    readahead = importlib.import_module("pipeline.storage.readahead")
    resolve = importlib.import_module("pipeline.storage.resolve")  # the module, not the function
    readahead.note_round_trip(pafs.LocalFileSystem(), 0.01)
    resolve._drop_filesystems()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork start method")
def test_a_child_forked_while_storage_locks_are_held_does_not_hang():
    """The same hazard for this project's module-level locks (the S3 filesystem cache, the
    round trips noted for sizing readers): a forked child gets new ones."""
    import importlib

    readahead = importlib.import_module("pipeline.storage.readahead")
    resolve = importlib.import_module("pipeline.storage.resolve")  # the module, not the function
    hung, code = _fork_while_held([readahead._ROUND_TRIPS_LOCK, resolve._LOCK], _use_storage_locks)
    assert not hung and code == 0, code


def test_workers_map_the_rows_of_an_item_before_writing_them():
    """``populate_rows`` maps the pages of an item's rows in one call per run of pages, so the
    writes do not fault page by page (2-3.5 us each here, 9 per 37.6 KB row); rows it was not
    asked for keep their values, and small rows (many per page) are merged into runs."""
    import mmap
    import resource

    from pipeline.reader import shm

    probe = mmap.mmap(-1, mmap.PAGESIZE)
    try:
        probe.madvise(shm._POPULATE_WRITE or 0, 0, mmap.PAGESIZE)
    except (OSError, AttributeError, ValueError):
        pytest.skip("madvise(MADV_POPULATE_WRITE) is not available here (Linux >= 5.14)")
    finally:
        probe.close()
    shared = shm.SharedColumns()
    try:
        images = shared.allocate("image", (64, 3, 56, 56), np.dtype(np.float32))  # 9.2 pages a row
        labels = shared.allocate("label", (64,), np.dtype(np.int64))
        images[5] = 7.0
        columns, handles = shm.attach_columns(shared.layouts)  # a second mapping, as a worker's
        rows = np.array([40, 3, 17, 18, 19, 63, 0])
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        shm.populate_rows(handles, shared.layouts, rows)
        assert shm._populate_ok, "madvise failed on a row range (alignment?)"
        middle = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for r in rows.tolist():
            columns["image"][r] = r
            columns["label"][r] = r
        after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        pages = len(rows) * images[0].nbytes // mmap.PAGESIZE
        assert middle - before >= pages  # populated (counted as faults, without the traps)
        assert after - middle < pages // 4, (after - middle, pages)  # the writes found them mapped
        assert (images[rows] == rows[:, None, None, None]).all() and (labels[rows] == rows).all()
        assert (images[5] == 7.0).all() and (images[4] == 0).all() and labels[5] == 0
        del columns
        for h in handles:
            h.close()
    finally:
        del images, labels
        shared.close()
