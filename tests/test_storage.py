"""pipeline.storage without a server: resolution, settings, errors, retries, commit rules."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from pipeline.convert.listing import _glob_match
from pipeline.errors import ConfigError, DatasetError
from pipeline.storage import (
    StorageConfig,
    backoff_delays,
    committed_files,
    effective_config,
    is_remote,
    is_transient,
    resolve,
    storage_error,
    storage_options,
    with_retries,
)
from pipeline.storage.commit import INDEX_KEY, attempt_name, is_attempt_file
from pipeline.storage.readahead import is_remote_filesystem


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_REGION", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws_config"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "envsecret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    return monkeypatch


def test_local_paths_and_file_urls(tmp_path: Path) -> None:
    fs, path = resolve(tmp_path)
    assert isinstance(fs, pafs.LocalFileSystem) and path == str(tmp_path.resolve())
    fs, path = resolve(f"file://{tmp_path}/x")
    assert path == str(tmp_path / "x") and not is_remote(f"file://{tmp_path}") and is_remote("s3://b/k")
    with pytest.raises(DatasetError, match="name no host"):
        resolve("file://host/x")


def test_env_then_profile_then_config_file_win_in_order(aws_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "aws_config").write_text(
        "[default]\nregion = us-west-2\nendpoint_url = http://10.0.0.1:9000\n"
    )
    cfg = effective_config(StorageConfig())
    assert cfg.endpoint_url == "http://10.0.0.1:9000" and cfg.region == "eu-west-1"  # env region wins
    assert cfg.access_key_id == "AKIAENV" and cfg.secret_access_key == "envsecret"
    aws_env.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:5000")
    opts = storage_options(StorageConfig())
    assert opts["endpoint_override"] == "127.0.0.1:5000" and opts["scheme"] == "http"
    opts = storage_options(StorageConfig(endpoint_url="https://minio.local", region="r1", retries=3))
    assert opts["endpoint_override"] == "minio.local" and opts["scheme"] == "https" and opts["region"] == "r1"
    assert storage_options(StorageConfig(anonymous=True))["anonymous"] is True
    with pytest.raises(ConfigError, match="not an http"):
        storage_options(StorageConfig(endpoint_url="ftp://x"))


def test_config_validation_and_yaml() -> None:
    from pipeline.storage import load_storage_config

    assert load_storage_config() == StorageConfig()  # conf/storage.yaml holds the defaults
    with pytest.raises(ConfigError, match="retries"):
        StorageConfig(retries=0)
    with pytest.raises(ConfigError, match="together"):
        StorageConfig(access_key_id="a")
    assert StorageConfig(**StorageConfig(region="x").to_dict()).region == "x"  # ships to tasks as a dict


def test_fsspec_schemes(tmp_path: Path) -> None:
    pytest.importorskip("fsspec")
    fs, path = resolve("memory://bucket/data")
    assert isinstance(fs, pafs.PyFileSystem) and path == "bucket/data"
    with fs.open_output_stream("bucket/data/a.txt") as out:
        out.write(b"x")
    assert fs.get_file_info("bucket/data/a.txt").size == 1 and is_remote_filesystem(fs)
    with pytest.raises(DatasetError, match="fsspec") as err:
        resolve("nosuchscheme://x/y")
    assert "HINT" in str(err.value)


def test_error_classes() -> None:
    assert is_transient(
        OSError("AWS Error SLOW_DOWN during GetObject: Please reduce your request rate (SlowDown)")
    )
    assert is_transient(OSError("... HTTP status 503 ..."))
    assert not is_transient(OSError("AWS Error ACCESS_DENIED during HeadObject operation: AccessDenied"))
    missing = storage_error(
        OSError("NO_SUCH_BUCKET: The specified bucket does not exist"), "s3://bk/x", "list"
    )
    assert "bucket 'bk' does not exist" in str(missing) and "HINT" in str(missing)
    denied = storage_error(OSError("AWS Error ACCESS_DENIED: AccessDenied"), "s3://bk/x", "write")
    assert "access denied" in str(denied) and "write to" in str(denied)
    down = storage_error(
        OSError("curlCode: 7, Couldn't connect to server"), "s3://bk/x", "read", "http://h:1"
    )
    assert "cannot be reached" in str(down) and "AWS_ENDPOINT_URL" in str(down)


def test_retries_back_off_on_transient_errors_only() -> None:
    cfg = StorageConfig(retries=4, retry_base_s=0.1, retry_max_s=0.3)
    assert backoff_delays(cfg) == [0.1, 0.2, 0.3]
    calls: list[int] = []
    slept: list[float] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise OSError("HTTP status 503 SlowDown")
        return "ok"

    assert with_retries(flaky, url="s3://b/k", action="list", config=cfg, sleep=slept.append) == "ok"
    assert slept == [0.1, 0.2]

    def denied() -> None:
        calls.append(1)
        raise OSError("AccessDenied")

    calls.clear()
    with pytest.raises(DatasetError, match="access denied"):
        with_retries(denied, url="s3://b/k", action="read", config=cfg, sleep=slept.append)
    assert len(calls) == 1  # not retried

    def always() -> None:
        raise OSError("HTTP status 503")

    with pytest.raises(DatasetError, match="503"):
        with_retries(always, url="s3://b/k", action="read", config=cfg, sleep=lambda s: None)


def test_glob_match() -> None:
    assert _glob_match("b/data/x.txt", "b/data/*.txt") and not _glob_match("b/data/s/x.txt", "b/data/*.txt")
    assert _glob_match("b/data/s/t/x.h5", "b/data/**/*.h5") and _glob_match("b/data/x.h5", "b/data/**/*.h5")


def _dataset(root: Path, names: list[str], index: list[str] | None) -> None:
    root.mkdir()
    table = pa.table({"x": [1, 2]})
    for name in names:
        pq.write_table(table, root / name)
    meta = {INDEX_KEY: json.dumps({n: 1 for n in index}).encode()} if index is not None else {}
    if index is not None:
        pq.write_metadata(table.schema.with_metadata(meta), root / "_common_metadata")


def test_committed_files(tmp_path: Path) -> None:
    fs = pafs.LocalFileSystem()
    a, b = (
        attempt_name("part-00000.parquet", "0123456789ab"),
        attempt_name("part-00001.parquet", "ba9876543210"),
    )
    assert (
        a == "part-00000-0123456789ab.parquet"
        and is_attempt_file(a)
        and not is_attempt_file("part-00000.parquet")
    )

    _dataset(tmp_path / "done", [a, b], [a])  # b: a leftover of another attempt
    files = [str(tmp_path / "done" / n) for n in (a, b)]
    assert (
        committed_files(fs, str(tmp_path / "done"), files, str(tmp_path / "done/_common_metadata"), url="u")
        == files[:1]
    )

    _dataset(tmp_path / "open", [a], None)
    with pytest.raises(DatasetError, match="unfinished conversion"):
        committed_files(fs, str(tmp_path / "open"), [str(tmp_path / "open" / a)], None, url="u")

    _dataset(tmp_path / "gone", [b], [a, b])
    with pytest.raises(DatasetError, match="are gone"):
        committed_files(
            fs,
            str(tmp_path / "gone"),
            [str(tmp_path / "gone" / b)],
            str(tmp_path / "gone/_common_metadata"),
            url="u",
        )

    _dataset(tmp_path / "plain", ["part-0.parquet"], None)  # Spark/pyarrow output: read as it is
    plain = [str(tmp_path / "plain/part-0.parquet")]
    assert committed_files(fs, str(tmp_path / "plain"), plain, None, url="u") == plain


def test_reader_threads_come_from_the_shortest_round_trip_not_the_queued_ones() -> None:
    """An open sends its requests together; those that queued behind the others at the store
    (here 60-90 ms) must not size the reader: the shortest one (the latency) does."""
    from pipeline.storage.readahead import note_round_trip, observed_latency, read_threads

    store = pafs.S3FileSystem(
        endpoint_override="127.0.0.1:9", scheme="http", region="us-east-1"
    )  # never called
    for seconds in [0.024, *([0.09, 0.06, 0.08] * 20)]:  # the listing alone, then 60 queued requests
        note_round_trip(store, seconds)
    assert observed_latency(store) == pytest.approx(0.024)
    assert read_threads(store, "bucket/ds", cpu_threads=2, config=StorageConfig()) == 2 + 12
