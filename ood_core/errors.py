"""Exceptions of the science core. Bad input names the file and the reason."""

from __future__ import annotations


class OODError(Exception):
    """Base class of all errors raised by ood_core."""


class ConfigurationError(OODError):
    """A parameter or model folder is unusable; the message says how to fix the call."""


class InvalidInputError(OODError):
    """An input file cannot be used; carries the path and a reason a person understands."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"

    def __reduce__(self) -> tuple[type[InvalidInputError], tuple[str, str]]:
        # Keeps the two-argument constructor when pickled (Prefect/Dask move exceptions between processes).
        return (type(self), (self.path, self.reason))


class MissingInputError(InvalidInputError):
    """The path does not exist or is not a regular file."""


class NotFitsError(InvalidInputError):
    """The file is empty or does not start like a FITS file."""


class TruncatedFitsError(InvalidInputError):
    """The file is shorter than its headers announce, or its structure cannot be parsed."""


class NoImageHDUError(InvalidInputError):
    """No HDU holds image data (or the requested HDU is not an image / does not exist)."""


class EmptyImageError(InvalidInputError):
    """The image has no usable content: zero size, all pixels invalid, or a constant value."""


class WrongDimensionError(InvalidInputError):
    """The data are not an image: 1-D, more than 3 non-degenerate axes, or a missing cube plane."""


class ImageTooSmallError(InvalidInputError):
    """The image is smaller than the size the run needs (model resolution or tile size)."""
