"""The install story: pins agree with the declared ranges, and make skips an up-to-date venv."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from tests.conftest import REPO

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")


def _pins() -> dict[str, Version]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = Version(version)
    return pins


def _requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    reqs += [Requirement(r) for r in project["optional-dependencies"]["dev"]]
    return reqs


def test_every_dependency_is_pinned_inside_its_declared_range():
    pins = _pins()
    for req in _requirements():
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in pins, f"{req.name} is declared in pyproject.toml but not pinned in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {req.name}=={pins[name]}, outside pyproject's {req.specifier}"
        )


def test_stack_facts_are_pinned():
    pins = _pins()
    assert pins["torch"] == Version("2.13.0")
    assert pins["petastorm"] == Version("0.12.1")
    assert pins["pyarrow"] < Version("15")
    assert pins["numpy"] < Version("2")


def test_make_does_not_reinstall_an_up_to_date_venv():
    stamp = REPO / ".venv" / ".installed"
    if not stamp.exists() or any(
        (REPO / f).stat().st_mtime > stamp.stat().st_mtime for f in ("pyproject.toml", "constraints.txt")
    ):
        pytest.skip("this checkout's .venv was not installed by make (or is stale)")
    plan = subprocess.run(["make", "-n", "test"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "pip install" not in plan
    assert "pytest" in plan


def test_ci_runs_exactly_make_test():
    script = (REPO / ".ci" / "run").read_text()
    commands = [line for line in script.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert commands[-1].strip() == "exec make test"
