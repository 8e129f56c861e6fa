"""The application layer: one parser, one runner, the README's command table, light imports."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from pipeline.cli import COMMANDS, build_parser, leaf_parsers, main
from pipeline.cli.app import CommandFailed, Interrupted, run
from pipeline.errors import InputError
from tests.conftest import REPO
from tests.datasets import write_format_dataset, write_parquet_dataset

LEAVES = {leaf.prog.removeprefix("pipeline "): leaf for leaf in leaf_parsers(build_parser())}


def _py(code: str, *args: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        **kwargs,
    )


def test_every_job_is_a_subcommand_with_help_showing_conf_defaults(capsys):
    assert set(LEAVES) == {
        "convert images", "convert text", "convert hdf5", "convert table", "train images", "train text",
        "demo", "inspect", "bench", "cache list", "cache clear",
    }  # fmt: skip
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    top = capsys.readouterr().out
    assert all(re.search(rf"^\s+{name}\s", top, re.M) for name in COMMANDS)
    for name in LEAVES:
        with pytest.raises(SystemExit) as info:
            main([*name.split(), "--help"])
        assert info.value.code == 0, name
        assert "--json" in capsys.readouterr().out, name
    main_help = LEAVES["convert images"].format_help()
    assert re.search(r"--row-group-mb.*\(default: 16,\s+conf/convert\.yaml\)", main_help, re.S)
    assert re.search(r"--quality.*\(default: 95,\s+conf/convert_images\.yaml\)", main_help, re.S)
    assert re.search(
        r"--epochs.*\(default: 15,\s+conf/train_images\.yaml\)", LEAVES["train images"].format_help(), re.S
    )
    assert re.search(r"--epochs.*\(default: 12,\s+conf/demo\.yaml\)", LEAVES["demo"].format_help(), re.S)


def _readme_rows() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Command line\n", 1)[1].split("\n## ", 1)[0]
    return section, [m.group(1) for m in re.finditer(r"^\| `(pipeline [^`]+)` \|", section, re.M)]


def test_readme_command_reference_matches_the_parser():
    section, rows = _readme_rows()
    listed: set[str] = set()
    for row in rows:
        words = row.replace("\\|", "|").split()
        head = [w for w in words[1:3] if re.fullmatch(r"[a-z0-9|]+", w)]
        names = [" ".join(p) for p in _expand(head)]
        matched = [n for n in names if n in LEAVES] or [
            n.rsplit(" ", 1)[0] for n in names if n.rsplit(" ", 1)[0] in LEAVES
        ]
        assert matched, f"README row names no command: {row}"
        listed.update(matched)
        for flag in re.findall(r"(--[a-z0-9-]+)", row):
            for name in matched:
                assert flag in LEAVES[name]._option_string_actions, f"README: {name} has no {flag}"
    assert listed == set(LEAVES), f"commands missing from README: {set(LEAVES) - listed}"
    for name, leaf in LEAVES.items():  # every flag of every command is documented in the section
        for action in leaf._actions:
            flags = [s for s in action.option_strings if s.startswith("--")]
            if flags and action.dest not in ("help", "verbose", "quiet"):
                assert any(f in section for f in flags), (
                    f"README's Command line does not mention {name} {flags[0]}"
                )


def _expand(words: list[str]) -> list[list[str]]:
    out: list[list[str]] = [[]]
    for word in words:
        out = [[*prefix, alt] for prefix in out for alt in word.split("|")]
    return out


def test_a_misspelt_flag_shows_the_subcommands_usage():
    proc = _py(
        "import sys; from pipeline.cli import main; sys.exit(main(sys.argv[1:]))",
        "convert",
        "images",
        "a",
        "b",
        "--sizee",
        "8",
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("usage: pipeline convert images ")
    assert "unrecognized arguments: --sizee 8" in proc.stderr


def test_version_and_inspect_do_not_import_torch(tmp_path):
    url = write_parquet_dataset(tmp_path / "ds", rows=20, files=1)
    code = (
        "import sys, io, contextlib\n"
        "from pipeline.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        "        main(['--version'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "    assert 'torch' not in sys.modules, 'pipeline --version imported torch'\n"
        "    code = main(['inspect', sys.argv[1], '--json'])\n"
        "print(code, 'torch' in sys.modules, 'pyspark' in sys.modules)\n"
    )
    proc = _py(code, url)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["0", "False", "False"]


def test_inspecting_and_loading_a_petastorm_dataset_do_not_import_pyspark(tmp_path):
    """The schema's Spark types are resolved only when asked for: no 0.2 s pyspark import in a
    training process, its spawned reader workers or ``pipeline inspect``."""
    url = write_format_dataset(tmp_path / "ds", rows=20, files=1)
    code = (
        "import sys, io, contextlib\n"
        "from pipeline.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    code = main(['inspect', sys.argv[1]])\n"
        "assert 'petastorm' in out.getvalue() and 'scalar' in out.getvalue(), out.getvalue()\n"
        "after_inspect = 'pyspark' in sys.modules\n"
        "import pipeline\n"
        "rows = 0\n"
        "for kind in ('thread', 'process'):\n"
        "    with pipeline.open_loader(sys.argv[1], batch_size=8, workers=1, workers_type=kind,\n"
        "                              start_method='spawn', num_epochs=1) as loader:\n"
        "        rows += sum(len(b['id']) for b in loader)\n"
        "print(code, after_inspect, rows, 'pyspark' in sys.modules)\n"
    )
    proc = _py(code, url)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["0", "False", "40", "False"]


def _handler(outcome):
    def handler(args):
        if isinstance(outcome, BaseException):
            raise outcome
        if outcome == "signal-then-spark-error":  # Spark reports the job a Ctrl-C cancelled as a failure
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)
            except Interrupted:
                raise InputError("the conversion failed in Spark: job cancelled") from None
        return {"rows": 3}

    return handler


@pytest.mark.parametrize(
    ("outcome", "code", "stderr"),
    [
        ("ok", 0, ""),
        (
            InputError("SRC x does not exist", hint="check the path"),
            2,
            "error: SRC x does not exist -- HINT: check the path",
        ),
        (CommandFailed("rank 1 failed"), 1, "error: rank 1 failed"),
        (KeyboardInterrupt(), 130, "interrupted: stopped and cleaned up"),
        (Interrupted(signal.SIGTERM), 143, "stopped by SIGTERM: stopped and cleaned up"),
        ("signal-then-spark-error", 130, "interrupted: stopped and cleaned up"),
        (ZeroDivisionError("boom"), 1, "this is a bug in pipeline; please report it"),
    ],
)
def test_runner_exit_codes_and_output(outcome, code, stderr, capsys):
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    hook = sys.unraisablehook
    assert run(_handler(outcome), argparse.Namespace(json=True)) == code
    out, err = capsys.readouterr()
    assert stderr in err
    if code == 0:
        assert json.loads(out) == {"rows": 3} and out.count("\n") == 1
    else:
        assert out == ""
    if isinstance(outcome, ZeroDivisionError):
        assert "Traceback" in err
    elif code:
        assert len(err.strip().splitlines()) == 1  # one line / one paragraph, no traceback
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before  # restored
    assert sys.unraisablehook is hook


@pytest.mark.parametrize(
    ("driver", "then"),
    [(False, "work"), (True, "work"), (False, "block")],
    ids=["command", "train-driver", "blocked"],
)
def test_a_signal_that_lands_in_a_finalizer_still_stops_the_command_without_a_traceback(
    driver, then, tmp_path
):
    """Python drops an exception raised inside ``__del__`` or a weakref callback and prints
    "Exception ignored in ... Traceback". A SIGTERM that arrived just then (CI: during an import,
    in importlib's module-lock callback) was lost, and the command went on with a traceback. It
    is raised again, also into a call that blocks (a real signal, not only a flag)."""
    code = textwrap.dedent(
        """
        import argparse, contextlib, signal, sys, threading, time
        from pipeline.cli.app import run
        from pipeline.train.jobs import DriverPreemption

        class Finalized:
            def __del__(self):
                signal.raise_signal(signal.SIGTERM)  # the handler runs inside __del__

        def handler(args):
            with DriverPreemption() if sys.argv[1] == "1" else contextlib.nullcontext():
                start = time.monotonic()
                try:
                    Finalized()
                    if sys.argv[2] == "block":
                        threading.Event().wait(20)
                    else:
                        while time.monotonic() < start + 20:
                            sum(range(1000))
                    print("went on after the signal", file=sys.stderr)
                finally:
                    open(sys.argv[3], "w").write(str(time.monotonic() - start))
            return {}

        sys.exit(run(handler, argparse.Namespace(json=False)))
        """
    )
    took = tmp_path / "took"
    proc = _py(code, "1" if driver else "0", then, str(took))
    assert proc.returncode == 143, proc.stderr
    assert proc.stderr.strip().splitlines() == ["stopped by SIGTERM: stopped and cleaned up"], proc.stderr
    assert float(took.read_text()) < 10, took.read_text()  # not the 20 s of the wait


def test_user_errors_are_reported_before_spark_starts_in_one_paragraph(tmp_path):
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "x").write_text("x")
    code = (
        "import sys\nfrom pipeline.cli import main\n"
        "code = main(sys.argv[1:])\nprint(code, 'pyspark.sql' in sys.modules)\n"
    )
    proc = _py(code, "convert", "images", str(tmp_path / "missing"), str(tmp_path / "dest"))
    assert proc.stdout.split() == ["2", "False"], proc.stderr
    message = " ".join(proc.stderr.split())
    assert message.startswith(
        f"error: SRC '{tmp_path / 'missing'}' does not exist; {tmp_path / 'dest'} already exists"
    )
    assert "HINT" in message and "--overwrite" in message
    env = {**os.environ, "JAVA_HOME": str(tmp_path / "nojava"), "PATH": os.path.dirname(sys.executable)}
    proc = _py(code, "convert", "images", str(tmp_path), str(tmp_path / "out"), env=env)
    assert proc.stdout.split() == ["2", "False"], proc.stderr
    assert proc.stderr.startswith("error: Java 17 or newer is required") and "Traceback" not in proc.stderr


def test_bench_device_error_speaks_cli_words(tmp_path):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    url = write_parquet_dataset(tmp_path / "ds", rows=20, files=1)
    proc = _py(
        "import sys; from pipeline.cli import main; sys.exit(main(sys.argv[1:]))",
        "bench",
        url,
        "--device",
        "cuda",
    )
    assert proc.returncode == 2, proc.stderr
    assert "--device cpu" in proc.stderr and "device=None" not in proc.stderr


def test_jobs_are_thin_entry_points_over_the_cli():
    for path in sorted((REPO / "jobs").glob("*.py")):
        code = path.read_text(encoding="utf-8")
        assert "from pipeline.cli import main" in code and "argparse" not in code, path.name
        assert len([ln for ln in code.splitlines() if ln and not ln.startswith((" ", '"', "#"))]) <= 5, (
            path.name
        )
    proc = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "convert_images.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and proc.stdout.startswith("usage: pipeline convert images")


def _write_images(root, count: int) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / f"c{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(folder / f"{i:04d}.png")


@pytest.mark.spark
@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "group", "code"), [(signal.SIGINT, True, 130), (signal.SIGTERM, False, 143)]
)
def test_ctrl_c_and_sigterm_during_a_conversion_exit_with_one_line_and_clean_up(
    tmp_path, signum, group, code
):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) and SIGTERM mid-job."""
    _write_images(tmp_path / "src", 1200)
    dest = tmp_path / "out" / "ds"
    cmd = [sys.executable, "-m", "pipeline.cli", "-q", "convert", "images", str(tmp_path / "src"), str(dest),
           "--size", "32x32", "--encoding", "jpeg", "--partitions", "8", "--master", "local[1]"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 180
        while not list((tmp_path / "out").glob(".ds.staging-*/data/*")) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        time.sleep(0.5)  # the Spark job is running: its first files are in the staging folder
        os.killpg(proc.pid, signum) if group else proc.send_signal(signum)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == code, err[-3000:]
    assert out == ""
    assert err.strip().splitlines()[-1] == (
        "interrupted: stopped and cleaned up"
        if signum == signal.SIGINT
        else "stopped by SIGTERM: stopped and cleaned up"
    )
    assert "Traceback" not in err and "py4j" not in err and "ERROR" not in err, err[-6000:]
    assert not dest.exists() and list((tmp_path / "out").iterdir()) == []


@pytest.mark.spark
@pytest.mark.slow
def test_readme_spark_submit_command_works_without_an_activated_venv(tmp_path):
    """README: ``PYSPARK_PYTHON=.venv/bin/python .venv/bin/spark-submit ... jobs/convert_images.py ...``."""
    section, _ = _readme_rows()
    command = " ".join(section.split("```bash\n", 1)[1].split("```", 1)[0].replace("\\\n", " ").split())
    assert command.startswith("PYSPARK_PYTHON=.venv/bin/python .venv/bin/spark-submit --master ")
    assert " jobs/convert_images.py " in command
    _write_images(tmp_path / "src", 6)
    bin_dir = os.path.dirname(sys.executable)
    env = {
        k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "SPARK_HOME", "PYSPARK_DRIVER_PYTHON")
    }
    env.update(PATH="/usr/bin:/bin", PYSPARK_PYTHON=os.path.join(bin_dir, "python"))
    cmd = [os.path.join(bin_dir, "spark-submit"), "--master", "local[1]", "jobs/convert_images.py",
           str(tmp_path / "src"), str(tmp_path / "out"), "--size", "8x8", "-q", "--json"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["rows"] == 6


def test_fit_choices_are_the_converters():
    from pipeline.convert.imaging import FITS

    for name, flag in (("convert images", "--fit"), ("convert table", "--image-fit")):
        assert tuple(LEAVES[name]._option_string_actions[flag].choices) == tuple(FITS)


@pytest.mark.parametrize(("verbose", "shown"), [(0, ["ours"]), (1, ["theirs", "ours"])])
def test_third_party_warnings_reach_the_terminal_only_with_v(verbose, shown):
    import warnings

    from pipeline.cli.app import configure_logging

    with warnings.catch_warnings(record=True) as caught:
        configure_logging(verbose)
        warnings.warn_explicit("theirs", FutureWarning, "x.py", 1, module="pyarrow.pandas_compat")
        warnings.warn_explicit("ours", UserWarning, "y.py", 1, module="pipeline.loader.loader")
    assert [str(w.message) for w in caught] == shown


@pytest.mark.parametrize(
    ("verbose", "quiet", "shown"),
    [
        (0, False, {"theirs error", "ours info", "ours warning"}),
        (0, True, {"theirs error", "ours warning"}),
        (1, False, {"theirs warning", "theirs error", "ours debug", "ours info", "ours warning"}),
        (
            2,
            False,
            {"theirs info", "theirs warning", "theirs error", "ours debug", "ours info", "ours warning"},
        ),
    ],
)
def test_third_party_log_records_reach_the_terminal_from_error_up_unless_v(verbose, quiet, shown):
    """numexpr's 'NumExpr defaulting to 2 threads.' (INFO) once reached every conversion's terminal."""
    code = textwrap.dedent(
        f"""
        import logging
        from pipeline.cli.app import configure_logging
        configure_logging({verbose}, {quiet})
        theirs, ours = logging.getLogger("numexpr.utils"), logging.getLogger("pipeline.convert.x")
        theirs.info("theirs info"); theirs.warning("theirs warning"); theirs.error("theirs error")
        own = logging.getLogger("TorchDistributor"); own.setLevel(logging.INFO)  # as pyspark does
        own.info("theirs info"); own.warning("theirs warning")
        ours.debug("ours debug"); ours.info("ours info"); ours.warning("ours warning")
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    messages = [line.split(": ", 1)[1] for line in proc.stderr.splitlines() if ": " in line]
    assert set(messages) == shown, proc.stderr


@pytest.mark.parametrize("missing", ["--train-url", "--eval-url"])
def test_train_checks_its_datasets_before_spark_starts(tmp_path, missing):
    """A missing dataset: one paragraph and exit 2 in seconds, not ranks' tracebacks after Spark."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "train").mkdir()
    pq.write_table(pa.table({"label": [0, 1]}), tmp_path / "train" / "part-0.parquet")
    urls = {"--train-url": str(tmp_path / "train"), "--eval-url": str(tmp_path / "train")}
    urls[missing] = str(tmp_path / "missing")
    cmd = [sys.executable, "-m", "pipeline.cli", "train", "images", *(x for kv in urls.items() for x in kv)]
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert time.monotonic() - started < 30
    text = " ".join(proc.stderr.split())
    assert text.startswith(f"error: file://{tmp_path / 'missing'} does not exist -- HINT"), proc.stderr[
        -3000:
    ]
    for noise in ("Traceback", "torch.distributed", "starting Spark", "rank "):
        assert noise not in proc.stderr, proc.stderr[-3000:]


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_a_closed_stdout_ends_the_command_quietly(tmp_path, json_flag):
    """``pipeline inspect URL | head`` when head has gone: exit 141 (as for SIGPIPE), no
    traceback and no "this is a bug" line."""
    url = write_parquet_dataset(tmp_path / "ds", rows=20, files=1)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "inspect", url, *json_flag],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    proc.stdout.close()  # the reader is gone before anything is written
    stderr = proc.stderr.read()
    assert proc.wait(timeout=120) == 141, stderr
    assert "Traceback" not in stderr and "bug" not in stderr, stderr
