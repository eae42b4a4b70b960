"""An ordered three-stage pipeline over numbered items, as the sample stage uses it (issue 22).

Item k goes through ``prepare(k)``, then ``compute(k, prepared)``, then ``finish(k, computed)``. Run serially, that
is one item after another. Run pipelined, ``prepare`` runs ahead in threads of its own (``preparers`` of them taking
items in turn, at most ``depth`` items ahead), ``compute`` runs in the caller's thread (the one that drives the
network), and ``finish`` runs in one more thread, strictly in item order: while item k is computed, items k + 1 ...
are prepared and item k - 1 is finished.

- Same results: each stage sees the same arguments in both modes; only the overlap differs. Worker threads use the
  caller's torch thread count (float sums depend on it) and a copy of its context variables (logging, run context).
- Bounded memory: at most ``depth`` items wait between two stages (rounded up to a multiple of ``preparers``), one
  is in each thread, whatever the number of items.
- Errors stop the pipeline: an error of ``finish`` at item k leaves items after k unfinished; an error of
  ``prepare`` or ``compute`` at item k lets the items before k finish (as the serial order would have) and none
  after. The first error in item order is raised in the caller's thread.
- On CUDA, each preparing thread runs on a side stream of its own (its device work overlaps the caller's), and the
  caller's stream waits for it before the prepared item is used; ``adopt`` then marks the item's device tensors as
  used by the caller's stream, so that their memory is not handed back to the side stream too early.
"""

from __future__ import annotations

import contextvars
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, TypeVar

import torch

P = TypeVar("P")
C = TypeVar("C")

DEPTH = 2
"""Items waiting at most between two stages."""

_POLL_S = 0.05
"""How often a blocked stage looks whether the pipeline was stopped."""


@dataclass
class _Failed:
    """An error of a stage at one item, carried to the caller in item order."""

    index: int
    error: BaseException


_END = object()


def run_serial(indices: Sequence[int], prepare: Callable[[int], P], compute: Callable[[int, P], C],
               finish: Callable[[int, C], None]) -> None:
    """Each item through the three stages, one after another (the reference order)."""
    for index in indices:
        finish(index, compute(index, prepare(index)))


class _Lane(Generic[P]):
    """Where the ``prepare`` thread's device work goes: a side CUDA stream, or nothing on the CPU."""

    def __init__(self, device: torch.device, adopt: Callable[[P], None] | None) -> None:
        self.stream = (torch.cuda.Stream(device)  # type: ignore[no-untyped-call]  # torch.cuda.Stream is unannotated
                       if device.type == "cuda" else None)
        self.adopt = adopt

    def entered(self) -> Any:
        return torch.cuda.stream(self.stream) if self.stream is not None else nullcontext()

    def hand_over(self, item: P) -> P:
        """In the caller's thread: wait for the side stream's work on ``item``, then adopt its tensors."""
        if self.stream is not None:
            torch.cuda.current_stream(self.stream.device).wait_stream(self.stream)
            if self.adopt is not None:
                self.adopt(item)
        return item


def _put(target: queue.Queue[Any], item: Any, stop: threading.Event) -> bool:
    """Put ``item`` unless the pipeline stops first; whether it was put."""
    while not stop.is_set():
        try:
            target.put(item, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False


def _get(source: queue.Queue[Any], stop: threading.Event) -> Any:
    """The next item, or ``_END`` once the pipeline stops."""
    while not stop.is_set():
        try:
            return source.get(timeout=_POLL_S)
        except queue.Empty:
            continue
    return _END


@contextmanager
def _worker(name: str, target: Callable[[], None]) -> Iterator[threading.Thread]:
    """A started thread that runs ``target`` with the caller's torch threads and context; joined on exit."""
    threads, context = torch.get_num_threads(), contextvars.copy_context()

    def run() -> None:
        torch.set_num_threads(threads)
        context.run(target)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        thread.join()


def run_pipelined(indices: Sequence[int], prepare: Callable[[int], P], compute: Callable[[int, P], C],
                  finish: Callable[[int, C], None], *, device: torch.device, depth: int = DEPTH,
                  preparers: int = 1, adopt: Callable[[P], None] | None = None) -> None:
    """The three stages overlapped (module docstring); ``preparers`` threads prepare items in turn (thread t the
    items t, t + preparers, ...; the caller still takes them in order). Raises the first error in item order."""
    if depth < 1 or preparers < 1:
        raise ValueError(f"depth and preparers must be >= 1, got {depth} and {preparers}")
    halt = threading.Event()  # set by an error of ``finish``: every stage stops at once
    enough = threading.Event()  # set when the caller stops taking prepared items
    ahead: list[queue.Queue[Any]] = [queue.Queue(maxsize=-(-depth // preparers)) for _ in range(preparers)]
    behind: queue.Queue[Any] = queue.Queue(maxsize=depth)
    finish_errors: list[_Failed] = []
    lanes: list[_Lane[P]] = [_Lane(device, adopt) for _ in range(preparers)]

    def producer(turn: int) -> None:
        with lanes[turn].entered():
            for index in list(indices)[turn::preparers]:
                if enough.is_set():
                    return
                try:
                    item: Any = (index, prepare(index))
                except BaseException as error:  # carried to the caller, in order
                    item = _Failed(index, error)
                if not _put(ahead[turn], item, enough) or isinstance(item, _Failed):
                    return

    def consumer() -> None:
        while (item := _get(behind, halt)) is not _END:
            try:
                finish(*item)
            except BaseException as error:
                finish_errors.append(_Failed(item[0], error))
                halt.set()
                enough.set()
                return

    failed: _Failed | None = None
    with ExitStack() as workers:
        workers.enter_context(_worker("ood-pipeline-finish", consumer))
        for turn in range(preparers):
            workers.enter_context(_worker(f"ood-pipeline-prepare-{turn}", partial(producer, turn)))
        try:
            failed = _drive(indices, ahead, behind, halt, compute, lanes)
        finally:
            enough.set()  # a producer may be waiting to put an item nobody will take
            _put(behind, _END, halt)  # the items computed so far are finished first
    first = finish_errors[0] if finish_errors else failed
    if first is not None:
        raise first.error


def _drive(indices: Sequence[int], ahead: list[queue.Queue[Any]], behind: queue.Queue[Any], halt: threading.Event,
           compute: Callable[[int, Any], Any], lanes: list[_Lane[Any]]) -> _Failed | None:
    """The caller's part: compute each prepared item in order and pass it on; the error that stopped it, if any."""
    for position, index in enumerate(indices):
        turn = position % len(ahead)
        item = _get(ahead[turn], halt)
        if item is _END:
            return None  # stopped by an error of ``finish``, which the caller raises
        if isinstance(item, _Failed):
            return item
        try:
            computed = compute(index, lanes[turn].hand_over(item[1]))
        except BaseException as error:
            return _Failed(index, error)
        if not _put(behind, (index, computed), halt):
            return None
    return None
