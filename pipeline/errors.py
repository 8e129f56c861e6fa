"""Errors a user can cause and fix. The CLI prints these as one paragraph, without a traceback."""

from __future__ import annotations

__all__ = ["ConfigError", "DatasetError", "InputError", "PipelineError"]


class PipelineError(Exception):
    """Base class for errors caused by the user's input, configuration or environment.

    Args:
        message: What went wrong, naming the input at fault.
        hint: How to fix it; appended as ``HINT: ...``. Defaults to ``None``.
    """

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} -- HINT: {self.hint}"
        return self.message


class ConfigError(PipelineError, ValueError):
    """A configuration file, key or value is invalid."""


class DatasetError(PipelineError):
    """A path or URL is not a dataset this package can read."""


class InputError(PipelineError):
    """A raw input file (image, text, HDF5) is missing, unreadable or invalid."""
