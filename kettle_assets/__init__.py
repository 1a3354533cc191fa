"""Kettle as a Dagster code location."""

import os

# Arrow's C++ code that is not handed pyarrow's pool (the Parquet writer, for one) allocates from
# the pool this variable names when pyarrow loads; the staging resource sets pyarrow's pool to
# jemalloc (resources/memory.py). One allocator for both, not mimalloc's per-thread pages beside
# it (about 50 MB of a sync's peak). It only takes effect where the package loads before pyarrow,
# as in a run worker.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")
