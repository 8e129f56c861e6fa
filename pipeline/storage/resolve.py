"""One place that turns a path or URL into ``(pyarrow FileSystem, path)``.

* local paths and ``file://`` URLs -> ``LocalFileSystem``;
* ``s3://bucket/key`` -> pyarrow's ``S3FileSystem``, configured from :class:`StorageConfig`
  (``conf/storage.yaml``) over the standard AWS places (``AWS_ENDPOINT_URL[_S3]``,
  ``AWS_DEFAULT_REGION``/``AWS_REGION``, ``AWS_PROFILE`` and ``~/.aws/config``; credentials from
  the SDK's chain), with the SDK's standard retry strategy;
* any other scheme (``gs://``, ``abfs://``, ``hdfs://``...) -> fsspec wrapped in
  ``PyFileSystem(FSSpecHandler)`` when fsspec and the scheme's package are installed (``hdfs``
  uses pyarrow's own ``HadoopFileSystem`` through ``from_uri``).

Filesystems are cached per process *and pid*, so that a forked worker never reuses its
parent's connections; Spark executors call :func:`resolve` with the URL and the options dict,
never with a filesystem object.
"""

from __future__ import annotations

import atexit
import configparser
import contextlib
import dataclasses
import gc
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pyarrow.fs as pafs

from pipeline.errors import ConfigError, DatasetError
from pipeline.storage.config import StorageConfig, load_storage_config

__all__ = [
    "effective_config",
    "endpoint_of",
    "is_remote",
    "resolve",
    "s3_filesystem",
    "storage_options",
    "task_defaults",
]

log = logging.getLogger(__name__)

_CACHE: dict[tuple[Any, ...], pafs.FileSystem] = {}
_LOCK = threading.Lock()


def _fresh_lock() -> None:  # a forked child: the lock may have been held by a parent thread at the fork
    global _LOCK
    _LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fresh_lock)
_IO_THREADS_SET: list[int] = []
_TASK_DEFAULT: list[dict[str, Any]] = []  # set by task_defaults() inside a Spark task only


def is_remote(path_or_url: str | os.PathLike[str]) -> bool:
    """Whether this is a URL of a non-local filesystem (``s3://``, ``gs://``, ...)."""
    scheme = urlparse(os.fspath(path_or_url)).scheme
    return len(scheme) > 1 and scheme != "file"


def _aws_profile_values(profile: str | None) -> dict[str, str]:
    """``endpoint_url`` and ``region`` of a profile in ``$AWS_CONFIG_FILE`` or ``~/.aws/config``."""
    name = profile or os.environ.get("AWS_PROFILE") or "default"
    path = Path(os.environ.get("AWS_CONFIG_FILE", "~/.aws/config")).expanduser()
    if not path.is_file():
        return {}
    parser = configparser.ConfigParser()
    try:
        parser.read(path)
    except configparser.Error as exc:
        raise ConfigError(f"{path}: not a valid AWS config file: {exc}") from None
    section = name if name == "default" else f"profile {name}"
    if not parser.has_section(section):
        return {}
    values = dict(parser.items(section))
    out = {k: values[k] for k in ("endpoint_url", "region") if values.get(k)}
    s3 = values.get("s3", "")  # nested "s3 =\n  endpoint_url = ..." block
    for line in s3.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "endpoint_url" and value.strip():
            out["endpoint_url"] = value.strip()
    return out


def endpoint_of(config: StorageConfig) -> str | None:
    """The S3 endpoint URL in force: config, ``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``, profile."""
    return (
        config.endpoint_url
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
        or _aws_profile_values(config.profile).get("endpoint_url")
    )


def effective_config(config: StorageConfig | dict[str, Any] | None = None) -> StorageConfig:
    """``config`` with every value the standard AWS places supply filled in.

    Endpoint, region and static credentials from the environment (and the profile's
    ``endpoint_url``/``region``) become explicit, so that Spark tasks shipped this config open
    the same store as the driver, whatever their own environment. Credentials that only the
    SDK's chain knows (``~/.aws/credentials``, instance roles) stay implicit.
    """
    cfg = _config(config)
    profile = _aws_profile_values(cfg.profile)
    filled: dict[str, Any] = {
        "endpoint_url": endpoint_of(cfg),
        "region": cfg.region
        or os.environ.get("AWS_DEFAULT_REGION")
        or os.environ.get("AWS_REGION")
        or profile.get("region"),
    }
    env_keys = os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY")
    if cfg.access_key_id is None and not cfg.anonymous and env_keys:
        filled["access_key_id"] = os.environ["AWS_ACCESS_KEY_ID"]
        filled["secret_access_key"] = os.environ["AWS_SECRET_ACCESS_KEY"]
        filled["session_token"] = os.environ.get("AWS_SESSION_TOKEN") or None
    return dataclasses.replace(cfg, **filled)


def storage_options(config: StorageConfig | dict[str, Any] | None = None) -> dict[str, Any]:
    """Keyword arguments of ``pyarrow.fs.S3FileSystem`` for ``config`` and the environment."""
    cfg = effective_config(config)
    opts: dict[str, Any] = {
        "connect_timeout": cfg.connect_timeout_s,
        "request_timeout": cfg.request_timeout_s,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=cfg.retries),
    }
    if cfg.region:
        opts["region"] = cfg.region
    endpoint = cfg.endpoint_url
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else "https://" + endpoint)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ConfigError(
                f"S3 endpoint {endpoint!r} is not an http(s) URL",
                hint="write e.g. http://127.0.0.1:9000 in AWS_ENDPOINT_URL or conf/storage.yaml",
            )
        opts["endpoint_override"] = parsed.netloc + parsed.path.rstrip("/")
        opts["scheme"] = parsed.scheme
    if cfg.anonymous:
        opts["anonymous"] = True
    elif cfg.access_key_id is not None:
        opts["access_key"] = cfg.access_key_id
        opts["secret_key"] = cfg.secret_access_key
        if cfg.session_token:
            opts["session_token"] = cfg.session_token
    return opts


