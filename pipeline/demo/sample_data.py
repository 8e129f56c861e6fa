"""Sample data that needs no download: scikit-learn's bundled digits as an image folder, and a tiny corpus.

``write_digits_folder("data/demo/digits")`` writes ``train/<digit>/<n>.png`` and
``heldout/<digit>/<n>.png`` (8x8 grayscale PNGs, pixel values scaled from 0-16 to 0-255) with a
deterministic split, plus ``manifest.json``. Called again with the same arguments it finds the
manifest and writes nothing.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import ConfigError, PipelineError

__all__ = ["load_digits_arrays", "write_digits_folder", "write_sample_corpus"]

log = logging.getLogger(__name__)

_MANIFEST = "manifest.json"


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 digits as ``uint8`` images ``(N, 8, 8)`` in 0-255 and ``int64`` labels ``(N,)``."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise PipelineError(
            "the digits sample data needs scikit-learn",
            hint='install the dev extras: `.venv/bin/pip install -e ".[dev]"` (or `make demo`)',
        ) from None
    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return images, digits.target.astype(np.int64)


def write_digits_folder(
    root: str | os.PathLike[str], *, holdout_fraction: float = 0.2, seed: int = 0, limit: int | None = None
) -> dict[str, Any]:
    """Write the digits as ``root/train`` and ``root/heldout`` image-folder trees.

    Args:
        root: Output folder.
        holdout_fraction: Share of the images in ``heldout``. Defaults to ``0.2``.
        seed: Seed of the shuffle that splits them. Defaults to ``0``.
        limit: Use only the first ``limit`` images of the shuffled order (small tests).
            Defaults to ``None`` (all 1,797).

    Returns:
        The manifest: ``train`` and ``heldout`` folders and counts, the arguments, and
        ``reused`` (whether an identical folder was already there).
    """
    if not 0.0 < holdout_fraction < 1.0:
        raise ConfigError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    root = Path(root)
    params = {"holdout_fraction": holdout_fraction, "seed": seed, "limit": limit}
    manifest_path = root / _MANIFEST
    if manifest_path.exists():
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except ValueError:
            manifest = {}
        if manifest.get("params") == params:
            log.info("digits already written under %s", root)
            return {**manifest, "reused": True}
    from PIL import Image

    images, labels = load_digits_arrays()
    order = np.random.default_rng(seed).permutation(len(labels))
    if limit is not None:
        order = order[:limit]
    n_heldout = max(1, round(len(order) * holdout_fraction))
    splits = {"heldout": order[:n_heldout], "train": order[n_heldout:]}
    for split in splits:
        shutil.rmtree(root / split, ignore_errors=True)
    manifest_path.unlink(missing_ok=True)
    for split, indices in splits.items():
        for index in indices:
            folder = root / split / str(int(labels[index]))
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[index]).save(folder / f"{int(index):04d}.png")
    manifest = {
        "params": params,
        "train": str(root / "train"),
        "heldout": str(root / "heldout"),
        "counts": {split: len(indices) for split, indices in splits.items()},
    }
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    log.info("wrote %d train and %d held-out digits under %s", len(splits["train"]), n_heldout, root)
    return {**manifest, "reused": False}


_SUBJECTS = ("the cat", "a dog", "the old sailor", "my neighbour", "the small robot", "a tired student")
_VERBS = ("reads", "paints", "carries", "finds", "repairs", "counts")
_OBJECTS = ("a red book", "the blue boat", "seven apples", "an old map", "the broken clock", "a paper kite")
_PLACES = ("in the garden", "at the harbour", "on the hill", "near the station", "by the river", "at home")


def write_sample_corpus(root: str | os.PathLike[str], *, documents: int = 40, seed: int = 0) -> Path:
    """Write ``documents`` small ``.txt`` files of simple, regular English sentences under ``root``.

    A language model learns their structure within a few epochs, which makes a quick check that
    training works. Deterministic for a given ``seed``; existing files are overwritten.

    Args:
        root: Output folder.
        documents: Number of files. Defaults to ``40``.
        seed: Seed of the sentence choices. Defaults to ``0``.

    Returns:
        ``root``.
    """
    if documents < 1:
        raise ConfigError(f"documents must be >= 1, got {documents}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for doc in range(documents):
        sentences = []
        for _ in range(int(rng.integers(4, 9))):
            words = [str(rng.choice(part)) for part in (_SUBJECTS, _VERBS, _OBJECTS, _PLACES)]
            sentences.append(" ".join(words).capitalize() + ".")
        (root / f"doc-{doc:04d}.txt").write_text(" ".join(sentences) + "\n", encoding="utf-8")
    return root
