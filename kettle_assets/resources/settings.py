"""Run-wide settings: which buckets, how many fetch threads, file limits."""

from __future__ import annotations

import os
from functools import cached_property

import dagster as dg
from pydantic import Field

from ..core.config import BucketSet, load_buckets

# gcsweb serves a bucket's folders as browsable pages; Prow's spyglass would be
# https://prow.k8s.io/view/gs/{bucket}/{path}
DEFAULT_ARTIFACT_URL = "https://gcsweb.k8s.io/gcs/{bucket}/{path}/"


class KettleSettings(dg.ConfigurableResource):
    """Settings every stage shares; `buckets_file` is Kettle's buckets.yaml. Their defaults
    are `project.Settings`'s, which builds this resource."""

    buckets_file: str = Field(description="Path to buckets.yaml.")
    fetch_threads: int = Field(description="Bounded thread pool for artifact fetches.")
    parse_threads: int = Field(
        default=0, description="JUnit files parsed at once (a parsed file is many times its size); 0: one per CPU."
    )
    max_junit_file_bytes: int = Field(
        default=256 * 1024 * 1024, description="JUnit files larger than this are skipped and counted."
    )

    max_row_bytes: int = Field(description="Rows larger than this (BigQuery's limit) are trimmed, never dropped.")

    artifact_url: str = Field(
        description="Where a build's artifacts are browsed; {bucket} and {path} are filled from its gs:// path.",
    )

    report_url: str = Field(
        default="",
        description="Public address of the CI report's folder (KETTLE_REPORT_URL); empty: the folder as a file:// URL.",
    )

    @property
    def parse_slots(self) -> int:
        return self.parse_threads or os.cpu_count() or 2

    @cached_property
    def buckets(self) -> BucketSet:
        return load_buckets(self.buckets_file)
