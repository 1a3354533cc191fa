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
from filelock import FileLock, Timeout

from .automation import (
    JOBS, METRICS_SELECTION, collect_bucket_job, contiguous_ranges, range_tags, refresh_failure_clusters_job,
    refresh_metrics_job, refresh_report_job, refresh_windows_job, stage_and_publish_job,
)
from .assets.alerts import alert_round
from .core import report_links
from .launcher import RUN_PID_TAG
from .assets.partitions import day_partitions
from .project import Settings, build_assets, build_checks, build_resources, first_partition_day
from .resources.warehouse import DuckDBWarehouse

LOG_INFO = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
# `kettle sync` without -v: its own one line per stage on stdout, Dagster's log only in the runs
ANSWERS_PENDING = "answers_pending"  # staging marker: rows published, metrics, clusters and report not yet redone
LOG_QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


@dataclass
class SyncSummary:
    buckets: dict[str, dict] = field(default_factory=dict)
    days: list[str] = field(default_factory=list)
    out_of_range_days: list[str] = field(default_factory=list)
    rows_loaded: int = 0
    windows: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, int] = field(default_factory=dict)
    clusters: int = 0
    alerts: dict[str, int] = field(default_factory=dict)
    report_pages: int = 0
    report_url: str | None = None
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
    """The run's numbers for one asset: each day partition reports its own, so counts are summed."""
    totals: dict = {}
    for mat in result.asset_materializations_for_node(asset):
        for k, v in mat.metadata.items():
            value = getattr(v, "value", v)
            if isinstance(value, int) and not isinstance(value, bool) and isinstance(totals.get(k, 0), int):
                totals[k] = totals.get(k, 0) + value
            else:
                totals[k] = value
    return totals


def _definitions(settings: Settings, resources: dict, days: dg.DailyPartitionsDefinition) -> dg.Definitions:
    """The code location's jobs over the current day partitions, so the sync's runs carry their names."""
    return dg.Definitions(
        assets=build_assets(settings, days), asset_checks=build_checks(), resources=resources,
        jobs=JOBS, executor=dg.in_process_executor,
    )


def first_step_error(result: dg.ExecuteInProcessResult) -> str:
    """The run's first error (a step's, or a resource's as it started), in one line."""
    for event in result.all_events:
        error = getattr(event.event_specific_data, "error", None)
        while error is not None and error.cause is not None and "DagsterExecution" in error.cls_name:
            error = error.cause
        if error is not None:
            lines = (error.message or "").strip().splitlines()
            where = event.step_key or "run"
            return f"{where}: {lines[0][:300] if lines else error.cls_name}"
    return "see the run's logs in Dagster"


