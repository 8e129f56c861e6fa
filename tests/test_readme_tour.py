"""The README's "A tour" runs as written, top to bottom, on a small generated image folder.

The commands are read from README.md (the first ``bash`` block of the section, then its
``python`` block) and run in a temporary folder that holds ``photos/`` (3 classes, 84 small
JPEG/PNG images of mixed sizes). The only substitutions, so that the test is fast and uses the
interpreter running it:

* ``.venv/bin/`` -> the ``bin/`` folder of the running interpreter's environment;
* ``jobs/`` -> the repository's ``jobs/`` (the commands run in the temporary folder);
* ``--epochs N`` of ``pipeline train images`` -> ``--epochs 1``.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO

pytestmark = [pytest.mark.spark, pytest.mark.slow]


def tour_blocks() -> tuple[list[str], str]:
    """The tour's shell commands (comments dropped, continuations joined) and its Python code."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## A tour\n", 1)[1].split("\n## ", 1)[0]
    bash = re.search(r"```bash\n(.*?)```", section, re.S)
    python = re.search(r"```python\n(.*?)```", section, re.S)
    assert bash and python, "README's tour lost its bash or python block"
    joined = bash.group(1).replace("\\\n", " ")
    commands = [ln.strip() for ln in joined.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    return commands, python.group(1)


def substitute(command: str) -> list[str]:
    argv = shlex.split(command)
    bin_dir = Path(sys.executable).parent
    argv = [str(bin_dir / a[len(".venv/bin/") :]) if a.startswith(".venv/bin/") else a for a in argv]
    argv = [str(REPO / a) if a.startswith("jobs/") else a for a in argv]
    if argv[1:3] == ["train", "images"] and "--epochs" in argv:
        argv[argv.index("--epochs") + 1] = "1"
    return argv


def write_photos(root: Path) -> None:
    rng = np.random.default_rng(0)
    for c, cls in enumerate(("cat", "dog", "owl")):
        (root / cls).mkdir(parents=True)
        for i in range(28):
            h, w = int(rng.integers(40, 90)), int(rng.integers(40, 90))
            yy, xx = np.mgrid[0:h, 0:w]
            array = np.stack([xx * (c + 2), yy * 3, (xx + yy) * (3 - c)], -1).clip(0, 255).astype(np.uint8)
            Image.fromarray(array).save(root / cls / f"{i:02d}.{'jpg' if i % 2 else 'png'}")


def test_readme_tour_runs_as_written(tmp_path) -> None:
    commands, python = tour_blocks()
    assert [c.split()[0] for c in commands] == [
        ".venv/bin/pipeline",
        ".venv/bin/pipeline",
        ".venv/bin/pipeline",
        ".venv/bin/pipeline",
    ]
    write_photos(tmp_path / "photos")
    outputs, logs = [], []
    for command in commands:
        done = subprocess.run(
            substitute(command), cwd=tmp_path, capture_output=True, text=True, timeout=240, check=False
        )
        assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
        outputs.append(done.stdout)
        logs.append(done.stdout + done.stderr)
    converted = json.loads(outputs[0].strip().splitlines()[-1])
    assert (converted["rows"], converted["skipped"]) == (84, 0)
    assert {k: v["rows"] for k, v in converted["splits"].items()} == {"train": 66, "heldout": 18}
    assert (tmp_path / "runs" / "images" / "metrics.json").is_file()
    assert "each epoch: 66 samples on 2 rank(s)" in logs[-1]  # said up front
    assert "every sample is used" in logs[-1]
    done = subprocess.run(
        [sys.executable, "-c", python], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-4000:]
