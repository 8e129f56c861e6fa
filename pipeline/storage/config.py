"""Object-storage settings (``conf/storage.yaml``): endpoint, credentials, retries, read-ahead.

Every value may be left out: the AWS SDK's standard places (``AWS_*`` environment variables,
``~/.aws/credentials`` and ``~/.aws/config``, instance roles) fill what the file does not say.
A value set here wins over those places; a filesystem object passed by the caller wins over
everything.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from pipeline.config import load_config
from pipeline.errors import ConfigError

__all__ = ["CONFIG_FILE", "StorageConfig", "load_storage_config"]

CONFIG_FILE = "storage.yaml"


@dataclass(frozen=True)
class StorageConfig:
    """How ``s3://`` (and fsspec) URLs are opened (section ``storage`` of ``storage.yaml``)."""

    endpoint_url: str | None = None
    """S3 endpoint, e.g. ``http://127.0.0.1:9000`` for an S3-compatible store. Defaults to ``None``
    (``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` / the profile's ``endpoint_url``, else AWS)."""
    region: str | None = None
    """Region. Defaults to ``None`` (``AWS_DEFAULT_REGION`` / ``AWS_REGION`` / the profile's)."""
    profile: str | None = None
    """Profile in ``~/.aws/config`` to take ``endpoint_url`` and ``region`` from. Defaults to
    ``None`` (``AWS_PROFILE``, else ``default``)."""
    access_key_id: str | None = None
    """Access key. Defaults to ``None`` (the SDK's credential chain). Prefer the environment."""
    secret_access_key: str | None = None
    """Secret key, with ``access_key_id``. Defaults to ``None``."""
    session_token: str | None = None
    """Session token of temporary credentials. Defaults to ``None``."""
    anonymous: bool = False
    """Unsigned requests (public buckets). Defaults to ``False``."""
    connect_timeout_s: float = 5.0
    """Seconds to open a connection before the attempt counts as failed. Defaults to ``5.0``."""
    request_timeout_s: float = 60.0
    """Seconds a request may take before the attempt counts as failed. Defaults to ``60.0``."""
    retries: int = 6
    """Attempts per request for throttling and transient errors (SDK and our own listing and
    commit steps). Defaults to ``6``."""
    retry_base_s: float = 0.2
    """First back-off in seconds; doubled after each failed attempt. Defaults to ``0.2``."""
    retry_max_s: float = 5.0
    """Longest single back-off in seconds. Defaults to ``5.0``."""
    list_threads: int = 8
    """Prefixes listed at once when a large prefix is listed. Defaults to ``8``."""
    io_threads: int = 32
    """pyarrow I/O threads (concurrent ranged reads of pre-buffered row groups and uploads);
    applied once per process when a remote filesystem is first opened. Defaults to ``32``."""
    pre_buffer: bool = True
    """Read a row group's column chunks with coalesced, concurrent ranged reads. Defaults to ``True``."""
    read_threads: int | None = None
    """Reader threads for a remote dataset when ``open_loader`` is not given ``workers``.
    Defaults to ``None`` (CPU cores + measured round-trip ms / 2, at most 64)."""

    def __post_init__(self) -> None:
        if self.retries < 1:
            raise ConfigError(f"retries must be >= 1, got {self.retries}")
        for name in ("connect_timeout_s", "request_timeout_s", "retry_base_s", "retry_max_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.read_threads is not None and self.read_threads < 1:
            raise ConfigError(f"read_threads must be >= 1 or null, got {self.read_threads}")
        if self.list_threads < 1 or self.io_threads < 1:
            raise ConfigError(
                f"list_threads and io_threads must be >= 1, got {self.list_threads}, {self.io_threads}"
            )
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ConfigError(
                "access_key_id and secret_access_key must be given together",
                hint="set both in conf/storage.yaml, or neither and use AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY",
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain values (picklable, for Spark tasks that open their own filesystem)."""
        return dataclasses.asdict(self)


def load_storage_config(path: str | os.PathLike[str] | None = CONFIG_FILE, **overrides: Any) -> StorageConfig:
    """``StorageConfig`` from ``conf/storage.yaml`` (or ``path``) with ``overrides`` on top.

    ``$PIPELINE_STORAGE_CONFIG`` names another file when set (Spark executors inherit it).
    """
    path = os.environ.get("PIPELINE_STORAGE_CONFIG", path) if path == CONFIG_FILE else path
    if path is None:
        return StorageConfig(**overrides)
    return load_config(StorageConfig, path, section="storage", overrides=overrides)
