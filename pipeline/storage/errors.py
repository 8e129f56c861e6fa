"""Object-store errors: which ones are worth retrying, and a clean message for the others.

pyarrow reports S3 failures as ``OSError`` whose text carries the AWS error name and HTTP
status. Throttling and server hiccups are *transient* (retry with back-off); a missing bucket,
a refused credential or an unreachable endpoint is not, and becomes one
:class:`~pipeline.errors.PipelineError` paragraph with a hint.
"""

from __future__ import annotations

import re

from pipeline.errors import DatasetError, PipelineError

__all__ = ["is_transient", "storage_error"]

_TRANSIENT = re.compile(
    r"SlowDown|Throttl|TooManyRequests|RequestTimeout|InternalError|ServiceUnavailable|"
    r"HTTP status (429|500|502|503|504)|response code (429|500|502|503|504)|"
    r"Connection reset|Broken pipe|timed out|Timeout was reached|curlCode: (28|52|55|56)",
    re.IGNORECASE,
)
_NO_BUCKET = re.compile(
    r"NoSuchBucket|NO_SUCH_BUCKET|bucket does not exist|Bucket '[^']*' not found", re.IGNORECASE
)
_DENIED = re.compile(
    r"AccessDenied|Access Denied|HTTP status 403|response code 403|Forbidden|InvalidAccessKeyId|"
    r"SignatureDoesNotMatch|ExpiredToken|InvalidToken|No response body|"
    r"ACCESS_DENIED|INVALID_ACCESS_KEY_ID|SIGNATURE_DOES_NOT_MATCH|EXPIRED_TOKEN",  # AWS SDK error names
    re.IGNORECASE,
)
_UNREACHABLE = re.compile(
    r"curlCode: (6|7)|Couldn't connect|Could not resolve|Connection refused|Failed to connect|"
    r"Unable to connect|Name or service not known|Network is unreachable",
    re.IGNORECASE,
)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a throttling or transient network/server error worth retrying."""
    if isinstance(exc, PipelineError):
        return False
    return isinstance(exc, OSError) and bool(_TRANSIENT.search(str(exc)))


def _bucket(url: str) -> str:
    rest = url.split("://", 1)[-1]
    return rest.split("/", 1)[0]


def storage_error(exc: BaseException, url: str, action: str, endpoint: str | None = None) -> PipelineError:
    """One-paragraph :class:`PipelineError` for a failed ``action`` (``"list"``, ``"read"``...) on ``url``.

    Args:
        exc: The error raised by pyarrow or fsspec.
        url: The URL the user gave (named in the message).
        action: What was attempted, e.g. ``"list"`` or ``"write"``.
        endpoint: The endpoint in use, for the unreachable-endpoint hint. Defaults to ``None``.
    """
    if isinstance(exc, PipelineError):
        return exc
    text = " ".join(str(exc).split())
    where = f" at {endpoint}" if endpoint else ""
    if _NO_BUCKET.search(text):
        return DatasetError(
            f"cannot {action} {url}: bucket {_bucket(url)!r} does not exist{where}",
            hint="check the bucket name in the URL, the endpoint (AWS_ENDPOINT_URL or conf/storage.yaml) "
            "and the region",
        )
    if _DENIED.search(text):
        return DatasetError(
            f"cannot {action} {url}: access denied{where} ({text[:200]})",
            hint="check the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or "
            "conf/storage.yaml) and that they may "
            + ("write to" if action == "write" else "read")
            + " this prefix",
        )
    if _UNREACHABLE.search(text):
        return DatasetError(
            f"cannot {action} {url}: the storage endpoint{where or ''} cannot be reached ({text[:200]})",
            hint="check AWS_ENDPOINT_URL / endpoint_url in conf/storage.yaml and the network",
        )
    return DatasetError(
        f"cannot {action} {url}: {text[:300]}",
        hint="check the URL, the credentials and the endpoint (AWS_ENDPOINT_URL or conf/storage.yaml)",
    )
