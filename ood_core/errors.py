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
