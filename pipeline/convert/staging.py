"""Atomic output: a conversion writes into a staging folder next to DEST and moves it into place.

Layout while a job runs (``DEST = out/train``)::

    out/.train.staging-<host>-<pid>-<id>/
        data/      what Spark and the metadata step write; becomes DEST on commit

Only :meth:`StagedOutput.commit` makes DEST appear, with one rename. A failure or interrupt
removes the staging folder; a killed process leaves it behind, DEST untouched, and the next run
removes staging folders of processes that no longer exist on this host. With ``overwrite`` the
old DEST is renamed aside first and deleted after the new one is in place.

An object-store DEST (``s3://bucket/prefix``) has no rename and needs no staging folder: the
Spark tasks write their files straight to DEST under names unique to the task attempt, and
:meth:`StagedOutput.publish` commits them with the protocol of :mod:`pipeline.storage.commit` --
``_common_metadata`` last as the commit point, then the removal of what it replaces. A conversion
that does not commit deletes its attempt files on exit. See ``docs/storage.md``.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import TracebackType

from pipeline.convert.listing import local_path
from pipeline.errors import DatasetError, InputError
from pipeline.storage import is_remote, list_files, resolve
from pipeline.storage.commit import is_attempt_file
from pipeline.storage.publish import COMMON_METADATA, SKIPPED_REPORT, ObjectStoreDest

__all__ = ["SPLITS_FILE", "RemoteSplitLayout", "StagedOutput", "check_destination", "remote_split_layout"]

log = logging.getLogger(__name__)

_MARK = ".staging-"

SPLITS_FILE = "_splits.json"
"""Written at the top of a DEST by ``--split``; marks it as datasets ``--overwrite`` may replace."""


def check_destination(
    dest: str | os.PathLike[str], *, overwrite: bool, source: str | os.PathLike[str] | None = None
) -> Path | PurePosixPath:
    """Resolve DEST and fail early if writing there could lose data.

    Call this before any work starts (before Spark). Returns the absolute local path, or
    ``bucket/prefix`` for an object-store URL (which is checked by listing it).

    Args:
        dest: DEST path or ``file://`` URL.
        overwrite: Whether an existing DEST may be replaced.
        source: SRC of the conversion; DEST may not be SRC or a folder above it (replacing DEST
            would delete the inputs). Defaults to ``None`` (not checked).

    Raises:
        DatasetError: DEST exists without ``overwrite``; is a file; is SRC or contains it; exists,
            is not empty and is not a dataset (``--overwrite`` replaces datasets only); its parent
            is not a folder; or its name has characters that do not survive a URL (``#``, ``?``).
            Datasets written with ``--split`` (``_splits.json``, ``DEST/<split>/``) count as a
            dataset, locally and on an object store (:func:`remote_split_layout`).
    """
    if is_remote(dest):
        url = os.fspath(dest)
        _check_remote_url(url, source)
        try:
            return ObjectStoreDest(url, overwrite=overwrite).prefix_path
        except DatasetError:
            layout = remote_split_layout(url)  # datasets written with --split are datasets too
            if layout is None:
                raise
        if layout.exists and not overwrite:
            raise DatasetError(
                f"{url.rstrip('/')} already exists",
                hint="pass --overwrite to replace it, or choose another DEST",
            ) from None
        return PurePosixPath(layout.prefix)
    path = local_path(dest).resolve()
    if any(c in str(path) for c in "#?"):
        raise DatasetError(
            f"{path}: DEST may not contain '#' or '?' (Spark and petastorm read them as URL parts)",
            hint="choose another DEST",
        )
    src = _local_or_none(source)
    if src is not None and (src == path or path in src.parents):
        raise DatasetError(
            f"DEST {path} is SRC {src} or a folder above it; writing there would replace the inputs",
            hint="choose a DEST outside SRC",
        )
    if path.exists() and not overwrite:
        raise DatasetError(
            f"{path} already exists", hint="pass --overwrite to replace it, or choose another DEST"
        )
    if path.exists() and not path.is_dir():
        raise DatasetError(f"{path} exists and is not a folder", hint="choose another DEST")
    marks = (COMMON_METADATA, SPLITS_FILE)  # a dataset, or datasets written with --split
    if path.is_dir() and not any((path / m).exists() for m in marks) and any(path.iterdir()):
        raise DatasetError(
            f"{path} exists, is not empty and is not a dataset; --overwrite replaces datasets only",
            hint="choose another DEST, or remove that folder yourself if it is really not needed",
        )
    if path.parent.exists() and not path.parent.is_dir():
        raise DatasetError(f"{path.parent} is not a folder", hint="choose another DEST")
    return path


def _check_remote(dest: str, *, overwrite: bool, source: str | os.PathLike[str] | None) -> ObjectStoreDest:
    _check_remote_url(dest, source)
    return ObjectStoreDest(dest, overwrite=overwrite)


def _check_remote_url(dest: str, source: str | os.PathLike[str] | None) -> None:
    if any(c in dest.split("://", 1)[1] for c in "#?"):
        raise DatasetError(f"{dest}: DEST may not contain '#' or '?'", hint="choose another DEST")
    src = None if source is None else os.fspath(source).rstrip("/")
    if src is not None and (src == dest.rstrip("/") or src.startswith(dest.rstrip("/") + "/")):
        raise DatasetError(
            f"DEST {dest} is SRC {src} or a prefix above it; writing there would replace the inputs",
            hint="choose a DEST outside SRC",
        )


@dataclass(frozen=True)
class RemoteSplitLayout:
    """An object-store DEST that holds only what ``--split`` writes there (see :func:`remote_split_layout`)."""

    prefix: str
    """``bucket/prefix`` of DEST."""
    splits: frozenset[str]
    """Names of the committed split datasets (``DEST/<name>/_common_metadata`` exists)."""
    record: bool
    """Whether ``DEST/_splits.json`` exists."""

    @property
    def exists(self) -> bool:
        """Whether DEST holds a split dataset or the record (not only leftovers of a killed run)."""
        return self.record or bool(self.splits)


def remote_split_layout(url: str) -> RemoteSplitLayout | None:
    """What an object-store DEST written by ``--split`` holds, or ``None`` when it holds anything else.

    Such a DEST holds ``_splits.json`` and, under ``<split>/``, a dataset or the leftovers of an
    interrupted conversion (attempt files, ``_skipped.jsonl``), and nothing else. An empty DEST
    gives ``None``.
    """
    fs, prefix = resolve(url.rstrip("/"))
    rels = [e.path[len(prefix) :].lstrip("/") for e in list_files(fs, prefix, url=url)]
    if not rels:
        return None
    splits: set[str] = set()
    for rel in rels:
        if rel == SPLITS_FILE:
            continue
        name, slash, rest = rel.partition("/")
        if not slash or not (rest in (COMMON_METADATA, SKIPPED_REPORT) or is_attempt_file(rest)):
            return None
        if rest == COMMON_METADATA:
            splits.add(name)
    return RemoteSplitLayout(prefix, frozenset(splits), SPLITS_FILE in rels)


def _local_or_none(source: str | os.PathLike[str] | None) -> Path | None:
    try:
        return None if source is None else local_path(source).resolve()
    except InputError:  # not a local path: it cannot be inside a local DEST
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale(dest: Path) -> None:
    """Delete staging folders of DEST left by killed runs of this host (their pid is gone)."""
    if not dest.parent.is_dir():
        return
    host = socket.gethostname()
    prefix = f".{dest.name}{_MARK}"
    for entry in dest.parent.iterdir():
        if not entry.name.startswith(prefix):
            continue
        owner = entry.name[len(prefix) :].rsplit("-", 2)
        if len(owner) != 3 or owner[0] != host or not owner[1].isdigit():
            continue
        if not _pid_alive(int(owner[1])):
            log.info("removing staging folder of a killed run: %s", entry)
            shutil.rmtree(entry, ignore_errors=True)


class StagedOutput:
    """Context manager owning the staging folder of one conversion.

    Args:
        dest: DEST path or ``file://`` URL.
        overwrite: Replace an existing DEST on commit. Defaults to ``False``.
        source: SRC, which DEST may not contain (see :func:`check_destination`). Defaults to ``None``.

    Example::

        with StagedOutput(dest) as stage:
            df.write.parquet(stage.data_url)
            stage.commit()          # DEST appears here, and only here
    """

    def __init__(
        self,
        dest: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        source: str | os.PathLike[str] | None = None,
    ) -> None:
        self.remote: ObjectStoreDest | None = None
        if is_remote(dest):
            self.remote = _check_remote(os.fspath(dest), overwrite=overwrite, source=source)
            self.dest: Path | PurePosixPath = self.remote.prefix_path
            # a local folder only for work that writes on the driver (created by that work, if
            # any); the name encodes DEST so stale ones are found
            self._local_dest = Path(tempfile.gettempdir()) / "pipeline-staging" / self.remote.safe_name
        else:
            self.dest = check_destination(dest, overwrite=overwrite, source=source)
            self._local_dest = Path(self.dest)
        self.overwrite = overwrite
        tag = uuid.uuid4().hex[:8]
        name = f".{self._local_dest.name}{_MARK}{socket.gethostname()}-{os.getpid()}-{tag}"
        self.root = self._local_dest.parent / name
        self.committed = False

    @property
    def url(self) -> str:
        """URL of DEST (``file:///...`` or the object-store URL)."""
        return self.remote.url if self.remote is not None else "file://" + str(self.dest)

    @property
    def data_dir(self) -> Path:
        """Folder that becomes DEST (for an object-store DEST: a local folder, not created here)."""
        return self.root / "data"

    @property
    def data_url(self) -> str:
        return "file://" + str(self.data_dir)

    def __enter__(self) -> StagedOutput:
        _remove_stale(self._local_dest)
        if self.remote is not None:
            self.remote.remove_leftovers()
            return self
        self._local_dest.parent.mkdir(parents=True, exist_ok=True)
        self.root.mkdir(parents=True)
        return self

    def publish(self, common_metadata: bytes, keep: Collection[str]) -> None:
        """Object-store DEST: write ``_common_metadata`` (the commit point), delete the rest.

        Args:
            common_metadata: The serialized ``_common_metadata``.
            keep: Names under DEST that belong to the new dataset (its data files, as the tasks
                returned them, and ``_skipped.jsonl``).
        """
        if self.remote is None:
            raise DatasetError(f"{self.dest} is a local DEST", hint="this is a bug; please report it")
        self.remote.commit(common_metadata, keep)
        self.committed = True

    def commit(self) -> None:
        """Move the finished dataset into DEST (replacing an old one when ``overwrite``).

        Raises:
            DatasetError: DEST appeared meanwhile (without ``overwrite``), or DEST is on an
                object store (whose conversions commit with :meth:`publish`).
        """
        if self.remote is not None:
            raise DatasetError(
                f"{self.url}: this conversion cannot write to an object store",
                hint="write to a local DEST, then copy it to the store",
            )
        if not self.data_dir.is_dir():
            raise DatasetError(f"nothing was written to {self.data_dir}")
        assert isinstance(self.dest, Path)
        old: Path | None = None
        if self.dest.exists():
            if not self.overwrite:
                raise DatasetError(
                    f"{self.dest} appeared while the conversion ran", hint="pass --overwrite or another DEST"
                )
            old = self.root / "old"
            os.replace(self.dest, old)
        os.replace(self.data_dir, self.dest)
        self.committed = True
        log.debug("moved %s into place at %s", self.data_dir, self.dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        if self.remote is not None and not self.committed:
            try:
                self.remote.discard()  # what the tasks wrote: no dataset lists it
            except Exception as error:  # never hide the conversion's own error
                log.warning("could not remove the files of this conversion from %s: %s", self.url, error)
        if not self.committed and exc_type is None:
            log.warning("conversion ended without commit; %s was not written", self.dest)
