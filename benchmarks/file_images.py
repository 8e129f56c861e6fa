"""The torch side of the benchmarks: a map-style dataset over an image-folder tree of files.

``class_<N>/<file>`` folders (:mod:`convert_data`); each item is decoded with OpenCV (RGB) and,
with ``transform``, passed through it and made a tensor. A module of its own so that
``DataLoader`` worker processes can import it whatever the start method.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


class FileImages:
    def __init__(self, paths: list[str], transform: Callable[[Any], Any] | None = None) -> None:
        self.paths = paths
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        import cv2

        image = cv2.cvtColor(cv2.imread(self.paths[i], cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB)
        label = int(Path(self.paths[i]).parent.name.split("_")[-1])
        if self.transform is not None:
            import torch

            image = torch.from_numpy(self.transform(image))
        return {"image": image, "label": label}
