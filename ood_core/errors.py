"""Exceptions of the science core. Bad input names the file and the reason."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class OODError(Exception):
    """Base class of all errors raised by ood_core."""


class ConfigurationError(OODError):
    """A parameter or model folder is unusable; the message says how to fix the call."""


class MixedUnitsError(ConfigurationError):
    """Inputs whose units ask for different resampling rules (summed and averaged blocks); raised at ingest,
    before anything is written. The message names the files, their units and the ``--resampling`` fix."""


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


class CorruptFitsError(InvalidInputError):
    """The file is complete but damaged: a corrupt header card, undecodable (e.g. tile-compressed) data or a
    failed DATASUM."""


class ImageTooLargeError(InvalidInputError):
    """The image (or the decompressed file) is larger than the reader's stated limit."""


class NoImageHDUError(InvalidInputError):
    """No HDU holds image data (or the requested HDU is not an image / does not exist)."""


class EmptyImageError(InvalidInputError):
    """The image has no usable content: zero size, all pixels invalid, or a constant value."""


class WrongDimensionError(InvalidInputError):
    """The data are not an image: 1-D, more than 3 non-degenerate axes, or a missing cube plane."""


class ImageTooSmallError(InvalidInputError):
    """The image is smaller than the size the run needs (model resolution or tile size)."""


@dataclass(frozen=True)
class QuarantinedInput:
    """An input that was set aside, with the reason a person reads and the error class name."""

    path: str
    reason: str
    error: str

    @classmethod
    def from_error(cls, error: InvalidInputError) -> QuarantinedInput:
        """The quarantine record of a validation error."""
        return cls(path=error.path, reason=error.reason, error=type(error).__name__)

    @classmethod
    def from_dict(cls, record: dict[str, str]) -> QuarantinedInput:
        """Inverse of :meth:`to_dict` (records cross process boundaries as dicts)."""
        return cls(path=str(record["path"]), reason=str(record["reason"]), error=str(record.get("error", "")))

    def to_dict(self) -> dict[str, str]:
        """JSON form, as stored in provenance."""
        return {"path": self.path, "reason": self.reason, "error": self.error}


class NoUsableInputError(OODError):
    """Too few inputs survived validation for the method; carries every set-aside file's reason.

    Raised before anything is written and before any network evaluation. ``usable`` is how many inputs were
    usable and ``needed`` how many the method needs (at least 1 file; the sampler needs 3 latents for its
    leave-one-out statistics).
    """

    def __init__(self, quarantined: Sequence[QuarantinedInput], usable: int = 0, needed: int = 1) -> None:
        lines = "\n".join(f"  {q.path}: {q.reason}" for q in quarantined) or "  (no input files matched)"
        if usable == 0:
            head = f"no usable input among {len(quarantined)} file(s)"
        else:
            head = (f"only {usable} usable input(s), the method needs at least {needed} (its screening derives its "
                    f"acceptance band from leave-one-out statistics of the inputs): add more images of the domain, "
                    f"or cut large images into tiles with --tile")
        super().__init__(f"{head}:\n{lines}")
        self.quarantined = list(quarantined)
        self.usable = usable
        self.needed = needed

    def __reduce__(self) -> tuple[type[NoUsableInputError], tuple[list[QuarantinedInput], int, int]]:
        # Keeps the constructor when pickled (Prefect and Dask move exceptions between processes).
        return (type(self), (self.quarantined, self.usable, self.needed))
