from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal

import pytest

from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.spark import SparkConfig
from tests.conftest import REPO


@dataclass(frozen=True)
class Inner:
    quality: int = 90


@dataclass(frozen=True)
class Example:
    name: str = "x"
    size: tuple[int, int] | None = None
    ratio: float = 0.5
    mode: Literal["fail", "skip"] = "fail"
    inner: Inner = field(default_factory=Inner)
    extra: dict[str, str] = field(default_factory=dict)


def write(tmp_path, text):
    path = tmp_path / "example.yaml"
    path.write_text(text)
    return path


def test_defaults_file_and_overrides_in_order(tmp_path):
    path = write(tmp_path, "name: from-file\nratio: 2\ninner: {quality: 75}\nsize: [32, 48]\n")
    cfg = load_config(Example, path, overrides={"name": "from-flag", "mode": None})
    assert cfg == Example(name="from-flag", size=(32, 48), ratio=2.0, mode="fail", inner=Inner(75))


def test_a_config_file_rewritten_at_once_is_read_anew(tmp_path, monkeypatch):
    """Parsed files are kept by their text: an edit of the same size within the same clock tick
    (same mtime) is still seen; unchanged text is not parsed again."""
    import yaml

    path = write(tmp_path, "name: aaa\n")
    assert load_config(Example, path).name == "aaa"
    path.write_text("name: bbb\n")  # same size, written at once
    assert load_config(Example, path).name == "bbb"
    parses = []
    real = yaml.safe_load
    monkeypatch.setattr(yaml, "safe_load", lambda text: parses.append(text) or real(text))
    load_config(Example, path).extra["k"] = "changed"  # a caller's change is not kept
    assert load_config(Example, path) == Example(name="bbb") and parses == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("nmae: a\n", "unknown key 'nmae'"),
        ("ratio: fast\n", "key 'ratio' must be float, got 'fast'"),
        ("mode: maybe\n", "key 'mode' must be one of 'fail', 'skip'"),
        ("size: [1, 2, 3]\n", "key 'size' must be"),
        ("inner: {quality: high}\n", "key 'quality' must be int"),
        ("- a list\n", "expected a mapping"),
        ("name: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_files_name_the_file_key_and_type(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(Example, path)
    assert str(path) in str(info.value)
    assert expected in str(info.value)


def test_bool_is_not_an_int(tmp_path):
    with pytest.raises(ConfigError, match="must be int"):
        load_config(Inner, write(tmp_path, "quality: true\n"))


def test_missing_explicit_path_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Example, tmp_path / "nope" / "x.yaml")


def test_shipped_conf_files_match_the_documented_defaults():
    """conf/*.yaml documents the defaults; it must not drift from the dataclasses."""
    cfg = load_config(SparkConfig, REPO / "conf" / "spark.yaml")
    assert cfg == SparkConfig()
    assert {f.name for f in fields(SparkConfig)} <= set(
        line.split(":")[0]
        for line in (REPO / "conf" / "spark.yaml").read_text().splitlines()
        if line and line[0].isalpha()
    )


def test_a_stray_file_in_the_working_directory_does_not_replace_the_shipped_defaults(tmp_path, monkeypatch):
    (tmp_path / "spark.yaml").write_text("master: spark://elsewhere:7077\n")
    (tmp_path / "mine.yaml").write_text("master: local[3]\n")
    monkeypatch.chdir(tmp_path)
    assert load_config(SparkConfig, "spark.yaml").master == "local[*]"  # conf/spark.yaml wins
    assert load_config(SparkConfig, "./spark.yaml").master == "spark://elsewhere:7077"  # asked for
    assert load_config(SparkConfig, "mine.yaml").master == "local[3]"  # not in conf/: the user's file