@atexit.register
def _drop_filesystems() -> None:
    """Let go of cached S3 filesystems before pyarrow finalizes S3 (atexit runs last-in first):
    an S3 client alive after ``finalize_s3`` can abort the interpreter at exit (pyarrow 14)."""
    with _LOCK:
        _CACHE.clear()
    gc.collect()


def _set_io_threads(config: StorageConfig) -> None:
    import pyarrow as pa

    if not _IO_THREADS_SET and pa.io_thread_count() < config.io_threads:
        pa.set_io_thread_count(config.io_threads)
    _IO_THREADS_SET.append(config.io_threads)


def s3_filesystem(config: StorageConfig | dict[str, Any] | None = None) -> pafs.S3FileSystem:
    """A cached ``S3FileSystem`` for ``config`` (one per process and settings)."""
    config = _config(config)
    opts = storage_options(config)
    key = ("s3", os.getpid(), tuple(sorted((k, repr(v)) for k, v in opts.items() if k != "retry_strategy")))
    with _LOCK:
        fs = _CACHE.get(key)
        if fs is None:
            _set_io_threads(config)
            fs = pafs.S3FileSystem(**opts)
            _CACHE[key] = fs
            log.debug("opened S3 filesystem (endpoint %s)", opts.get("endpoint_override", "AWS"))
    return fs  # type: ignore[return-value]


def _fsspec_filesystem(url: str, scheme: str) -> pafs.FileSystem:
    key = ("fsspec", os.getpid(), scheme, urlparse(url).netloc)
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
    try:
        import fsspec
    except ImportError:
        raise DatasetError(
            f"{url}: the {scheme}:// scheme needs fsspec and the package for {scheme}",
            hint=f"pip install fsspec and the {scheme} implementation (gcsfs for gs://, adlfs for abfs://)",
        ) from None
    try:
        fs = fsspec.filesystem(scheme)
    except (ImportError, ValueError) as exc:
        raise DatasetError(
            f"{url}: fsspec cannot open {scheme}:// ({exc})",
            hint=f"install the fsspec implementation for {scheme}:// (gcsfs for gs://, adlfs for abfs://)",
        ) from None
    wrapped = pafs.PyFileSystem(pafs.FSSpecHandler(fs))
    with _LOCK:
        _CACHE[key] = wrapped
    return wrapped


def resolve(
    url: str | os.PathLike[str],
    *,
    filesystem: pafs.FileSystem | None = None,
    config: StorageConfig | dict[str, Any] | None = None,
) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path)`` for a path or URL.

    Args:
        url: Local path, ``file://``, ``s3://bucket/key`` or any fsspec URL.
        filesystem: A ``pyarrow.fs.FileSystem`` to use instead of resolving one; ``url`` is then a
            path on it (a scheme, if any, is stripped). Defaults to ``None``.
        config: Settings (or their dict, as shipped to Spark tasks). Defaults to ``None``
            (``conf/storage.yaml``).

    Raises:
        DatasetError: The scheme needs a package that is not installed, or the URL is malformed.
    """
    text = os.fspath(url)
    parsed = urlparse(text)
    scheme = parsed.scheme if len(parsed.scheme) > 1 else ""
    if filesystem is not None:
        if not isinstance(filesystem, pafs.FileSystem):
            raise DatasetError(
                f"filesystem must be a pyarrow.fs.FileSystem, got {type(filesystem).__name__}",
                hint="wrap an fsspec filesystem with pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))",
            )
        path = (
            (parsed.netloc + parsed.path)
            if scheme and scheme != "file"
            else (parsed.path if scheme else text)
        )
        return filesystem, path.rstrip("/") or "/"
    if not scheme or scheme == "file":
        if scheme and parsed.netloc not in ("", "localhost"):
            raise DatasetError(
                f"{text}: file:// URLs name no host; this one names {parsed.netloc!r}",
                hint="write file:///absolute/path (three slashes) or a plain path",
            )
        path = unquote(parsed.path) if scheme else text
        return pafs.LocalFileSystem(), str(Path(path).expanduser().resolve())
    if scheme in ("s3", "s3a"):
        if not parsed.netloc:
            raise DatasetError(f"{text}: no bucket in the URL", hint="write s3://bucket/prefix")
        return s3_filesystem(config), (parsed.netloc + parsed.path).rstrip("/")
    if scheme in ("hdfs", "viewfs"):
        try:
            return pafs.FileSystem.from_uri(text)
        except (ValueError, OSError) as exc:
            raise DatasetError(f"cannot open {text}: {exc}", hint="check the HDFS URL and libhdfs") from None
    return _fsspec_filesystem(text, scheme), (parsed.netloc + parsed.path).rstrip("/")


@contextlib.contextmanager
def task_defaults(config: dict[str, Any] | None) -> Iterator[None]:
    """Inside a Spark task: make ``config`` (shipped from the driver) the default of :func:`resolve`."""
    previous = _TASK_DEFAULT[:]
    _TASK_DEFAULT[:] = [config] if config is not None else []
    try:
        yield
    finally:
        _TASK_DEFAULT[:] = previous


def _config(config: StorageConfig | dict[str, Any] | None) -> StorageConfig:
    if config is None and _TASK_DEFAULT:
        config = _TASK_DEFAULT[0]
    if config is None:
        return load_storage_config()
    if isinstance(config, dict):
        return StorageConfig(**config)
    return config
