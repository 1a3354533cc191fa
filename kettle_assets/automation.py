"""Jobs, schedules and sensors: the cycle `kettle sync` runs by hand, run by Dagster's daemon.

- `reconcile_buckets` (schedule): re-list and collect every bucket.
- `publish_affected_days` (sensor): after any bucket's `build_metadata`
  materializes, stage and publish the days it touched, one run per
  contiguous range of days (never a run per build).
- `refresh_windows_hourly` (schedule): rebuild `week` and `day` so they slide with time.
"""

from datetime import date, timedelta

import dagster as dg
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

COLLECT_SELECTION = dg.AssetSelection.assets("build_listing", "build_metadata")
DAILY_SELECTION = dg.AssetSelection.assets("junit_results", "build_rows", "build_all")
WINDOW_SELECTION = dg.AssetSelection.assets("build_week", "build_day")

collect_bucket_job = dg.define_asset_job(
    "collect_bucket", selection=COLLECT_SELECTION, description="List one bucket and fetch its new builds' metadata."
)
stage_and_publish_job = dg.define_asset_job(
    "stage_and_publish_days",
    selection=DAILY_SELECTION,
    description="JUnit results, staged rows and the `all` partition for a range of days.",
)
refresh_windows_job = dg.define_asset_job(
    "refresh_windows", selection=WINDOW_SELECTION, description="Replace `week` and `day` with the windows ending now."
)


def contiguous_ranges(days: list[str]) -> list[tuple[str, str]]:
    """Sorted days grouped into (first, last) runs of consecutive days."""
    ranges: list[tuple[str, str]] = []
    for d in sorted(set(days)):
        if ranges and date.fromisoformat(d) == date.fromisoformat(ranges[-1][1]) + timedelta(days=1):
            ranges[-1] = (ranges[-1][0], d)
        else:
            ranges.append((d, d))
    return ranges


def range_tags(start: str, end: str) -> dict[str, str]:
    return {ASSET_PARTITION_RANGE_START_TAG: start, ASSET_PARTITION_RANGE_END_TAG: end}


def make_automation(bucket_keys: list[str], days: dg.DailyPartitionsDefinition):
    @dg.schedule(
        name="reconcile_buckets",
        cron_schedule="*/30 * * * *",
        job=collect_bucket_job,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Re-list every bucket, so a lost notification costs latency, never data.",
    )
    def reconcile_buckets(context: dg.ScheduleEvaluationContext):
        stamp = context.scheduled_execution_time.isoformat()
        return [dg.RunRequest(run_key=f"{key}@{stamp}", partition_key=key) for key in bucket_keys]

    refresh_windows_hourly = dg.ScheduleDefinition(
        name="refresh_windows_hourly",
        cron_schedule="5 * * * *",
        job=refresh_windows_job,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Slide `week` and `day` forward even when nothing new arrived.",
    )

    @dg.sensor(
        name="publish_affected_days",
        jobs=[stage_and_publish_job, refresh_windows_job],
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Stage and publish the days each build_metadata materialization touched, then refresh the windows.",
    )
    def publish_affected_days(context: dg.SensorEvaluationContext):
        after = int(context.cursor) if context.cursor else None
        result = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("build_metadata"), after_storage_id=after),
            limit=200,
            ascending=True,
        )
        if not result.records:
            return dg.SkipReason("no new build_metadata materializations")
        touched: set[str] = set()
        for record in result.records:
            value = record.asset_materialization.metadata.get("affected_days")
            touched.update(getattr(value, "value", None) or [])
        valid = sorted(d for d in touched if days.has_partition_key(d))
        for skipped in sorted(touched - set(valid)):
            context.log.warning(f"builds finished on {skipped}, outside the day partitions; not published")
        last = result.records[-1].storage_id
        requests = [
            dg.RunRequest(run_key=f"days-{start}-{end}-{last}", job_name=stage_and_publish_job.name, tags=range_tags(start, end))
            for start, end in contiguous_ranges(valid)
        ]
        if requests:
            requests.append(dg.RunRequest(run_key=f"windows-{last}", job_name=refresh_windows_job.name))
        return dg.SensorResult(run_requests=requests, cursor=str(last))

    return [reconcile_buckets, refresh_windows_hourly], [publish_affected_days]
