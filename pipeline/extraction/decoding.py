"""Decoders running ahead of the model: threads, or processes where threads would queue on the GIL.

Pillow releases the GIL while it decodes and resizes (about 2 ms of a Dogs
vs Cats photo's 2.3 ms on an AMD EPYC core), but opening the file, parsing
JPEG markers and EXIF, and handing the pixels over run in Python under it
(a few tenths of a millisecond): threads in one process cannot decode faster
than about 1 / that, a few thousand images per second, whatever the cores.
A GPU box that wants 2-4k img/s therefore decodes in processes. Each process
receives the listing once (its initializer) and then decodes whole batches,
so only batch indices go out and pixel arrays come back.

``decode`` = ``auto`` picks processes from :data:`PROCESS_DECODE_MIN` decode
workers on (only machines with that many cores get so many workers), threads
below: on a 2-core machine processes only add start-up and copies.

Decoder processes die with their parent: a ``kill -9`` of the command must not
leave them (and multiprocessing's resource tracker, which ends when they do)
running on. On Linux each asks the kernel for SIGKILL when its parent goes
(``prctl(PR_SET_PDEATHSIG)``); everywhere a daemon thread also watches the
parent's pid and exits when it changes (the fallback, and the check for a parent
that died before the ``prctl``).
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np

from pipeline.errors import ExecutorError
from pipeline.images import ImageSource

T = TypeVar("T")
Decoded = list[np.ndarray | str]
PROCESS_DECODE_MIN = 4
DECODE_MODES = ("auto", "threads", "processes")


def uses_processes(mode: str, workers: int) -> bool:
    """Whether ``workers`` decoders run as processes under ``mode`` (``auto``, ``threads``, ``processes``).

    >>> uses_processes("auto", 2), uses_processes("auto", 15), uses_processes("processes", 2)
    (False, True, True)
    """
    if mode not in DECODE_MODES:
        raise ValueError(f"unknown decode mode {mode!r}; expected one of {', '.join(DECODE_MODES)}")
    return mode == "processes" or (mode == "auto" and workers >= PROCESS_DECODE_MIN)


def read_batches(pool: Executor, batches: Iterable[Sequence[T]], decode: Callable[[T], np.ndarray | str],
                 ahead: int = 3) -> Iterator[Decoded]:
    """Decode batches of items in ``pool``, ``ahead`` batches in advance; yield them in order.

    ``decode`` gives pixels or the reason an item is skipped, and never raises
    for a bad file (:meth:`ImageSource.decode`, :func:`pipeline.images.try_decode`).
    """
    return _in_order(batches, lambda files: [pool.submit(decode, f) for f in files],
                     lambda futures: [f.result() for f in futures], ahead)


def _in_order(batches: Iterable[Any], submit_one: Callable[[Any], Any], collect: Callable[[Any], Decoded],
              ahead: int) -> Iterator[Decoded]:
    source = iter(batches)
    pending: deque[Any] = deque()

    def submit() -> None:
        batch = next(source, None)
        if batch is not None:
            pending.append(submit_one(batch))

    try:
        for _ in range(ahead):
            submit()
        while pending:
            handle = pending.popleft()
            submit()
            yield collect(handle)
    finally:
        for handle in pending:
            for f in handle if isinstance(handle, list) else [handle]:
                f.cancel()


_SOURCE: ImageSource | None = None
_SIZE: tuple[int, int] = (0, 0)


PR_SET_PDEATHSIG = 1  # linux/prctl.h
PARENT_POLL_S = 0.5


def die_with_parent(parent: int) -> None:
    """End this process when ``parent`` (the pid that started it) dies, however it dies.

    Linux: the kernel sends SIGKILL when the parent goes (strictly: when the parent's thread that
    started this process ends; the pool is made and used by one thread). Everywhere: a daemon thread
    polls the parent pid (a child is re-parented when its parent dies) and exits at once.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # no libc prctl: the watch below still holds
            pass
    if os.getppid() != parent:  # the parent died before the prctl took hold
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent,), name="watch-parent", daemon=True).start()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    os._exit(1)


def _start_decoder(source: ImageSource, size: tuple[int, int], parent: int | None = None) -> None:
    global _SOURCE, _SIZE
    if parent is not None:
        die_with_parent(parent)
    _SOURCE, _SIZE = source, size


def _decode_batch(items: list[int]) -> Decoded:
    assert _SOURCE is not None, "decoder process not initialised"
    return [_SOURCE.decode(i, _SIZE) for i in items]


def _result(future: Future) -> Decoded:
    try:
        return future.result()
    except BrokenProcessPool:
        raise ExecutorError("a decode process died (killed, or out of memory?); finished shards are kept: "
                            "rerun the same command to continue, with --decode threads if it happens again") from None


@contextmanager
def decoded_batches(source: ImageSource, batches: Iterable[list[int]], size: tuple[int, int], workers: int,
                    processes: bool) -> Iterator[Iterator[Decoded]]:
    """Pixels (or skip reasons) of ``source``'s items, batch by batch in order, decoded ahead by ``workers``."""
    if not processes:
        with ThreadPoolExecutor(workers) as threads:
            yield read_batches(threads, batches, lambda i: source.decode(i, size))
        return
    # spawn, not fork: the parent runs TensorFlow's threads, and forking a threaded process can deadlock
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_decoder,
                             initargs=(source, size, os.getpid())) as pool:
        yield _in_order(batches, lambda items: pool.submit(_decode_batch, items), _result, ahead=2 * workers)
