"""Retries with exponential back-off for our own multi-request steps (listing, commit, deletes).

Single requests are retried by the SDK itself (:func:`pipeline.storage.resolve.s3_filesystem`
configures pyarrow's ``AwsStandardS3RetryStrategy``); this wraps steps made of several requests,
and fsspec filesystems, which have no shared retry policy.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from pipeline.storage.config import StorageConfig
from pipeline.storage.errors import is_transient, storage_error

__all__ = ["backoff_delays", "with_retries"]

log = logging.getLogger(__name__)

T = TypeVar("T")


def backoff_delays(config: StorageConfig) -> list[float]:
    """Seconds to wait before attempts 2, 3, ...: ``retry_base_s * 2**k`` capped at ``retry_max_s``."""
    return [min(config.retry_max_s, config.retry_base_s * 2**k) for k in range(config.retries - 1)]


def with_retries(
    fn: Callable[[], T],
    *,
    url: str,
    action: str,
    config: StorageConfig,
    endpoint: str | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``fn``; retry transient errors with back-off; turn the rest into one clean error.

    Args:
        fn: The step, without arguments.
        url: URL named in messages.
        action: ``"list"``, ``"read"``, ``"write"``, ``"delete"``.
        config: Retry count and back-off.
        endpoint: Endpoint named in messages. Defaults to ``None``.
        sleep: The wait function (tests pass a recorder). Defaults to ``time.sleep``.

    Raises:
        PipelineError: A non-transient error (at once) or a transient one after the last attempt.
    """
    delays = backoff_delays(config)
    for attempt in range(config.retries):
        try:
            return fn()
        except FileNotFoundError:
            raise
        except Exception as exc:
            if not is_transient(exc) or attempt == len(delays):
                raise storage_error(exc, url, action, endpoint) from None
            log.info(
                "%s %s: transient error (%s); retry %d in %.1f s",
                action,
                url,
                exc,
                attempt + 1,
                delays[attempt],
            )
            sleep(delays[attempt])
    raise AssertionError("unreachable")
