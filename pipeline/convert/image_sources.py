"""Where the images of a conversion come from: image-folder tree, flat folder or manifest.

Runs on the driver and reads only names, sizes and manifests; the images themselves are opened
by the Spark tasks. The rules (labels, class names, errors) are described in
:mod:`pipeline.convert.images`.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.convert.imaging import EXTENSIONS
from pipeline.convert.listing import SourceFile, list_folder, list_source_files, local_path
from pipeline.errors import InputError
from pipeline.storage import is_remote

__all__ = ["ImageSource", "find_images"]


@dataclass(frozen=True)
class ImageSource:
    """The images found in SRC: ``(path, relative path, label)`` items and the class names."""

    layout: str
    """``"tree"``, ``"flat"`` or ``"manifest"``."""
    items: list[tuple[str, str, int]]
    sizes: list[int]
    class_names: list[str]


def _read_manifest(manifest: Path) -> list[dict[str, Any]]:
    try:
        text = manifest.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"manifest {manifest} is not UTF-8 text (byte {exc.start}: {exc.reason})",
            hint="save the manifest as UTF-8",
        ) from None
    except OSError as exc:
        raise InputError(f"cannot read manifest {manifest}: {exc.strerror or exc}") from None
    if manifest.suffix.lower() == ".csv":
        try:
            rows = list(csv.DictReader(text.splitlines()))
        except csv.Error as exc:
            raise InputError(f"manifest {manifest} is not valid CSV: {exc}") from None
    else:
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{manifest} line {n}: not valid JSON: {exc.msg}") from None
            if not isinstance(row, dict):
                raise InputError(f"{manifest} line {n}: expected an object with a `path` key")
            rows.append(row)
    if not rows:
        raise InputError(f"manifest {manifest} lists no images")
    if any(not r.get("path") for r in rows):
        n = next(i for i, r in enumerate(rows, 1) if not r.get("path"))
        raise InputError(
            f"manifest {manifest}: entry {n} has no `path`", hint="every row needs a `path` column/key"
        )
    return rows


def _manifest_source(manifest: Path) -> ImageSource:
    rows = _read_manifest(manifest)
    labels = [r.get("label") for r in rows]
    given = [v for v in labels if v not in (None, "")]
    numeric = all(isinstance(v, int) or (isinstance(v, str) and v.lstrip("-").isdigit()) for v in given)
    class_names = [] if numeric else sorted({str(v) for v in given})
    index = {name: i for i, name in enumerate(class_names)}
    items, sizes = [], []
    for row, label in zip(rows, labels, strict=True):
        rel = str(row["path"])
        path = (
            Path(rel) if Path(rel).is_absolute() else manifest.resolve().parent / rel
        )  # executors' cwd differs
        value = -1 if label in (None, "") else int(label) if numeric else index[str(label)]
        items.append((str(path), rel, value))
        sizes.append(path.stat().st_size if path.is_file() else 0)  # a missing file is bad input later
    return ImageSource("manifest", items, sizes, class_names)


def find_images(src: str) -> ImageSource:
    """List the images of SRC (tree, flat folder or manifest) with their labels."""
    root = None if is_remote(src) else local_path(src)
    if root is not None and root.is_file() and root.suffix.lower() in (".csv", ".jsonl", ".json"):
        return _manifest_source(root)
    if root is not None and root.is_dir() and not any(c in str(root) for c in "*?["):
        # a local folder: plain lists, no object per file (millions of files list in seconds)
        paths, sizes = list_folder(root, EXTENSIONS, what="images", text=src)
        base = str(root.resolve()) + os.sep
    else:
        files: list[SourceFile] = list_source_files(src, extensions=EXTENSIONS, what="images")
        paths, sizes = [f.path for f in files], [f.size for f in files]
        if root is None:  # object store: names relative to the prefix (one object alone: flat)
            prefix = src.rstrip("/") + "/"
            base = prefix if any(p.startswith(prefix) for p in paths) else None
        else:
            base = str(root.resolve()) + os.sep if root.is_dir() else None
    if base:
        cut = len(base)
        rels = [p[cut:] for p in paths] if os.sep == "/" else [p[cut:].replace(os.sep, "/") for p in paths]
    else:
        rels = [os.path.basename(p) for p in paths]
    loose = [r for r in rels if "/" not in r]
    if len(loose) == len(rels):
        return ImageSource("flat", [(p, r, -1) for p, r in zip(paths, rels, strict=True)], sizes, [])
    if loose:
        raise InputError(
            f"{src} has class folders and also {len(loose)} image(s) directly inside it, e.g. {loose[0]}",
            hint="move them into a class folder, delete them, or list the images in a manifest (CSV/JSONL)",
        )
    classes = [r.partition("/")[0] for r in rels]
    class_names = sorted(set(classes))
    index = {name: i for i, name in enumerate(class_names)}
    items = [(p, r, index[c]) for p, r, c in zip(paths, rels, classes, strict=True)]
    return ImageSource("tree", items, sizes, class_names)
