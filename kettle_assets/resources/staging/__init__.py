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

import dagster as dg
import pyarrow as pa
from pydantic import Field

from ..memory import use_jemalloc
from .bookkeeping import PublishBookkeeping
from .exports import Exports
from .files import JUNIT_SCHEMA, KNOWN_SCHEMA, LISTING_SCHEMA, METADATA_SCHEMA, StagedFiles

__all__ = ["JUNIT_SCHEMA", "KNOWN_SCHEMA", "LISTING_SCHEMA", "METADATA_SCHEMA", "StagingStore"]


class StagingStore(StagedFiles, Exports, PublishBookkeeping, dg.ConfigurableResource):
    """Staging Parquet and exports under one data folder (KETTLE_HOME)."""

    home: str = Field(description="Data folder: staging Parquet, the DuckDB file, exports.")

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        use_jemalloc()
