"""Staging: the bounded Parquet files that replace Kettle's one huge SQLite file.

Layout under `<home>/staging/`:
  known/<bucket>.parquet          every build already collected (small: keys and day)
  listing/<bucket>.parquet        candidates of the last listing
  metadata/<day>/<bucket>.parquet started/finished of builds finished that UTC day
  junit/<day>.parquet             parsed tests per build of that day
  rows/<day>.parquet              contract rows of that day
  dirty/, pruned/, published/, markers/   what is published and what is not (bookkeeping.py)
and `<home>/export/` holds Kettle-format NDJSON (exports.py). Every write replaces its
file atomically, so a crashed run leaves the previous version, never half.
"""

from __future__ import annotations

import ctypes
import ctypes.util

import dagster as dg
import pyarrow as pa
from pydantic import Field

from .bookkeeping import PublishBookkeeping
from .exports import Exports
from .files import JUNIT_SCHEMA, KNOWN_SCHEMA, LISTING_SCHEMA, METADATA_SCHEMA, StagedFiles

__all__ = [
    "JUNIT_SCHEMA", "KNOWN_SCHEMA", "LISTING_SCHEMA", "METADATA_SCHEMA", "StagingStore", "return_freed_memory",
    "use_jemalloc",
]


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


def return_freed_memory() -> None:
    """Hand glibc's freed pages back to the system after a stage with many short-lived buffers
    (downloads, parse trees): glibc returns only the top of its heaps by itself, so what one stage
    freed would otherwise still count in the next stage's peak."""
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class StagingStore(StagedFiles, Exports, PublishBookkeeping, dg.ConfigurableResource):
    """Staging Parquet and exports under one data folder (KETTLE_HOME)."""

    home: str = Field(description="Data folder: staging Parquet, the DuckDB file, exports.")

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        use_jemalloc()
