"""How a run process uses memory: Arrow's allocator and glibc's arenas and freed pages.

Measured in bench/gcs_path.py and bench/run.py (docs/performance.md). The package sets
ARROW_DEFAULT_MEMORY_POOL in `kettle_assets/__init__.py`, which must run before pyarrow loads.
"""

from __future__ import annotations

import ctypes
import functools
import os

import pyarrow as pa

MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # glibc's mallopt parameter number


@functools.cache
def _libc() -> ctypes.CDLL:
    """The C library already loaded into the process (no search, no subprocess)."""
    return ctypes.CDLL(None)


def use_jemalloc() -> None:
    """Arrow's default allocator (mimalloc) keeps freed memory per thread; jemalloc hands it
    back, at once with no decay delay, which keeps a sync's peak memory close to the one day it
    works on. Arrow's C++ code that is not handed this pool (the Parquet writer, for one) takes
    its own from ARROW_DEFAULT_MEMORY_POOL, which the package sets to the same allocator."""
    try:
        pa.jemalloc_set_decay_ms(0)
        pa.set_memory_pool(pa.jemalloc_memory_pool())
    except (NotImplementedError, AttributeError):  # a pyarrow built without jemalloc
        pa.set_memory_pool(pa.system_memory_pool())


def limit_malloc_arenas() -> None:
    """glibc gives threads up to 8 malloc arenas per CPU, and memory freed in one is not reused by
    the others: with 64 download threads holding files, junit_results peaked at 360 MB with
    glibc's default and at 283 MB with two arenas (bench/gcs_path.py, 860 builds). A local
    folder's 16 threads read faster with the default (junit_results 12% faster on a 5,000-build
    tree), so only the GCS store sets the limit. MALLOC_ARENA_MAX wins."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return
    try:
        _libc().mallopt(_M_ARENA_MAX, MALLOC_ARENAS)
    except (OSError, AttributeError):  # not glibc: its own allocator, nothing to bound
        pass


def return_freed_memory() -> None:
    """Hand glibc's freed pages back to the system after a stage with many short-lived buffers
    (downloads, parse trees): glibc returns only the top of its heaps by itself, so what one stage
    freed would otherwise still count in the next stage's peak."""
    try:
        _libc().malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
