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


LOCKS = {"constraints.txt": ("dev",), "constraints-petastorm.txt": ("dev", "petastorm")}
"""Each lock file and the extras installed with it (the default stack; the petastorm extra's)."""


def _pins(lock: str = "constraints.txt") -> dict[str, Version]:
    pins = {}
    for line in (REPO / lock).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = Version(version)
    return pins


def _requirements(extras: tuple[str, ...] = ("dev",)) -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        reqs += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return reqs


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_every_dependency_is_pinned_inside_its_declared_range(lock):
    pins = _pins(lock)
    for req in _requirements(LOCKS[lock]):
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in pins, f"{req.name} is declared in pyproject.toml but not pinned in {lock}"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{lock} pins {req.name}=={pins[name]}, outside pyproject's {req.specifier}"
        )


def test_default_stack_is_current_and_has_no_petastorm():
    pins = _pins("constraints.txt")
    assert "petastorm" not in pins
    assert pins["torch"] == Version("2.13.0")
    assert pins["numpy"] >= Version("2")
    assert pins["pyarrow"] >= Version("26")
    assert pins["pandas"] >= Version("3")
    assert pins["pyspark"] >= Version("4.3")
    assert pins["opencv-python-headless"] >= Version("5")


def test_petastorm_lock_is_petastorms_known_good_stack():
    pins = _pins("constraints-petastorm.txt")
    assert pins["petastorm"] == Version("0.12.1")
    assert pins["torch"] == Version("2.13.0")
    assert pins["pyarrow"] < Version("15")  # petastorm 0.12.1 imports pyarrow.filesystem
    assert pins["numpy"] < Version("2")  # ...and np.unicode_


def test_supported_pythons_agree():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    makefile = (REPO / "Makefile").read_text()
    spec = project["requires-python"]
    low, high = re.search(r">=3\.(\d+),<3\.(\d+)", spec).groups()
    assert f"(3,{low})<=v[:2]<(3,$(1))" in makefile, "Makefile's Python check disagrees with requires-python"
    assert f"$(STAMP): pyproject.toml constraints.txt\n\t$(call check_python,{high})" in makefile


def _make_plan(tmp_path, *targets: str) -> str:
    """``make -n`` with both venvs pointed at ``tmp_path`` (nothing is built or run)."""
    return subprocess.run(
        ["make", "-n", *targets, f"VENV={tmp_path}/v", f"PETASTORM_VENV={tmp_path}/p"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip


def test_make_test_builds_both_envs_then_runs_pytest_with_the_petastorm_env(tmp_path):
    plan = _make_plan(tmp_path, "test")
    assert f"{tmp_path}/v/bin/python -m pip install" in plan and "-c constraints.txt" in plan
    assert f"{tmp_path}/p/bin/python -m pip install" in plan and "-c constraints-petastorm.txt" in plan
    assert '".[petastorm,dev]"' in plan
    assert f"PIPELINE_PETASTORM_PYTHON={tmp_path}/p/bin/python {tmp_path}/v/bin/python -m pytest" in plan


def test_make_does_not_reinstall_up_to_date_venvs(tmp_path):
    for env in ("v", "p"):
        (tmp_path / env).mkdir()
        (tmp_path / env / ".installed").touch()  # newer than pyproject.toml and the lock files
    plan = _make_plan(tmp_path, "test")
    assert "pip install" not in plan
    assert "-m pytest" in plan
    demo = _make_plan(tmp_path, "demo")
    assert "pip install" not in demo and "petastorm" not in demo  # the demo needs only .venv


def test_ci_runs_exactly_make_test():
    script = (REPO / ".ci" / "run").read_text()
    commands = [line for line in script.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert commands[-1].strip() == "exec make test"


def test_cli_silences_only_the_named_third_party_warnings():
    import warnings

    from pipeline.cli import main

    message = "PySpark does not yet fully support pandas >= 3.0.0. Some features may not work correctly."
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(SystemExit):
            main(["--version"])  # installs the filters first
        warnings.warn_explicit(message, FutureWarning, "utils.py", 1, module="pyspark.sql.pandas.utils")
        warnings.warn_explicit(
            "something else", FutureWarning, "utils.py", 2, module="pyspark.sql.pandas.utils"
        )
        warnings.warn_explicit(message, FutureWarning, "ours.py", 3, module="pipeline.convert.text")
    assert [str(w.message) for w in caught] == ["something else", message]
