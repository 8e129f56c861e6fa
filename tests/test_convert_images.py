"""Image conversion end to end: realistic sources, read-back, pixels, bad input, kill, CLI."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageOps

from pipeline.cli import main as cli_main
from pipeline.convert.common import ConvertConfig
from pipeline.convert.images import ImageOptions, convert_images, find_images
from pipeline.convert.imaging import decode_rgb, fit_image, prepare_image
from pipeline.dataset import list_dataset_files, read_provenance
from pipeline.errors import InputError
from tests.conftest import REPO

pytestmark = pytest.mark.spark

LOSSLESS_CV2 = (".png", ".bmp", ".tif")  # formats OpenCV reads back exactly like Pillow


def smooth(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth RGB test picture (JPEG-friendly) with a seed-dependent pattern."""
    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    a, b, c = rng.uniform(0.05, 0.3, 3)
    img = np.stack(
        [128 + 100 * np.sin(a * xx + b * yy), 128 + 100 * np.cos(b * xx), (xx * 255 // w + c * yy)], -1
    )
    return np.clip(img, 0, 255).astype(np.uint8)


def half_up(value: Fraction) -> int:
    """``value`` rounded to the nearest integer, halves up (at least 1)."""
    return max(1, int(value + Fraction(1, 2)))


def jpeg_with_orientation(array: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "JPEG", quality=92, exif=exif.tobytes())
    return buf.getvalue()


def write_sample_tree(root: Path) -> dict[str, str]:
    """Class folders (one nested) with JPEG/PNG/BMP/TIFF/GIF/WebP in many modes; returns rel -> class."""
    made: dict[str, str] = {}

    def save(rel: str, image: Image.Image | None = None, data: bytes | None = None, **kw) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if data is not None:
            path.write_bytes(data)
        else:
            image.save(path, **kw)
        made[rel] = rel.split("/")[0]

    rgb = smooth(30, 40, 1)
    save("cat/rgb.jpg", Image.fromarray(rgb), quality=90)
    save("cat/gray.jpg", Image.fromarray(rgb[:, :, 0]), quality=90)
    save("cat/cmyk.jpg", Image.fromarray(smooth(20, 26, 2)).convert("CMYK"), quality=90)
    save("cat/rotated.jpg", data=jpeg_with_orientation(smooth(24, 36, 3), 6))
    save("cat/deep/nested/rgb.png", Image.fromarray(smooth(33, 21, 4)))
    rgba = np.dstack([smooth(25, 25, 5), np.linspace(0, 255, 625, dtype=np.uint8).reshape(25, 25)])
    save("dog/rgba.png", Image.fromarray(rgba, "RGBA"))
    save("dog/palette.png", Image.fromarray(smooth(28, 30, 6)).convert("P", palette=Image.Palette.ADAPTIVE))
    gray16 = (np.arange(22 * 18, dtype=np.uint32).reshape(22, 18) * 161).astype(np.uint16)
    save("dog/gray16.png", Image.fromarray(gray16))
    save("dog/la.png", Image.fromarray(rgba[:, :, [0, 3]], "LA"))
    save("dog/bitmap.bmp", Image.fromarray(smooth(17, 23, 7)))
    save("zebra/photo.tiff", Image.fromarray(smooth(26, 19, 8)))
    frames = [Image.fromarray(smooth(20, 20, s)).convert("P") for s in (9, 10)]
    save("zebra/anim.gif", frames[0], save_all=True, append_images=frames[1:])
    save("zebra/lossless.webp", Image.fromarray(smooth(21, 27, 11)), lossless=True)
    (root / "zebra" / "notes.txt").write_text("not an image: ignored by suffix")
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "cat" / "._rgb.jpg").write_bytes(b"AppleDouble")  # macOS resource fork: hidden, ignored
    return made


def expected_rgb(path: Path) -> np.ndarray:
    """An independent decode of a source file: upright 8-bit RGB, alpha dropped, 16-bit / 257."""
    image = ImageOps.exif_transpose(Image.open(path))
    if image.mode in ("I;16", "I"):
        gray = np.round(np.asarray(image, dtype=np.float64) / 257).clip(0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    return np.asarray(image.convert("RGB"))


def read_back(spark, url: str) -> dict[str, tuple[np.ndarray, int]]:
    """Rows by path via make_reader; asserts Spark and pyarrow hold the same values."""
    import cv2

    from tests.datasets import make_reader

    with make_reader(url, workers_count=1, shuffle_row_groups=False, num_epochs=1) as reader:
        by_reader = {row.path: (row.image, int(row.label)) for row in reader}
    by_spark = {r["path"]: (bytes(r["image"]), r["label"]) for r in spark.read.parquet(url).collect()}
    files = list_dataset_files(url).files
    table_rows = [row for f in files for row in pq.read_table(f).to_pylist()]
    by_arrow = {r["path"]: (r["image"], r["label"]) for r in table_rows}
    assert by_spark == by_arrow
    import duckdb

    glob = list_dataset_files(url).root + "/*.parquet"
    by_duckdb = {
        p: (bytes(i), lab) for p, i, lab in duckdb.sql(f"select path, image, label from '{glob}'").fetchall()
    }
    assert by_duckdb == by_arrow
    assert set(by_reader) == set(by_spark)
    for path, (image, label) in by_reader.items():
        data, spark_label = by_spark[path]
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
        np.testing.assert_array_equal(image, decoded)
        assert label == spark_label
    return by_reader


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("images") / "src"
    return root, write_sample_tree(root)


def test_tree_converts_every_format_and_pixels_match_an_independent_decode(spark, sample, tmp_path):
    src, made = sample
    result = convert_images(spark, str(src), str(tmp_path / "out"), ImageOptions())
    assert (result.rows, result.skipped, result.extra["encoding"]) == (len(made), 0, "png")
    rows = read_back(spark, result.output)
    classes = ["cat", "dog", "zebra"]
    assert read_provenance(result.output)["class_names"] == classes
    assert {p: label for p, (_, label) in rows.items()} == {p: classes.index(c) for p, c in made.items()}
    for rel, (image, _) in rows.items():
        expected = expected_rgb(src / rel)
        np.testing.assert_array_equal(image, expected, err_msg=rel)
        if rel.endswith(LOSSLESS_CV2) and Image.open(src / rel).mode == "RGB":
            import cv2

            np.testing.assert_array_equal(image, cv2.imread(str(src / rel), cv2.IMREAD_COLOR)[:, :, ::-1])
    assert rows["cat/rotated.jpg"][0].shape == (36, 24, 3)  # EXIF orientation 6 applied
    first = list_dataset_files(result.output).files[0]
    assert pq.read_metadata(first).row_group(0).column(0).compression == "UNCOMPRESSED"  # auto for images


@pytest.mark.parametrize("fit", ["center-crop", "resize", "pad"])
def test_size_gives_a_fixed_shape_equal_to_the_same_resize_done_independently(spark, sample, tmp_path, fit):
    src, _ = sample
    result = convert_images(spark, str(src), str(tmp_path / "out"), ImageOptions(size=(16, 24), fit=fit))
    rows = read_back(spark, result.output)
    from pipeline.inspect import inspect_dataset

    assert inspect_dataset(result.output).fields["image"].shape == (16, 24, 3)
    for rel, (image, _) in rows.items():
        source = Image.fromarray(expected_rgb(src / rel))
        sw, sh = source.size
        if fit == "center-crop":  # the largest centered 24:16 region, its short side rounded (half up)
            cw, ch = (
                (sw, half_up(Fraction(sw * 16, 24)))
                if 24 * sh >= 16 * sw
                else (half_up(Fraction(sh * 24, 16)), sh)
            )
            left, top = (sw - cw) // 2, (sh - ch) // 2
            want = source.resize((24, 16), Image.Resampling.BILINEAR, box=(left, top, left + cw, top + ch))
        elif fit == "resize":
            want = source.resize((24, 16), Image.Resampling.BILINEAR)
        else:
            scale = min(Fraction(24, sw), Fraction(16, sh))
            w, h = half_up(sw * scale), half_up(sh * scale)
            want = Image.new("RGB", (24, 16))
            want.paste(source.resize((w, h), Image.Resampling.BILINEAR), ((24 - w) // 2, (16 - h) // 2))
        np.testing.assert_array_equal(image, np.asarray(want), err_msg=f"{rel} {fit}")


def test_jpeg_folder_keeps_original_bytes_unless_a_change_is_needed(spark, tmp_path):
    import cv2

    src = tmp_path / "jpegs"
    (src / "a").mkdir(parents=True)
    for i in range(6):
        Image.fromarray(smooth(32, 48, i)).save(src / "a" / f"{i}.jpg", quality=85)
    (src / "a" / "rotated.jpg").write_bytes(jpeg_with_orientation(smooth(20, 30, 9), 3))
    Image.fromarray(smooth(32, 48, 10)[:, :, 1]).save(src / "a" / "gray.jpg")
    result = convert_images(spark, str(src), str(tmp_path / "out"), ImageOptions())
    assert result.extra["encoding"] == "jpeg"
    stored = {r["path"]: bytes(r["image"]) for r in spark.read.parquet(result.output).collect()}
    rows = read_back(spark, result.output)
    for i in range(6):
        rel = f"a/{i}.jpg"
        assert stored[rel] == (src / rel).read_bytes()  # passed through untouched
        np.testing.assert_array_equal(rows[rel][0], cv2.imread(str(src / rel))[:, :, ::-1])
    assert stored["a/rotated.jpg"] != (src / "a" / "rotated.jpg").read_bytes()
    upright = np.asarray(Image.open(src / "a" / "rotated.jpg").rotate(180))
    assert np.abs(rows["a/rotated.jpg"][0].astype(int) - upright).mean() < 3  # re-encoded at quality 95
    assert rows["a/gray.jpg"][0].shape == (32, 48, 3)
    sized = convert_images(spark, str(src), str(tmp_path / "sized"), ImageOptions(size=(32, 48)))
    kept = {r["path"]: bytes(r["image"]) for r in spark.read.parquet(sized.output).collect()}
    assert kept["a/0.jpg"] == (src / "a" / "0.jpg").read_bytes()  # already the target size


def test_flat_folder_has_no_labels_and_manifests_name_their_classes(spark, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        Image.fromarray(smooth(10, 12, i)).save(flat / f"{i}.png")
    result = convert_images(spark, str(flat), str(tmp_path / "flat-out"), ImageOptions())
    assert {label for _, label in read_back(spark, result.output).values()} == {-1}
    assert read_provenance(result.output)["class_names"] == []

    (tmp_path / "m.csv").write_text("path,label\nflat/0.png,tiger\nflat/1.png,ant\nflat/2.png,\n")
    result = convert_images(spark, str(tmp_path / "m.csv"), str(tmp_path / "csv-out"), ImageOptions())
    labels = {p: label for p, (_, label) in read_back(spark, result.output).items()}
    assert labels == {"flat/0.png": 1, "flat/1.png": 0, "flat/2.png": -1}
    assert result.extra["class_names"] == ["ant", "tiger"]

    lines = [{"path": str(flat / "0.png"), "label": 7}, {"path": "flat/missing.png", "label": 3}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    skip = ConvertConfig(on_error="skip")
    result = convert_images(
        spark, str(tmp_path / "m.jsonl"), str(tmp_path / "j-out"), ImageOptions(), settings=skip
    )
    assert (result.rows, result.skipped) == (1, 1)
    assert [label for _, label in read_back(spark, result.output).values()] == [7]


def _damage_idat(png: bytes) -> bytes:
    data = bytearray(png)
    start = png.index(b"IDAT") + 8
    data[start : start + 16] = bytes(16)  # zeroed compressed bytes; the CRC no longer matches
    return bytes(data)


def _with_frame_marker(jpeg: bytes, marker: int) -> bytes:
    data = bytearray(jpeg)
    data[jpeg.index(b"\xff\xc0") + 1] = marker  # e.g. lossless: readers refuse the scan data
    return bytes(data)


def write_bad_inputs(root: Path) -> list[str]:
    good = smooth(20, 20, 1)
    buf = io.BytesIO()
    Image.fromarray(good).save(buf, "JPEG")
    png = io.BytesIO()
    Image.fromarray(good).save(png, "PNG")
    bad = {
        "b/truncated.jpg": buf.getvalue()[: len(buf.getvalue()) // 2],
        "b/truncated.png": png.getvalue()[: len(png.getvalue()) * 2 // 3],
        "b/empty.png": b"",
        "b/text.jpg": b"hello, I am not a JPEG\n",
        "b/random.webp": np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes(),
        # structurally complete, so a header-only check would keep the bytes: damaged image data
        "b/damaged_idat.png": _damage_idat(png.getvalue()),
        "b/lossless_sof3.jpg": _with_frame_marker(buf.getvalue(), 0xC3),
    }
    for rel, data in bad.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    for i in range(4):
        (root / "a").mkdir(parents=True, exist_ok=True)
        Image.fromarray(smooth(20, 20, i)).save(root / "a" / f"good{i}.png")
    return sorted(bad)


def test_skip_mode_lists_every_bad_file_and_keeps_every_good_one(spark, tmp_path):
    src = tmp_path / "src"
    bad = write_bad_inputs(src)
    settings = ConvertConfig(on_error="skip")
    result = convert_images(spark, str(src), str(tmp_path / "out"), ImageOptions(), settings=settings)
    assert (result.rows, result.skipped) == (4, len(bad))
    report = [json.loads(line) for line in Path(result.skipped_report).read_text().splitlines()]
    assert sorted(r["source"] for r in report) == [str(src / rel) for rel in bad]
    reasons = {Path(r["source"]).name: r["reason"] for r in report}
    assert "empty file" in reasons["empty.png"]
    assert "truncated" in reasons["truncated.jpg"].lower()
    assert set(read_back(spark, result.output)) == {f"a/good{i}.png" for i in range(4)}
    assert read_provenance(result.output)["counts"]["skipped"] == len(bad)


def test_fail_mode_in_the_library_names_the_file_and_leaves_no_dest(spark, tmp_path):
    src = tmp_path / "src"
    write_bad_inputs(src)
    with pytest.raises(InputError) as info:
        convert_images(spark, str(src), str(tmp_path / "out"), ImageOptions())
    assert str(src / "b") in str(info.value) and "HINT" in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no DEST, no staging left


def run_cli(*args: str, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=sys.executable)
    cmd = [sys.executable, "-m", "pipeline.cli", "convert", "images", *args, "--master", "local[2]"]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=240, **kw)


def test_cli_fail_mode_exits_nonzero_naming_the_file_without_a_jvm_trace(tmp_path):
    src = tmp_path / "src"
    write_bad_inputs(src)
    proc = run_cli(str(src), str(tmp_path / "out"))
    assert proc.returncode == 2, proc.stderr
    assert "error: bad input: " + str(src / "b") in proc.stderr
    assert "Py4JJavaError" not in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_existing_dest_is_an_error_before_any_work_and_is_left_untouched(sample, tmp_path, capsys):
    src, _ = sample
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "keep.txt").write_text("precious")
    started = time.monotonic()
    assert cli_main(["convert", "images", str(src), str(dest), "--master", "local[1]"]) == 2
    assert time.monotonic() - started < 5  # no Spark was started
    assert "already exists" in capsys.readouterr().err
    assert [p.name for p in dest.iterdir()] == ["keep.txt"]


def test_cli_json_and_overwrite_replace_an_old_dataset(spark, sample, tmp_path, capsys):
    src, made = sample
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    (dest / "_common_metadata").write_text("an old dataset")  # --overwrite replaces datasets only
    code = cli_main(["convert", "images", str(src), str(dest), "--overwrite", "--size", "8x8", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["rows"] == len(made) and result["skipped"] == 0 and result["seconds"] > 0
    assert result["output"] == "file://" + str(dest)
    assert not (dest / "old.txt").exists()
    assert {p.name for p in tmp_path.iterdir()} == {"out"}


def tree_digest(url: str) -> str:
    """Hash of every row's (path, label, image bytes), in file order."""
    files = list_dataset_files(url).files
    digest = hashlib.sha256()
    for f in files:
        for row in pq.read_table(f).to_pylist():
            digest.update(f"{row['path']}|{row['label']}|".encode() + row["image"])
    return digest.hexdigest()


@pytest.mark.slow
def test_killed_job_leaves_no_dest_and_a_rerun_succeeds(spark, tmp_path):
    src = tmp_path / "src" / "flat"
    src.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(1500):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(src / f"{i:04d}.jpg")
    dest = tmp_path / "out"
    env = dict(os.environ, SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=sys.executable)
    cmd = [sys.executable, "-m", "pipeline.cli", "convert", "images", str(src), str(dest), "--size", "60x60",
           "--encoding", "png", "--partitions", "1", "--row-group-mb", "1", "--master", "local[1]"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, start_new_session=True, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if any(tmp_path.glob(".out.staging-*/data/.part-*.tmp")):
                break  # the task has written its first row group
            time.sleep(0.01)
        assert proc.poll() is None, "the conversion finished before it could be killed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not dest.exists()
    assert list(tmp_path.glob(".out.staging-*"))  # the killed run's staging folder...
    result = convert_images(spark, str(src), str(dest), ImageOptions(size=(60, 60), encoding="png"))
    assert result.rows == 1500
    assert not list(tmp_path.glob(".out.staging-*"))  # ...was removed by the rerun


def test_decoding_rules_for_odd_modes():
    buf = io.BytesIO()
    Image.fromarray(np.full((4, 4), 65535, np.uint16)).save(buf, "PNG")
    assert np.asarray(decode_rgb(buf.getvalue())).tolist() == [[[255, 255, 255]] * 4] * 4
    buf = io.BytesIO()
    Image.fromarray(np.full((3, 3), 0.5, np.float32)).save(buf, "TIFF")
    assert np.asarray(decode_rgb(buf.getvalue()))[0, 0].tolist() == [128, 128, 128]
    red = Image.new("RGB", (10, 4), (255, 0, 0))
    padded = np.asarray(fit_image(red, (10, 10), "pad"))
    assert padded[0, 0].tolist() == [0, 0, 0] and padded[5, 5].tolist() == [255, 0, 0]
    with pytest.raises(ValueError, match="empty file"):
        prepare_image(b"", size=None)


def test_tree_with_loose_images_at_the_top_is_an_error(tmp_path):
    (tmp_path / "a").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "a" / "x.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "loose.png")
    with pytest.raises(InputError, match=r"loose\.png"):
        find_images(str(tmp_path))


@pytest.mark.parametrize(("fit", "orientation"), [("center-crop", 1), ("pad", 6), ("resize", 8)])
def test_jpeg_draft_decodes_big_photos_at_a_reduced_scale_close_to_a_full_decode(fit, orientation):
    import cv2

    photo = np.asarray(Image.fromarray(smooth(60, 80, 3)).resize((800, 600), Image.Resampling.BICUBIC))
    data = jpeg_with_orientation(photo, orientation)
    full, _ = prepare_image(data, size=(48, 64), fit=fit, encoding="png")
    fast, _ = prepare_image(data, size=(48, 64), fit=fit, encoding="png", jpeg_draft=True)
    assert full != fast  # the draft path really decoded differently
    a, b = (cv2.imdecode(np.frombuffer(x, np.uint8), cv2.IMREAD_COLOR).astype(int) for x in (full, fast))
    assert a.shape == b.shape == (48, 64, 3)
    assert np.abs(a - b).mean() < 3


def write_mixed_folder(root: Path, count: int, sizes: list[tuple[int, int]] | None = None) -> list[str]:
    """``count`` ordinary RGB images, alternately JPEG and PNG, in 3 class folders; returns rel paths."""
    rng = np.random.default_rng(300)
    sizes = sizes or [(103, 127), (156, 98)]
    while len(sizes) < count:
        sizes.append((int(rng.integers(40, 201)), int(rng.integers(40, 301))))
    rels = []
    for i, (h, w) in enumerate(sizes[:count]):
        rel = f"{('cat', 'dog', 'owl')[i % 3]}/img{i:03d}.{'jpg' if i % 2 else 'png'}"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(smooth(h, w, i)).save(root / rel, **({"quality": 90} if i % 2 else {}))
        rels.append(rel)
    return rels


@pytest.mark.slow
def test_300_ordinary_images_of_mixed_sizes_convert_at_64x64_with_none_skipped(spark, tmp_path, capsys):
    src = tmp_path / "photos"
    write_mixed_folder(src, 300)  # includes 127x103 and 98x156 (W x H), which failed before
    dest = tmp_path / "out"
    argv = ["convert", "images", str(src), str(dest), "--size", "64x64", "--on-error", "skip", "--json"]
    assert cli_main(argv) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (out["rows"], out["skipped"]) == (300, 0)
    assert out["extra"]["passed_through"] + out["extra"]["re_encoded"] == 300
    table = [pq.read_table(f) for f in list_dataset_files(out["output"]).files]
    for blob in (b for t in table for b in t["image"].to_pylist()):
        assert Image.open(io.BytesIO(blob)).size == (64, 64)


def test_mixed_jpeg_and_png_folder_keeps_each_images_bytes(spark, tmp_path):
    """auto encoding: JPEG and PNG rows keep their own bytes; petastorm and our loader read both."""
    import cv2

    import pipeline

    src = tmp_path / "mixed"
    rels = write_mixed_folder(src, 8, [(24, 32)] * 8)
    Image.fromarray(smooth(24, 32, 99)[:, :, 0]).save(src / "cat" / "gray.jpg")  # must be decoded
    result = convert_images(spark, str(src), str(tmp_path / "out"), ImageOptions(size=(24, 32)))
    assert result.extra["encoding"] == "png"  # the field's declared codec: not every source is a JPEG
    assert (result.extra["passed_through"], result.extra["re_encoded"]) == (8, 1)
    stored = {r["path"]: bytes(r["image"]) for r in spark.read.parquet(result.output).collect()}
    for rel in rels:
        assert stored[rel] == (src / rel).read_bytes(), rel
    assert stored["cat/gray.jpg"].startswith(b"\x89PNG")  # re-encoded in the declared encoding
    expected = {rel: cv2.imread(str(src / rel), cv2.IMREAD_COLOR)[:, :, ::-1] for rel in rels}
    rows = read_back(spark, result.output)  # petastorm's make_reader decodes by content
    for rel in rels:
        np.testing.assert_array_equal(rows[rel][0], expected[rel], err_msg=rel)
    want = {
        p: cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1] for p, b in stored.items()
    }
    seen = []
    with pipeline.open_loader(result.output, batch_size=4, shuffle=False, num_epochs=1) as loader:
        for batch in loader:  # fixed-shape field: the reader's JPEG fast path and its OpenCV path
            for image in batch["image"].numpy():
                seen += [p for p, w in want.items() if np.array_equal(image, w)][:1]
    assert sorted(seen) == sorted(stored)
