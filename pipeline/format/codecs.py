"""Column codecs of the Petastorm format: how a field's value is stored in its Parquet column.

Byte-compatible with petastorm 0.12.1 (``petastorm.codecs``):

* :class:`ScalarCodec` -- the value itself, in the column type of a ``pyspark.sql.types`` type;
* :class:`NdarrayCodec` -- ``numpy.save`` of the array (``.npy`` bytes, header included);
* :class:`CompressedNdarrayCodec` -- ``numpy.savez_compressed(arr=...)`` (read compatibility);
* :class:`CompressedImageCodec` -- PNG or JPEG bytes from OpenCV's ``imencode`` (RGB in,
  stored as BGR as OpenCV expects; JPEG quality ``quality``).

The attributes (``_spark_type``, ``_image_codec``, ``_quality``) are the ones petastorm pickles,
so a Unischema holding these codecs pickles into what petastorm unpickles (see
:mod:`pipeline.format.pickling`). pyspark and OpenCV are imported only when needed.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any

import numpy as np

from pipeline.format.spark_types import complete_spark_type, resolve_spark_type

__all__ = [
    "CompressedImageCodec",
    "CompressedNdarrayCodec",
    "DataframeColumnCodec",
    "NdarrayCodec",
    "ScalarCodec",
    "is_compliant_shape",
]


def is_compliant_shape(actual: tuple[int, ...], expected: tuple[int | None, ...]) -> bool:
    """Whether ``actual`` matches ``expected``; ``None`` (or 0) in either accepts any length."""
    if len(actual) != len(expected):
        return False
    return all(not (a and b) or a == b for a, b in zip(actual, expected, strict=True))


def _binary_type() -> Any:
    import pyspark.sql.types as T

    return T.BinaryType()


class DataframeColumnCodec:
    """Base class of the codecs: ``encode`` a value for storage, ``decode`` it back."""

    def encode(self, unischema_field: Any, value: Any) -> Any:
        raise NotImplementedError

    def decode(self, unischema_field: Any, value: Any) -> Any:
        raise NotImplementedError

    def spark_dtype(self) -> Any:
        """The ``pyspark.sql.types`` type of the stored column."""
        return _binary_type()

    def __str__(self) -> str:
        return f"{type(self).__name__}()"

    __repr__ = __str__

    def __eq__(self, other: object) -> bool:
        """Codecs are equal when they have the same class name and settings (petastorm's too)."""
        return type(other).__name__ == type(self).__name__ and vars(other) == vars(self)

    def __hash__(self) -> int:
        return hash(type(self).__name__)


def _check_array(field: Any, value: Any) -> None:
    if not isinstance(value, np.ndarray):
        raise ValueError(
            f"Unexpected type of {field.name} feature. Expected ndarray of {field.numpy_dtype}. "
            f"Got {type(value)}"
        )
    if field.numpy_dtype != value.dtype.type:
        raise ValueError(
            f"Unexpected type of {field.name} feature. Expected {field.numpy_dtype}. Got {value.dtype}"
        )
    if not is_compliant_shape(value.shape, field.shape):
        raise ValueError(
            f"Unexpected dimensions of {field.name} feature. Expected {field.shape}. Got {value.shape}"
        )


class NdarrayCodec(DataframeColumnCodec):
    """Stores an ndarray as the bytes of ``numpy.save`` (dtype and shape in the ``.npy`` header)."""

    def encode(self, unischema_field: Any, value: Any) -> bytearray:
        _check_array(unischema_field, value)
        out = BytesIO()
        np.save(out, value)
        return bytearray(out.getvalue())

    def decode(self, unischema_field: Any, value: Any) -> np.ndarray:
        return np.load(BytesIO(value))


class CompressedNdarrayCodec(DataframeColumnCodec):
    """Stores an ndarray as ``numpy.savez_compressed(arr=value)`` bytes."""

    def encode(self, unischema_field: Any, value: Any) -> bytearray:
        _check_array(unischema_field, value)
        out = BytesIO()
        np.savez_compressed(out, arr=value)
        return bytearray(out.getvalue())

    def decode(self, unischema_field: Any, value: Any) -> np.ndarray:
        return np.load(BytesIO(value))["arr"]


class CompressedImageCodec(DataframeColumnCodec):
    """Stores an ``(H, W)`` or ``(H, W, 3)`` RGB uint8 image as PNG or JPEG bytes (OpenCV).

    Args:
        image_codec: An OpenCV image format: ``"png"`` or ``"jpeg"``. Defaults to ``"png"``.
        quality: JPEG quality (0-100); ignored by PNG. Defaults to ``80``.
    """

    def __init__(self, image_codec: str = "png", quality: int = 80) -> None:
        self._image_codec = "." + image_codec
        self._quality = quality

    @property
    def image_codec(self) -> str:
        """``"png"`` or ``"jpeg"``."""
        return self._image_codec[1:]

    @property
    def quality(self) -> int:
        return self._quality

    def encode(self, unischema_field: Any, value: Any) -> bytearray:
        import cv2

        if unischema_field.numpy_dtype != value.dtype:
            raise ValueError(
                f"Unexpected type of {unischema_field.name} feature, expected "
                f"{unischema_field.numpy_dtype}, got {value.dtype}"
            )
        if not is_compliant_shape(value.shape, unischema_field.shape):
            raise ValueError(
                f"Unexpected dimensions of {unischema_field.name} feature, expected "
                f"{unischema_field.shape}, got {value.shape}"
            )
        if value.ndim == 2:
            image = value
        elif value.ndim == 3 and value.shape[2] == 3:
            image = value[:, :, (2, 1, 0)]  # RGB -> BGR, as OpenCV expects
        else:
            raise ValueError(
                f"Unexpected image dimensions. Supported dimensions are (H, W) or (H, W, 3). Got {value.shape}"
            )
        ok, contents = cv2.imencode(self._image_codec, image, [int(cv2.IMWRITE_JPEG_QUALITY), self._quality])
        if not ok:
            raise ValueError(f"OpenCV could not encode {unischema_field.name} as {self.image_codec}")
        return bytearray(contents)

    def decode(self, unischema_field: Any, value: Any) -> np.ndarray:
        import cv2

        image = cv2.imdecode(np.frombuffer(value, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise ValueError(f"field {unischema_field.name!r}: not a decodable {self.image_codec} image")
        if image.ndim == 2:
            return image
        if image.ndim == 3 and image.shape[2] == 3:
            return image[:, :, (2, 1, 0)]  # BGR -> RGB
        raise ValueError(
            f"Unexpected image dimensions. Supported dimensions are (H, W) or (H, W, 3). Got {image.shape}"
        )

    def __str__(self) -> str:
        return f"{type(self).__name__}('{self.image_codec}', {self._quality})"

    __repr__ = __str__


_INT_TYPES = ("ByteType", "ShortType", "IntegerType", "LongType")
_FLOAT_TYPES = ("FloatType", "DoubleType")


class ScalarCodec(DataframeColumnCodec):
    """Stores a scalar as itself, in the column type ``spark_type``.

    Args:
        spark_type: An instance of a ``pyspark.sql.types`` type, e.g. ``LongType()``.
    """

    def __init__(self, spark_type: Any) -> None:
        self._spark_type = spark_type

    @property
    def _spark_type(self) -> Any:
        """The Spark type (petastorm's attribute). A schema read while pyspark was not imported
        holds a stand-in (:mod:`pipeline.format.spark_types`): the real type is handed out in
        its place, the stand-in stays in the state that is pickled (to worker processes)."""
        return resolve_spark_type(self.__dict__.get("_spark_type"))

    @_spark_type.setter
    def _spark_type(self, value: Any) -> None:
        self.__dict__["_spark_type"] = value

    def _type_name(self) -> str:
        return type(self.__dict__.get("_spark_type")).__name__  # a stand-in has the real name

    def encode(self, unischema_field: Any, value: Any) -> Any:
        scalar_array = isinstance(value, np.ndarray) and value.shape == ()
        if not scalar_array and hasattr(value, "__len__") and not isinstance(value, str):
            raise TypeError(
                f"Expected a scalar as a value for field '{unischema_field.name}'. Got a non-numpy type "
                f"'{type(value)}'"
            )
        if unischema_field.shape:
            raise ValueError(
                f"The shape of field '{unischema_field.name}' must be () for a scalar, got "
                f"{unischema_field.shape}"
            )
        kind = self._type_name()
        if kind in _INT_TYPES:
            return int(value)
        if kind in _FLOAT_TYPES:
            return float(value)
        if kind == "BooleanType":
            return bool(value)
        if kind == "StringType":
            if not isinstance(value, str):
                raise ValueError(
                    f"Expected a string value for field {unischema_field.name}. Got type {type(value)}"
                )
            return str(value)
        return value

    def decode(self, unischema_field: Any, value: Any) -> Any:
        return unischema_field.numpy_dtype(value)

    def spark_dtype(self) -> Any:
        """The ``pyspark.sql.types`` type of the column."""
        return self._spark_type

    def __eq__(self, other: object) -> bool:
        """Same class name and the same Spark type (petastorm's ``ScalarCodec`` too)."""
        if type(other).__name__ != type(self).__name__ or not hasattr(other, "spark_dtype"):
            return False
        mine, theirs = self.spark_dtype(), other.spark_dtype()
        return type(mine) is type(theirs) and bool(mine == theirs)

    __hash__ = DataframeColumnCodec.__hash__

    def __str__(self) -> str:
        return f"{type(self).__name__}({self._type_name()}())"

    __repr__ = __str__

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._spark_type = complete_spark_type(self.__dict__.get("_spark_type"))