def run_sync(
    settings: Settings,
    instance: dg.DagsterInstance | None = None,
    as_of: float | None = None,
    recheck_paths: list[str] | None = None,
    echo: Callable[[str], None] = print,
    verbose: bool = True,
    rebuild_warehouse: bool = False,
) -> SyncSummary:
    """One cycle; syncs of one home take turns (a second one waits, saying for whom), since
    two at once would race to create the home's Dagster instance and staging files."""
    home = Path(settings.home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    lock = FileLock(home / ".sync.lock")
    holder = home / ".sync.lock.holder"
    try:
        lock.acquire(timeout=0)
    except Timeout:
        try:
            who = holder.read_text().strip()
        except OSError:
            who = "another process"
        echo(f"kettle sync: waiting for the sync already running on {home} ({who}) to finish")
        lock.acquire()
    try:
        holder.write_text(f"pid {os.getpid()}, started {datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S} UTC\n")
        return _run_sync(settings, instance, as_of, recheck_paths, echo, rebuild_warehouse, verbose)
    finally:
        lock.release()


def alert_after_answers(resources: dict, settings: Settings, summary: SyncSummary, answers_redone: bool, as_of, echo) -> None:
    """Record the events the new answers show and post what is due (retries of earlier syncs too).
    Before the answers marker is cleared: a sync killed before its events were recorded finds
    them next time."""
    alerts = resources["alerts"]
    if not answers_redone and not alerts.targets():
        return
    echo("[alerts] jobs failing, new failure clusters, flakiness jumps" if answers_redone else "[alerts] retries due")
    try:
        result = alert_round(resources["warehouse"] if answers_redone else None, alerts, settings.artifact_url,
                             lambda line: echo(f"  {line}"), as_of=as_of)
    except Exception as exc:  # noqa: BLE001 - e.g. an unwritable outbox: the sync says so, the next one retries
        summary.failures.append(f"alerts: {type(exc).__name__}: {str(exc)[:300]}")
        echo(f"  !! alerts failed: {type(exc).__name__}: {str(exc)[:300]}")
        return
    summary.alerts = {"found": result.found or 0, "new": len(result.new), **result.delivery.metadata()}
    echo(f"  {result.summary()}" + ("" if alerts.targets() else " (no webhooks: KETTLE_ALERT_WEBHOOKS)"))


def _run_sync(settings, instance, as_of, recheck_paths, echo, rebuild_warehouse, verbose) -> SyncSummary:
    t0 = time.monotonic()
    log_config = LOG_INFO if verbose else LOG_QUIET
    summary = SyncSummary()
    resources = build_resources(settings)
    defs = _definitions(settings, resources, day_partitions(first_partition_day(settings)))
    instance = instance or get_instance(settings)
    buckets = resources["settings"].buckets

    def materialize(job: dg.UnresolvedAssetJobDefinition, what: str, **kwargs) -> dg.ExecuteInProcessResult:
        summary.runs += 1
        kwargs["tags"] = {**kwargs.get("tags", {}), RUN_PID_TAG: str(os.getpid())}  # see launcher.py
        result = defs.resolve_job_def(job.name).execute_in_process(
            instance=instance, raise_on_error=False, **kwargs
        )
        if not result.success:
            reason = first_step_error(result)
            summary.failures.append(f"{what}: run {result.run_id} failed: {reason}")
            echo(f"  !! {what} failed (run {result.run_id}): {reason}")
        return result

    affected: set[str] = set()
    for i, bucket in enumerate(buckets, 1):
        echo(f"[collect {i}/{len(buckets)}] {bucket.url}")
        run_config = {
            **log_config,
            "ops": {
                "build_listing": {"config": {"recheck_paths": list(recheck_paths or [])}},
                "build_metadata": {"config": {"as_of": as_of}},
            },
        }
        result = materialize(collect_bucket_job, f"collect {bucket.key}", partition_key=bucket.key, run_config=run_config)
        listing, meta = _metadata(result, "build_listing"), _metadata(result, "build_metadata")
        summary.buckets[bucket.key] = {**listing, **meta}
        affected.update(meta.get("affected_days") or [])
        echo(
            f"  {listing.get('candidates', 0)} candidates, {meta.get('new_finished', 0)} new finished, "
            f"{meta.get('updated', 0)} updated, {meta.get('unfinished', 0)} unfinished, {meta.get('given_up', 0)} given up"
        )

    # Day partitions start at the first staged day: what was just collected may have moved it.
    days = day_partitions(first_partition_day(settings))
    defs = _definitions(settings, resources, days)
    # Every day with unpublished changes: this cycle's, and any an earlier cycle failed to publish.
    pending = set(resources["staging"].dirty_days()) | affected
    if rebuild_warehouse:  # every staged day published again, e.g. into a new, empty warehouse
        staged = resources["staging"].row_days()
        echo(f"[rebuild] re-publishing {len(staged)} staged days into the warehouse")
        resources["staging"].forget_published()
        pending |= set(staged)
    valid = set()
    for day in sorted(pending):
        if days.has_partition_key(day):
            valid.add(day)
        else:
            summary.out_of_range_days.append(day)
            echo(f"  !! builds finished on {day}, outside the day partitions (KETTLE_START_DATE..tomorrow); staged, not published")
    summary.days = sorted(valid)
    staging = resources["staging"]
    if summary.days:  # set before publishing: a sync killed after it still refreshes the answers next time
        staging.write_marker(ANSWERS_PENDING, "yes")

    ranges = contiguous_ranges(summary.days)
    for i, (start, end) in enumerate(ranges, 1):
        label = start if start == end else f"{start}..{end}"
        echo(f"[stage+publish {i}/{len(ranges)}] {label}")
        result = materialize(stage_and_publish_job, f"days {label}", tags=range_tags(start, end), run_config=log_config)
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
        refresh_windows_job, "windows",
        run_config={**log_config, "ops": {"build_week": window_config, "build_day": window_config}},
    )
    for table in ("week", "day"):
        summary.windows[table] = _metadata(result, f"build_{table}").get("dagster/row_count", 0)
    # The answers are computed from `all`: with no row published since they last ran, they would
    # come out the same.
    export_dir = staging.export_dir
    answers_pending = staging.read_marker(ANSWERS_PENDING) == "yes"
    failures_before = len(summary.failures)
    if answers_pending or not (export_dir / "metrics").exists():
        echo("[metrics] flakes, build-stats, failures, job-health, presubmit-health, test flakiness")
        metric_keys = METRICS_SELECTION.resolve(defs.resolve_asset_graph())
        result = materialize(
            refresh_metrics_job, "metrics",
            run_config={**log_config, "ops": {k.path[-1]: window_config for k in metric_keys}},
        )
        for key in metric_keys:
            summary.metrics[key.path[-1]] = _metadata(result, key.path[-1]).get("dagster/row_count", 0)
    else:
        echo("[metrics] no new rows: unchanged")
    if not answers_pending and (export_dir / "triage").exists():
        echo("[clusters] no new rows: unchanged")
    else:
        echo("[clusters] failure clusters of the window")
        result = materialize(refresh_failure_clusters_job, "failure clusters", run_config=log_config)
        summary.clusters = _metadata(result, "failure_clusters").get("clusters", 0)
    report_index = Path(settings.home).resolve() / "report" / report_links.INDEX
    if not answers_pending and report_index.exists():
        echo("[report] no new rows: unchanged")
    elif isinstance(resources["warehouse"], DuckDBWarehouse):  # it reads the cluster tables too
        echo("[report] CI report")
        result = materialize(refresh_report_job, "report", run_config={**log_config, "ops": {"ci_report": window_config}})
        summary.report_pages = _metadata(result, "ci_report").get("pages", 0)
    else:
        echo("[report] skipped: the CI report reads the DuckDB warehouse only so far")
    if report_index.exists():
        summary.report_url = report_links.page_url(resources["settings"].report_url, report_links.INDEX)
    alert_after_answers(resources, settings, summary, answers_pending, as_of, echo)
    if answers_pending and len(summary.failures) == failures_before:
        staging.write_marker(ANSWERS_PENDING, "no")
    if settings.retention_days > 0:
        cutoff = datetime.fromtimestamp(as_of if as_of is not None else time.time(), tz=timezone.utc).date()
        cutoff -= timedelta(days=settings.retention_days)
        summary.pruned = staging.prune_before(cutoff.isoformat())
        echo(f"[retention] {len(summary.pruned)} staging files before {cutoff} pruned")
    summary.seconds = time.monotonic() - t0
    return summary
