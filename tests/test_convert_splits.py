"""``--split``: the spec, the stratified assignment (pure), and split conversions end to end."""

from __future__ import annotations

import json
import re
from collections import Counter
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.cli import main as cli_main
from pipeline.convert.splits import assign_splits, parse_split
from pipeline.errors import ConfigError


def test_parse_split_reads_fractions_exactly() -> None:
    assert parse_split("train=0.8,heldout=0.2") == (("train", Fraction(4, 5)), ("heldout", Fraction(1, 5)))
    assert parse_split(" a = 1/3 , b=1/3,c=1/3") == tuple((n, Fraction(1, 3)) for n in "abc")
    assert parse_split("train=70%,val=0.1,test=20%")[0] == ("train", Fraction(7, 10))
    assert parse_split("all=1") == (("all", Fraction(1)),)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty split"),
        ("train=0.8,", "empty split"),
        ("train0.8", "is not NAME=FRACTION"),
        ("train=abc,heldout=0.2", "is not a number"),
        ("train=0.8,heldout=0.3", "sum to 1.1, not 1"),
        ("train=0.5,heldout=0.4", "sum to 0.9, not 1"),
        ("train=1.2,heldout=-0.2", "must be in (0, 1]"),
        ("train=1,heldout=0", "must be in (0, 1]"),
        ("train=0.5,train=0.5", "appears twice"),
        ("../x=0.5,y=0.5", "not a usable folder name"),
        ("_meta=0.5,y=0.5", "not a usable folder name"),
    ],
)
def test_parse_split_rejects_bad_specs_naming_the_part(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        parse_split(spec)
    assert "HINT" in str(info.value) or info.value.hint  # type: ignore[attr-defined]


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_assign_splits_stratified_exact_and_deterministic(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = [int(v) for v in rng.integers(0, 5, 503)] + [9]  # class 9 has a single item
    spec = parse_split("train=0.8,heldout=0.2")
    plan = assign_splits(labels, spec, seed=seed)
    assert plan == assign_splits(labels, spec, seed=seed)
    assert len(plan.assignment) == len(labels) and set(plan.assignment) == {0, 1}
    assert sum(plan.counts.values()) == len(labels)
    for label, n in Counter(labels).items():
        got = Counter(s for s, lab in zip(plan.assignment, labels, strict=True) if lab == label)
        assert abs(got[0] - n * 0.8) < 1 and abs(got[1] - n * 0.2) < 1, (label, n, got)
    assert plan.short == {9: {"train": 1, "heldout": 0}}  # the one item goes to the larger split
    other = assign_splits(labels, spec, seed=seed + 100)
    assert other.assignment != plan.assignment and other.counts == plan.counts


def test_assign_splits_three_way_and_flat() -> None:
    plan = assign_splits([-1] * 10, parse_split("a=1/3,b=1/3,c=1/3"), seed=0)
    assert sorted(plan.counts.values()) == [3, 3, 4] and plan.counts["a"] == 4  # ties: first named
    assert plan.items_of(1, list(range(10))) == [i for i in range(10) if plan.assignment[i] == 1]
    with pytest.raises(ConfigError, match="seed"):
        assign_splits([0], parse_split("a=1"), seed=-1)


def _tree(root: Path, per_class: dict[str, int], size: tuple[int, int] = (20, 24)) -> None:
    rng = np.random.default_rng(3)
    for cls, n in per_class.items():
        (root / cls).mkdir(parents=True)
        for i in range(n):
            array = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(array).save(root / cls / f"{i:03d}.{'png' if i % 2 else 'jpg'}")


def _paths(url: str) -> list[str]:
    import pyarrow.parquet as pq

    from pipeline.dataset import list_dataset_files

    return [
        p
        for f in list_dataset_files(url).files
        for p in pq.read_table(f, columns=["path"])["path"].to_pylist()
    ]


@pytest.mark.spark
def test_cli_split_writes_one_dataset_per_split_stratified_and_atomic(spark, tmp_path, capsys) -> None:
    src, dest = tmp_path / "photos", tmp_path / "data" / "photos"
    _tree(src, {"cat": 10, "dog": 15, "owl": 1})
    argv = ["convert", "images", str(src), str(dest), "--size", "16x16", "--split", "train=0.8,heldout=0.2"]
    assert cli_main([*argv, "--seed", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (out["rows"], out["skipped"], out["output"]) == (26, 0, "file://" + str(dest))
    assert {k: v["rows"] for k, v in out["splits"].items()} == {"train": 21, "heldout": 5}
    assert out["extra"]["classes_missing_from_a_split"] == {"owl": {"train": 1, "heldout": 0}}
    train, heldout = _paths(str(dest / "train")), _paths(str(dest / "heldout"))
    assert not set(train) & set(heldout)
    assert sorted(train + heldout) == sorted(str(p.relative_to(src)) for p in src.rglob("*.*"))
    assert Counter(p.split("/")[0] for p in heldout) == {"cat": 2, "dog": 3}
    from pipeline.dataset import read_provenance

    assert read_provenance(str(dest / "heldout"))["class_names"] == ["cat", "dog", "owl"]
    assert json.loads((dest / "_splits.json").read_text())["seed"] == 3
    # --overwrite replaces a split DEST; the same seed gives the same split
    assert cli_main([*argv, "--seed", "3", "--overwrite", "--json"]) == 0
    capsys.readouterr()
    assert sorted(_paths(str(dest / "heldout"))) == sorted(heldout)
    # a failing run (bad image, fail mode) leaves no DEST behind
    (src / "dog" / "bad.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    failed = tmp_path / "failed"
    assert cli_main(["convert", "images", str(src), str(failed), "--split", "train=0.5,heldout=0.5"]) == 2
    assert "bad.jpg" in capsys.readouterr().err
    assert not failed.exists() and not list(tmp_path.glob(".failed*"))


@pytest.mark.spark
def test_split_too_small_is_a_clear_error_without_dest(tmp_path, capsys) -> None:
    src = tmp_path / "photos"
    _tree(src, {"cat": 1, "dog": 1})
    dest = tmp_path / "out"
    code = cli_main(["convert", "images", str(src), str(dest), "--split", "train=0.9,heldout=0.1"])
    err = capsys.readouterr().err
    assert code == 2 and "split 'heldout'" in err and "gets no image" in err and "HINT" in err
    assert not dest.exists()
    assert cli_main(["convert", "images", str(src), str(dest), "--split", "train=0.9,heldout=0.2"]) == 2
    assert "sum to 1.1" in capsys.readouterr().err
