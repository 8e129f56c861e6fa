"""Conversion fixed costs: listing many files, planning millions, metadata without a second pass."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.convert.listing import list_source_files, split_by_bytes
from pipeline.convert.writer import _written_files


def test_listing_many_files_is_sorted_with_sizes_and_skips_hidden(tmp_path):
    want = {}
    for d in range(3):
        folder = tmp_path / f"c{d}" / ("deep" if d == 2 else "")
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(1500):  # 4,500 files: more than one chunk of parallel stats
            path = folder / f"{i:05d}.jpg"
            path.write_bytes(b"x" * (i % 7))
            want[str(path)] = i % 7
        (folder / ".hidden.jpg").write_bytes(b"h")
        (folder / "notes.txt").write_bytes(b"t")
    (tmp_path / "c0.jpg").write_bytes(b"abc")  # sorts after the folder c0/ ("/" < "." is false)
    want[str(tmp_path / "c0.jpg")] = 3
    files = list_source_files(tmp_path, extensions=(".jpg",))
    assert [f.path for f in files] == sorted(want)
    assert {f.path: f.size for f in files} == want


def test_listing_follows_links_once(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.jpg").write_bytes(b"12")
    os.symlink(tmp_path / "a", tmp_path / "a" / "loop")  # a link loop is entered once
    files = list_source_files(tmp_path, extensions=(".jpg",))
    assert [Path(f.path).relative_to(tmp_path).as_posix() for f in files] == ["a/x.jpg"]


def test_planning_a_million_files_is_fast_and_balanced():
    sizes = [(i * 7919) % 100_000 + 1 for i in range(1_000_000)]
    start = time.perf_counter()
    ranges = split_by_bytes(sizes, 64)
    assert time.perf_counter() - start < 2.0
    assert len(ranges) == 64 and ranges[0][0] == 0 and ranges[-1][1] == len(sizes)
    totals = [sum(sizes[a:b]) for a, b in ranges]
    assert max(totals) - min(totals) <= 2 * max(sizes)


def test_metadata_comes_from_what_the_tasks_returned_without_opening_files(tmp_path):
    returned = [
        {"partition": 1, "rows": 10, "row_groups": 2, "file_bytes": 500},
        {"partition": 0, "rows": 4, "row_groups": 1, "file_bytes": 200},
        {"partition": 2, "rows": 0, "row_groups": 0, "file_bytes": 0},  # empty partition: no file
    ]
    files = _written_files(tmp_path, returned)  # no such files exist: nothing may be opened
    assert [(f.name, f.rows, f.row_groups, f.size) for f in files] == [
        ("part-00000.parquet", 4, 1, 200),
        ("part-00001.parquet", 10, 2, 500),
    ]


def test_metadata_reads_the_footer_when_a_task_returns_only_rows(tmp_path):
    table = pa.table({"x": list(range(6))})
    pq.write_table(table, tmp_path / "part-00003.parquet", row_group_size=4)
    files = _written_files(tmp_path, [{"partition": 3, "rows": 6}])
    size = (tmp_path / "part-00003.parquet").stat().st_size
    assert [(f.name, f.rows, f.row_groups, f.size) for f in files] == [("part-00003.parquet", 6, 2, size)]


def _numbers(items, errors):
    yield {"x": list(items)}


def test_a_task_gets_only_its_items_and_returns_the_facts_of_its_file(tmp_path):
    import pickle

    from pipeline.convert.tasks import PartitionTask

    (tmp_path / "data").mkdir()
    task = PartitionTask(
        [],  # the writer's RDD form: no plan in the task function itself
        _numbers,
        pa.schema([("x", pa.int64())]),
        on_error="fail",
        data_dir=str(tmp_path / "data"),
        compression="none",
        row_group_bytes=1 << 20,
    )
    assert len(pickle.dumps(task)) < 4096
    (facts,) = list(task.run_parts([(3, [5, 6, 7])]))
    written = tmp_path / "data" / "part-00003.parquet"
    facts_of_file = {k: facts[k] for k in ("partition", "rows", "row_groups", "file_bytes")}
    assert facts_of_file == {"partition": 3, "rows": 3, "row_groups": 1, "file_bytes": written.stat().st_size}
    assert facts["skipped"] == []
    assert pq.read_table(written).column("x").to_pylist() == [5, 6, 7]


def _run_fresh(code: str) -> str:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


def test_find_images_of_a_folder_equals_the_listing_of_its_files(tmp_path):
    from pipeline.convert.image_sources import find_images

    for name in ("b/2.png", "a/x/1.JPG", "a/0.jpeg", "a/.hidden.jpg", "b/notes.txt", ".git/c.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(name.encode())
    os.symlink(tmp_path / "a", tmp_path / "b" / "loop")  # entered once: as a/ (name order), not b/loop/
    source = find_images(str(tmp_path))
    files = list_source_files(tmp_path, extensions=(".jpeg", ".jpg", ".png"))
    assert source.layout == "tree" and source.class_names == ["a", "b"]
    assert [p for p, _, _ in source.items] == [f.path for f in files] and source.sizes == [
        f.size for f in files
    ]
    assert [(rel, label) for _, rel, label in source.items] == [
        ("a/0.jpeg", 0),
        ("a/x/1.JPG", 0),
        ("b/2.png", 1),
    ]


def test_image_tasks_build_arrow_columns_without_importing_pandas(tmp_path):
    """pyarrow's ``pa.array(<list>)`` imports pandas (~0.6 CPU-s per Spark worker) to check for a
    Series; the image batches are built from buffers and written without it."""
    import numpy as np
    from PIL import Image

    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), i * 40, np.uint8)).save(tmp_path / f"{i}.jpg")
    code = f"""
import sys
import pyarrow as pa, pyarrow.parquet as pq
from pipeline.convert.common import RecordErrors
from pipeline.convert.image_sources import find_images
from pipeline.convert.images import ImageOptions, process_images
source = find_images({str(tmp_path)!r})
batches = list(process_images(source.items, RecordErrors("fail"), options=ImageOptions(), encoding="jpeg"))
schema = pa.schema([("image", pa.binary()), ("label", pa.int64()), ("path", pa.string())])
arrays = [pa.array(batches[0][n], type=schema.field(n).type) for n in schema.names]  # as the task does
pq.write_table(pa.Table.from_batches([pa.RecordBatch.from_arrays(arrays, schema=schema)]), {str(tmp_path / "out.parquet")!r})
print("pandas" in sys.modules)
"""
    assert _run_fresh(code) == "False"
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column("path").to_pylist() == ["0.jpg", "1.jpg", "2.jpg"]
    assert table.column("label").to_pylist() == [-1, -1, -1]
    assert table.column("image").to_pylist() == [(tmp_path / f"{i}.jpg").read_bytes() for i in range(3)]
