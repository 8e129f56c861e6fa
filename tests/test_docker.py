"""What can be checked of docker/ without a Docker engine.

Verified here: the image installs from constraints.txt (the lock file `make` uses) and pins
nothing itself; every file it copies and every command it runs exists in the repository or in the
installed environment; the entry point script is valid shell and its roles run the real jobs; the
compose file parses, builds from docker/Dockerfile, and wires master, two workers and a runner.
Not verified: building the image and running containers (no engine on this machine).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

DOCKER = REPO / "docker"
DOCKERFILE = DOCKER / "Dockerfile"


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs of a Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_installs_exactly_the_lock_file():
    steps = instructions(DOCKERFILE)
    base = [args for word, args in steps if word == "FROM"]
    lock_python = re.search(r"Python (3\.\d+)", (REPO / "constraints.txt").read_text()).group(1)
    assert base == [f"python:{lock_python}-slim-bookworm"], (
        "base image must match the Python the lock file was made for"
    )
    pip_runs = [args for word, args in steps if word == "RUN" and "pip install" in args]
    assert len(pip_runs) == 1
    assert "-c constraints.txt" in pip_runs[0] and '-e ".[dev]"' in pip_runs[0]
    for word, args in steps:  # nothing pinned or installed by name outside the lock file
        if word == "RUN":
            assert not re.search(r"pip install[^&]*\b[a-zA-Z][\w.-]*==", args), args


def test_every_file_the_image_copies_exists():
    for word, args in instructions(DOCKERFILE):
        if word == "COPY":
            *sources, _dest = shlex.split(args)
            for src in sources:
                assert (REPO / src).exists(), f"COPY {src}: not in the repository"
    entry = next(args for word, args in instructions(DOCKERFILE) if word == "ENTRYPOINT")
    assert "/app/docker/entrypoint.sh" in entry and (DOCKER / "entrypoint.sh").stat().st_mode & 0o111


def test_the_image_installs_the_project_the_same_way_as_make():
    makefile = (REPO / "Makefile").read_text()
    assert '-c constraints.txt -e ".[dev]"' in makefile


def test_entrypoint_is_valid_shell_and_its_commands_exist():
    script = DOCKER / "entrypoint.sh"
    subprocess.run(["sh", "-n", str(script)], check=True)
    text = script.read_text()
    for path in re.findall(r"python (jobs/\w+\.py)", text):
        assert (REPO / path).is_file(), path
    assert set(re.findall(r"exec python (jobs/\w+\.py)", text)) == {
        "jobs/demo.py",
        "jobs/train_images.py",
        "jobs/train_text.py",
    }
    bin_dir = Path(sys.executable).parent
    for command in ("spark-class", "pipeline"):
        assert (bin_dir / command).exists(), f"{command} is not installed next to {sys.executable}"
    for cls in ("org.apache.spark.deploy.master.Master", "org.apache.spark.deploy.worker.Worker"):
        assert cls in text


def test_entrypoint_points_the_driver_at_its_container_host(tmp_path):
    """The runner role rewrites bind_address for cluster executors; the real job code reads it."""
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "APP_DIR": str(REPO),
        "SPARK_DRIVER_HOST": "runner",
        "PIPELINE_RUNTIME_CONF": str(tmp_path / "conf"),
    }
    code = "from pipeline.spark import load_spark_config as l; from pipeline.config import conf_dir as c; print(l().bind_address, c())"
    out = subprocess.run(
        [str(DOCKER / "entrypoint.sh"), "python", "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == ["runner", str(tmp_path / "conf")]
    assert {p.name for p in (tmp_path / "conf").glob("*.yaml")} == {
        p.name for p in (REPO / "conf").glob("*.yaml")
    }


@pytest.mark.parametrize("role", ["demo", "train-text"])
def test_entrypoint_roles_run_the_real_commands(role):
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "APP_DIR": str(REPO)}
    out = subprocess.run(
        [str(DOCKER / "entrypoint.sh"), role, "--help"], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout


def test_compose_wires_master_two_workers_and_a_runner():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert {"master", "worker-1", "worker-2", "runner"} <= set(services)
    for name, service in services.items():
        build = service["build"]
        assert (DOCKER / build["context"]).resolve() == REPO, name
        assert (REPO / build["dockerfile"]).resolve() == DOCKERFILE, name
        assert "data:/data" in service["volumes"], name
    assert services["master"]["command"] == ["master"]
    for worker in ("worker-1", "worker-2"):
        assert services[worker]["command"] == ["worker", "spark://master:7077"]
        assert "master" in services[worker]["depends_on"]
    assert services["runner"]["environment"]["SPARK_DRIVER_HOST"] == "runner"
    assert services["runner"]["command"][0] == "demo"
    assert services["runner-gpu"]["build"]["args"] == {"TORCH_INDEX": ""}
    assert services["runner-gpu"]["image"].endswith(":cuda") and services["runner"]["image"].endswith(":cpu")
    assert "data" in compose["volumes"]
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().split()
    assert {".venv", "data", "runs", ".git"} <= set(ignore)
