"""The plan fingerprint of a DataFrame: what ``spark_dataset`` keys its cache on (no Spark job)."""

from __future__ import annotations

import hashlib
from typing import Any

__all__ = ["plan_fingerprint"]

_MAX_FIELDS = "spark.sql.debug.maxToStringFields"
# Leaves whose plan string names all they read (their files are keyed separately by path, size
# and modification time); any other leaf adds its per-process semanticHash.
_DESCRIBED_LEAVES = (
    "LogicalRelation",
    "HiveTableRelation",
    "DataSourceV2Relation",
    "Range",
    "OneRowRelation",
)


def plan_fingerprint(df: Any) -> str:
    """SHA-256 of the DataFrame's canonicalized analyzed plan and schema (no Spark job).

    Expression ids are normalised by Spark's canonicalization, so the same query gives the same
    fingerprint in every process. Leaves whose plan string does not show their data (DataFrames
    made from driver-side Python data or RDDs) add their ``semanticHash``, which changes from
    one process to the next: such DataFrames are never confused, only converted again. Under
    Spark Connect (no JVM handle) the fingerprint is ``df.semanticHash()``, also per process.
    """
    digest = hashlib.sha256(df.schema.json().encode("utf-8"))
    jdf = getattr(df, "_jdf", None)
    if jdf is None:  # Spark Connect
        digest.update(f"connect:{df.semanticHash()}".encode())
        return digest.hexdigest()
    plan = jdf.queryExecution().analyzed().canonicalized()
    conf = df.sparkSession.conf
    saved = conf.get(_MAX_FIELDS, None)
    conf.set(_MAX_FIELDS, str(2**31 - 1))  # no "... 5 more fields" in the plan string
    try:
        digest.update(plan.treeString().encode("utf-8"))
    finally:
        if saved is None:
            conf.unset(_MAX_FIELDS)
        else:
            conf.set(_MAX_FIELDS, saved)
    leaves = plan.collectLeaves()
    for i in range(leaves.size()):
        leaf = leaves.apply(i)
        if leaf.nodeName() not in _DESCRIBED_LEAVES:
            digest.update(f"{leaf.nodeName()}:{leaf.semanticHash()}".encode())
    return digest.hexdigest()
