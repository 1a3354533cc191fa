"""Work on a stream in worker processes, results in the stream's order."""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Callable, Iterable, Iterator, TypeVar

Chunk = TypeVar("Chunk")
Item = TypeVar("Item")
PARENT_CHECK_SECONDS = 0.5


def sized_chunks(items: Iterable[Item], size: Callable[[Item], int], at_least: int) -> Iterator[list[Item]]:
    """Consecutive items in lists whose sizes add up to `at_least` or more (the last list to what
    is left); an item is never split."""
    chunk, total = [], 0
    for item in items:
        chunk.append(item)
        total += size(item)
        if total >= at_least:
            yield chunk
            chunk, total = [], 0
    if chunk:
        yield chunk


def map_in_order(function: Callable, chunks: Iterable[Chunk], arguments: Callable[[Chunk], tuple], workers: int
                 ) -> Iterator[tuple[Chunk, object]]:
    """(chunk, function(*arguments(chunk))) for each chunk, in order, computed in a pool of `workers`
    spawned processes a few chunks ahead (so memory is a few chunks, not the stream)."""
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_exit_with_parent,
                             initargs=(os.getpid(),)) as pool:
        pending: deque = deque()
        for chunk in chunks:
            pending.append((chunk, pool.submit(function, *arguments(chunk))))
            if len(pending) > 2 * workers:
                chunk, future = pending.popleft()
                yield chunk, future.result()
        while pending:
            chunk, future = pending.popleft()
            yield chunk, future.result()


def _exit_with_parent(parent: int) -> None:
    """In a worker: exit once the process that started it is gone. A pool's workers otherwise
    outlive a parent that was killed (SIGKILL, say), waiting for work that never comes."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
