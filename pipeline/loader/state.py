"""A loader's position as a small JSON-able dict, and the checks that a state fits a loader.

``loader.state_dict()`` records where the consumer is -- the epoch and the batches of it already
delivered -- with what decides the order of the batches (seed, shuffle, buffer, batch size,
drop_last, fields, rank and world size) and a fingerprint of the dataset. Nothing else is
needed: the plan is a pure function of those, and the shuffle buffer at any batch is replayed
from them (:func:`pipeline.reader.shuffle.replay_epoch`). ``load_state_dict`` refuses a state
whose dataset or order-deciding options differ, naming the setting.

World-size policy: a state saved **at an epoch boundary** (no batch of its epoch delivered yet)
may be loaded with any ``rank``/``world_size``: the next epoch is sharded over the new ranks as
usual. A state saved **mid-epoch** must be loaded with the same ``world_size`` and ``rank``: the
rows not yet delivered sit in each old rank's shard and shuffle buffer, and re-dealing them
would change every later batch. The error says so and how to get an epoch-boundary state.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from pipeline.errors import ConfigError

__all__ = ["STATE_VERSION", "check_state", "dataset_fingerprint"]

STATE_VERSION = 1

ORDER_OPTIONS = ("shuffle", "shuffle_buffer", "batch_size", "drop_last", "fields")
"""Options that change which rows each batch holds; a state must match them."""


def dataset_fingerprint(source: Any) -> str:
    """A short hash of the dataset's layout: files (relative to the dataset), row groups, rows, bytes."""
    paths = [rg.path for rg in source.row_groups]
    root = os.path.commonpath(paths) if len(set(paths)) > 1 else os.path.dirname(paths[0]) if paths else ""
    footers = getattr(source, "_footers", {})
    layout = []
    for rg, usable in zip(source.row_groups, source.sizes, strict=True):
        meta = footers.get(rg.path)
        nbytes = meta.row_group(rg.index).total_byte_size if meta is not None else None
        layout.append(
            [os.path.relpath(rg.path, root) if root else rg.path, rg.index, rg.rows, usable, nbytes]
        )
    blob = json.dumps({"row_groups": layout}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def check_state(state: Any, mine: dict[str, Any], *, batches_per_epoch: int) -> tuple[int, int]:
    """``(epoch, batches)`` to start at from ``state``, after checking it fits ``mine``.

    Args:
        state: What another loader's ``state_dict()`` returned (possibly through JSON).
        mine: This loader's own ``state_dict()``.
        batches_per_epoch: Batches per epoch of this loader's rank.

    Raises:
        ConfigError: ``state`` is not a loader state, or comes from another dataset, other
            options, or (mid-epoch) another world size or rank.
    """
    if not isinstance(state, dict) or state.get("kind") != "pipeline.loader":
        raise ConfigError(
            f"not a loader state: {_short(state)}", hint="pass what loader.state_dict() returned"
        )
    if state.get("version") != STATE_VERSION:
        raise ConfigError(
            f"loader state version {state.get('version')!r} is not supported (this version reads {STATE_VERSION})"
        )
    theirs, ours = state.get("dataset", {}), mine["dataset"]
    if theirs.get("fingerprint") != ours["fingerprint"]:
        raise ConfigError(
            f"the loader state is from another dataset: {theirs.get('url')} (fingerprint "
            f"{theirs.get('fingerprint')}), this loader reads {ours['url']} (fingerprint {ours['fingerprint']})",
            hint="resume with the dataset the state was saved from; a rewritten dataset starts a new run",
        )
    for key in ("seed", *ORDER_OPTIONS):
        a, b = _norm(state.get("options", {}).get(key)), _norm(mine["options"].get(key))
        if a != b:
            raise ConfigError(
                f"the loader state was saved with {key}={a!r}, this loader has {key}={b!r}",
                hint=f"open the loader with {key}={a!r} to resume, or start without the state",
            )
    epoch, batches = int(state["epoch"]), int(state["batches"])
    if epoch < 0 or batches < 0:
        raise ConfigError(f"loader state has a negative position: epoch {epoch}, batch {batches}")
    if batches and (state["world_size"], state["rank"]) != (mine["world_size"], mine["rank"]):
        raise ConfigError(
            f"the loader state was saved in the middle of epoch {epoch} (after batch {batches}) by rank "
            f"{state['rank']} of world_size={state['world_size']}; this loader is rank {mine['rank']} "
            f"of world_size={mine['world_size']}",
            hint="a mid-epoch state resumes only on the same number of ranks, each with its own state; "
            "with another world size, resume from a state saved at an epoch boundary",
        )
    if batches >= batches_per_epoch:  # the epoch was complete: start the next one
        return epoch + 1, 0
    return epoch, batches


def _norm(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
