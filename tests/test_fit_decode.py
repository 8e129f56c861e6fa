"""Stored image bytes are decoded by content: a JPEG row in a ``png`` field and a PNG row in a
``jpeg`` field decode the same as anywhere else (what mixed-format conversions rely on)."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from pipeline.reader.decode import decode_column, spec_from_unischema

try:
    from pipeline.format import CompressedImageCodec, UnischemaField
except ImportError:  # the old stack before pipeline.format exists
    from petastorm.codecs import CompressedImageCodec
    from petastorm.unischema import UnischemaField


def _encoded(fmt: str, seed: int) -> tuple[bytes, np.ndarray]:
    yy, xx = np.mgrid[0:24, 0:32]
    array = np.stack([xx * 7 + seed, yy * 9, (xx + yy) * 3], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue(), array


@pytest.mark.parametrize("declared", ["png", "jpeg"])
@pytest.mark.parametrize("shape", [(24, 32, 3), (None, None, 3)])
def test_rows_of_either_format_decode_in_a_field_of_either_codec(declared, shape) -> None:
    import cv2

    blobs = [_encoded("JPEG", 1), _encoded("PNG", 2), _encoded("JPEG", 3)]
    field = UnischemaField("image", np.uint8, shape, CompressedImageCodec(declared), False)
    column = pa.array([b for b, _ in blobs], type=pa.binary())
    decoded = decode_column(spec_from_unischema(field), field, column)
    for (blob, array), got in zip(blobs, decoded, strict=True):
        want = cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
        np.testing.assert_array_equal(got, want)
        if blob.startswith(b"\x89PNG"):
            np.testing.assert_array_equal(got, array)  # lossless
