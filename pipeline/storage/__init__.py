"""Object storage: URL -> filesystem resolution, settings, retries, listing, safe commits.

Every URL argument of the package goes through :func:`resolve`; ``conf/storage.yaml``
(:class:`StorageConfig`) overrides the AWS SDK's standard places. See ``docs/storage.md``.
"""

from __future__ import annotations

from pipeline.storage.commit import committed_files
from pipeline.storage.config import StorageConfig, load_storage_config
from pipeline.storage.errors import is_transient, storage_error
from pipeline.storage.objects import (
    delete_paths,
    file_info,
    list_files,
    local_copy,
    open_input,
    read_bytes,
    upload_file,
    write_bytes,
)
from pipeline.storage.readahead import RemoteReads, is_remote_filesystem, parallel_map, read_threads
from pipeline.storage.resolve import (
    effective_config,
    endpoint_of,
    is_remote,
    resolve,
    storage_options,
    task_defaults,
)
from pipeline.storage.retry import backoff_delays, with_retries

__all__ = [
    "RemoteReads",
    "StorageConfig",
    "backoff_delays",
    "committed_files",
    "delete_paths",
    "effective_config",
    "endpoint_of",
    "file_info",
    "is_remote",
    "is_remote_filesystem",
    "is_transient",
    "list_files",
    "load_storage_config",
    "local_copy",
    "open_input",
    "parallel_map",
    "read_bytes",
    "read_threads",
    "resolve",
    "storage_error",
    "storage_options",
    "task_defaults",
    "upload_file",
    "with_retries",
    "write_bytes",
]
