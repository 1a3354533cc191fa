"""Work on a stream in worker processes, results in the stream's order."""

from __future__ import annotations

from collections import deque
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Callable, Iterable, Iterator, TypeVar

Chunk = TypeVar("Chunk")


def map_in_order(function: Callable, chunks: Iterable[Chunk], arguments: Callable[[Chunk], tuple], workers: int
                 ) -> Iterator[tuple[Chunk, object]]:
    """(chunk, function(*arguments(chunk))) for each chunk, in order, computed in a pool of `workers`
    spawned processes a few chunks ahead (so memory is a few chunks, not the stream)."""
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        pending: deque = deque()
        for chunk in chunks:
            pending.append((chunk, pool.submit(function, *arguments(chunk))))
            if len(pending) > 2 * workers:
                chunk, future = pending.popleft()
                yield chunk, future.result()
        while pending:
            chunk, future = pending.popleft()
            yield chunk, future.result()
