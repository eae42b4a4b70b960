"""Every exception of the store, in one place; the messages say what is wrong and what to do."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from ood_core.errors import OODError


class StoreError(OODError):
    """The store or a run in it cannot be used as asked; the message says why."""


class StoreNotFoundError(StoreError):
    """There is no store at that URL yet."""


class RunNotFoundError(StoreError):
    """No run with that id (or no complete run at all) in the store."""


class RunNotCompleteError(StoreError):
    """The run exists but is still "writing" or has "failed"."""


class StoreIntegrityError(StoreError):
    """A complete run's arrays differ from the checksums recorded when it completed; ``problems`` names them."""

    def __init__(self, store_url: str, run_id: str, problems: list[str]) -> None:
        super().__init__(f"{store_url}: run {run_id} is damaged:\n  " + "\n  ".join(problems))
        self.store_url = store_url
        self.run_id = run_id
        self.problems = list(problems)


class LeaseHolder(Protocol):
    """What an error says of a run's lease (``ood_core.store.lease.Lease``)."""

    @property
    def run_id(self) -> str:
        """The run it holds."""
        ...

    def describe(self) -> str:
        """Who holds it, for messages."""
        ...


class RunLeasedError(StoreError):
    """Another live writer holds the run (``holder``: its lease); one writer per run (:mod:`.lease`)."""

    def __init__(self, store_url: str, holder: LeaseHolder, hint: str) -> None:
        super().__init__(f"{store_url}: run {holder.run_id} is being written by {holder.describe()}; only one "
                         f"writer at a time: {hint}")
        self.store_url = store_url
        self.holder = holder
        self.hint = hint

    def __reduce__(self) -> tuple[type[RunLeasedError], tuple[str, LeaseHolder, str]]:
        return (type(self), (self.store_url, self.holder, self.hint))


class LeaseLostError(StoreError):
    """This process's lease of a run was taken over (not renewed in time): it must write no more."""


class StoreSchemaError(OODError):
    """The store breaks its contract; ``problems`` lists each violation."""

    def __init__(self, store_url: str, problems: list[str]) -> None:
        super().__init__(f"{store_url} breaks the store contract:\n  " + "\n  ".join(problems))
        self.store_url = store_url
        self.problems = list(problems)


class ExportExistsError(StoreError, FileExistsError):
    """The output folder already holds files of this export; nothing was written. ``existing``: their paths."""

    def __init__(self, outdir: str, existing: list[Path]) -> None:
        self.outdir = outdir
        self.existing = existing
        super().__init__(f"{outdir}: {len(existing)} file(s) of this export exist already (e.g. "
                         f"{existing[0].name}); pass overwrite=True to replace them")


class BackgroundWriteError(OODError):
    """Writing samples in the background failed; the cause is the original error. Nothing past the last
    commit was recorded, so the run can be resumed from its committed samples."""
