"""One full cycle through Dagster, in process: list and collect every bucket,
stage and publish every affected day, refresh the windows.

Runs are batched: one run per bucket, one run per contiguous range of affected
days (assets loop over the range), one run for the windows. Never a run per build.
"""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta, timezone
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import dagster as dg
from dagster._core.instance.ref import InstanceRef

from .automation import (
    COLLECT_SELECTION, DAILY_SELECTION, METRICS_SELECTION, WINDOW_SELECTION, contiguous_ranges, range_tags,
)
from .project import Settings, build_assets, build_checks, build_resources

LOG_INFO = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


@dataclass
class SyncSummary:
    buckets: dict[str, dict] = field(default_factory=dict)
    days: list[str] = field(default_factory=list)
    out_of_range_days: list[str] = field(default_factory=list)
    rows_loaded: int = 0
    windows: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    runs: int = 0
    pruned: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def get_instance(settings: Settings) -> dg.DagsterInstance:
    """DAGSTER_HOME's instance when set (so `dagster dev` shows these runs), else one under KETTLE_HOME."""
    if os.environ.get("DAGSTER_HOME"):
        return dg.DagsterInstance.get()
    base = Path(settings.home).resolve() / "dagster"
    base.mkdir(parents=True, exist_ok=True)
    return dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(base)))


def _metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    mats = result.asset_materializations_for_node(asset)
    if not mats:
        return {}
    return {k: getattr(v, "value", v) for k, v in mats[-1].metadata.items()}


def run_sync(
    settings: Settings,
    instance: dg.DagsterInstance | None = None,
    as_of: float | None = None,
    recheck_paths: list[str] | None = None,
    echo: Callable[[str], None] = print,
) -> SyncSummary:
    t0 = time.monotonic()
    summary = SyncSummary()
    assets = [*build_assets(settings), *build_checks()]
    resources = build_resources(settings)
    instance = instance or get_instance(settings)
    buckets = resources["settings"].buckets
    day_partitions = next(a for a in assets if a.key.path == ["build_rows"]).partitions_def

    def materialize(selection, what: str, **kwargs) -> dg.ExecuteInProcessResult:
        summary.runs += 1
        result = dg.materialize(
            assets, selection=selection, resources=resources, instance=instance, raise_on_error=False, **kwargs
        )
        if not result.success:
            summary.failures.append(f"{what}: run {result.run_id} failed")
            echo(f"  !! {what} failed (run {result.run_id}); see the run's logs in Dagster")
        return result

    affected: set[str] = set()
    for i, bucket in enumerate(buckets, 1):
        echo(f"[collect {i}/{len(buckets)}] {bucket.url}")
        run_config = {
            **LOG_INFO,
            "ops": {
                "build_listing": {"config": {"recheck_paths": list(recheck_paths or [])}},
                "build_metadata": {"config": {"as_of": as_of}},
            },
        }
        result = materialize(COLLECT_SELECTION, f"collect {bucket.key}", partition_key=bucket.key, run_config=run_config)
        listing, meta = _metadata(result, "build_listing"), _metadata(result, "build_metadata")
        summary.buckets[bucket.key] = {**listing, **meta}
        affected.update(meta.get("affected_days") or [])
        echo(
            f"  {listing.get('candidates', 0)} candidates, {meta.get('new_finished', 0)} new finished, "
            f"{meta.get('updated', 0)} updated, {meta.get('unfinished', 0)} unfinished, {meta.get('given_up', 0)} given up"
        )

    # Every day with unpublished changes: this cycle's, and any an earlier cycle failed to publish.
    pending = set(resources["staging"].dirty_days()) | affected
    valid = set()
    for day in sorted(pending):
        if day_partitions.has_partition_key(day):
            valid.add(day)
        else:
            summary.out_of_range_days.append(day)
            echo(f"  !! builds finished on {day}, outside the day partitions (KETTLE_START_DATE..tomorrow); staged, not published")
    summary.days = sorted(valid)

    ranges = contiguous_ranges(summary.days)
    for i, (start, end) in enumerate(ranges, 1):
        label = start if start == end else f"{start}..{end}"
        echo(f"[stage+publish {i}/{len(ranges)}] {label}")
        result = materialize(DAILY_SELECTION, f"days {label}", tags=range_tags(start, end), run_config=LOG_INFO)
        loaded = _metadata(result, "build_all").get("rows_loaded", 0)
        summary.rows_loaded += loaded
        junit = _metadata(result, "junit_results")
        echo(
            f"  {junit.get('fetched', 0)} builds' JUnit fetched ({junit.get('junit_files', 0)} files, "
            f"{junit.get('junit_malformed', 0)} malformed), {loaded} rows published"
        )

    echo("[windows] week, day")
    window_config = {"config": {"as_of": as_of}} if as_of is not None else {}
    result = materialize(
        WINDOW_SELECTION, "windows",
        run_config={**LOG_INFO, "ops": {"build_week": window_config, "build_day": window_config}},
    )
    for table in ("week", "day"):
        summary.windows[table] = _metadata(result, f"build_{table}").get("dagster/row_count", 0)
    echo("[metrics] flakes, build-stats, failures, job-health, presubmit-health, test flakiness")
    metric_keys = METRICS_SELECTION.resolve(assets)
    result = materialize(
        METRICS_SELECTION, "metrics",
        run_config={**LOG_INFO, "ops": {k.path[-1]: window_config for k in metric_keys}},
    )
    for key in metric_keys:
        summary.metrics[key.path[-1]] = _metadata(result, key.path[-1]).get("dagster/row_count", 0)
    if settings.retention_days > 0:
        cutoff = datetime.fromtimestamp(as_of if as_of is not None else time.time(), tz=timezone.utc).date()
        cutoff -= timedelta(days=settings.retention_days)
        summary.pruned = resources["staging"].prune_before(cutoff.isoformat())
        echo(f"[retention] {len(summary.pruned)} staging files before {cutoff} pruned")
    summary.seconds = time.monotonic() - t0
    return summary
