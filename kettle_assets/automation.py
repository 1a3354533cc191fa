"""Jobs, schedules and sensors: the cycle `kettle sync` runs by hand, run by Dagster's daemon.

- `stream_finished_builds` (sensor): GCS notifications of new finished.json (Pub/Sub, or the
  local folder watcher) become one `build_metadata` run per bucket naming its new builds
  (Kettle's stream.py); `publish_affected_days` then publishes their days like any others.
- `reconcile_buckets` (schedule): re-list and collect every bucket, so a lost notification
  costs latency, never data.
- `publish_affected_days` (sensor): after any bucket's `build_metadata` materializes, stage
  and publish the days it touched and that are still unpublished, one run per contiguous range
  of days (never a run per build); it also re-requests days left unpublished by a failed run.
  Its first tick starts after the latest existing collection.
- `refresh_windows_hourly` (schedule): rebuild `week` and `day` so they slide with time.
- `close_yesterday` (schedule): redo yesterday's partition once it is complete.
- `refresh_metrics_on_new_rows` (automation condition sensor): `test_results` and the metrics
  follow `all` eagerly: a day published (by any run) recomputes them once; the CI report
  (`ci_report`) follows the metrics and the failure clusters the same way.
"""

import hashlib
import json
import time
from collections import defaultdict
from datetime import date, timedelta

import dagster as dg

from .core.collect import finished_day
from .core.stream import finished_build
from .resources.artifacts import ArtifactStore
from .resources.notifications import NotificationSource
from .resources.settings import KettleSettings
from .resources.staging import StagingStore
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

COLLECT_SELECTION = dg.AssetSelection.assets("build_listing", "build_metadata")
DAILY_SELECTION = dg.AssetSelection.assets("junit_results", "build_rows", "build_all", "test_results")
WINDOW_SELECTION = dg.AssetSelection.assets("build_week", "build_day")
METRICS_SELECTION = dg.AssetSelection.groups("metrics")
REPORT_SELECTION = dg.AssetSelection.assets("ci_report")

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
stream_job = dg.define_asset_job(
    "stream_builds",
    selection=dg.AssetSelection.assets("build_metadata"),
    description="Fetch the metadata of the builds named in run config (one bucket partition per run).",
)
refresh_metrics_job = dg.define_asset_job(
    "refresh_metrics", selection=METRICS_SELECTION,
    description="The flake and health metrics and per-test flakiness over their windows.",
)
refresh_failure_clusters_job = dg.define_asset_job(
    "refresh_failure_clusters", selection=dg.AssetSelection.assets("failure_clusters"),
    description="Triage's failure clusters of the window (incremental).",
)
refresh_report_job = dg.define_asset_job(
    "refresh_report", selection=REPORT_SELECTION,
    description="The static CI report from the metrics and failure clusters.",
)
# every job of the code location; `kettle sync` runs the same ones by name
JOBS = [
    collect_bucket_job, stage_and_publish_job, refresh_windows_job, stream_job, refresh_metrics_job,
    refresh_failure_clusters_job, refresh_report_job,
]
UNPUBLISHED_GRACE_SECONDS = 600  # a dirty day older than this, with no run fixing it, is requested again
# Run priorities (the run queue takes higher first): a streamed build never waits behind a backfill.
STREAM_PRIORITY = {"dagster/priority": "10"}
PUBLISH_PRIORITY = {"dagster/priority": "5"}
# Runs collecting one bucket carry its key: dagster.yaml lets one such run at a time per bucket
# (they rewrite the bucket's known index), while different buckets run side by side.
BUCKET_TAG = "kettle/bucket"


def stream_run_config(paths: list[str]) -> dict:
    return {"ops": {"build_metadata": {"config": {"builds": sorted(paths)}}}}


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


@dg.schedule(
    name="reconcile_buckets",
    cron_schedule="*/30 * * * *",
    job=collect_bucket_job,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Re-list every bucket, so a lost notification costs latency, never data.",
)
def reconcile_buckets(context: dg.ScheduleEvaluationContext, settings: KettleSettings):
    stamp = context.scheduled_execution_time.isoformat()
    return [
        dg.RunRequest(run_key=f"{key}@{stamp}", partition_key=key, tags={BUCKET_TAG: key})
        for key in settings.buckets.keys
    ]

refresh_windows_hourly = dg.ScheduleDefinition(
    name="refresh_windows_hourly",
    cron_schedule="5 * * * *",
    job=refresh_windows_job,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Slide `week` and `day` forward even when nothing new arrived.",
)

@dg.schedule(
    name="close_yesterday",
    cron_schedule="30 0 * * *",
    execution_timezone="UTC",
    job=stage_and_publish_job,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Redo yesterday's day partition once every build of it has finished.",
)
def close_yesterday(context: dg.ScheduleEvaluationContext):
    day = (context.scheduled_execution_time.date() - timedelta(days=1)).isoformat()
    return dg.RunRequest(run_key=f"close-{day}", partition_key=day)

@dg.sensor(
    name="stream_finished_builds",
    job=stream_job,
    minimum_interval_seconds=15,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Pub/Sub (or folder) notifications of finished.json -> build_metadata runs naming the new builds.",
)
def stream_finished_builds(
    context: dg.SensorEvaluationContext, notifications: NotificationSource,
    artifacts: ArtifactStore, settings: KettleSettings,
):
    cursor = json.loads(context.cursor) if context.cursor else {}
    # The run requests of the last tick were recorded with the cursor that holds these ids:
    # only now is it safe to acknowledge them. A tick that died before that never got here.
    notifications.ack(cursor.get("ack", []))
    messages = notifications.pull()
    irrelevant, retry, keep = [], [], []
    unreadable: dict[str, list[str]] = defaultdict(list)  # bucket key -> builds whose finished.json failed
    by_bucket: dict[str, set[str]] = defaultdict(set)
    now = time.time()
    for note in messages:
        build, why = finished_build(note, settings.buckets)
        if build is None:
            irrelevant.append(note.ack_id)
            continue
        day = finished_day(artifacts, build.path, now)
        if day is None:
            context.log.warning(f"{build.path}/finished.json cannot be read; it will come back")
            retry.append(note.ack_id)
            unreadable[build.bucket_key].append(build.path)
            continue
        by_bucket[build.bucket_key].add(build.path)
        keep.append(note.ack_id)
    notifications.ack(irrelevant)
    notifications.nack(retry)
    requests = []
    for bucket_key, paths in sorted(by_bucket.items()):
        key = hashlib.sha1("\n".join(sorted(paths)).encode() + str(now).encode()).hexdigest()[:16]
        requests.append(
            dg.RunRequest(
                run_key=f"stream-{bucket_key}-{key}", partition_key=bucket_key,
                run_config=stream_run_config(list(paths)), tags={**STREAM_PRIORITY, BUCKET_TAG: bucket_key},
            )
        )
    context.log.info(
        f"{len(messages)} notifications: {len(keep)} finished builds in {len(requests)} runs, "
        f"{len(irrelevant)} irrelevant, {len(retry)} to retry"
    )
    # Counted where the UI shows it: an observation of the bucket's build_metadata partition.
    problems = [
        dg.AssetObservation(
            asset_key="build_metadata", partition=key,
            metadata={"stream_unreadable_finished_json": len(paths), "builds": dg.MetadataValue.json(sorted(paths)[:50])},
        )
        for key, paths in sorted(unreadable.items())
    ]
    return dg.SensorResult(run_requests=requests, cursor=json.dumps({"ack": keep}), asset_events=problems)

refresh_metrics = dg.AutomationConditionSensorDefinition(
    "refresh_metrics_on_new_rows",
    target=METRICS_SELECTION | dg.AssetSelection.assets("test_results") | REPORT_SELECTION,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Recompute test_results and the metrics after new rows are published, then the CI report.",
)

@dg.sensor(
    jobs=[stage_and_publish_job, refresh_windows_job],
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Stage and publish the days each build_metadata materialization touched, then refresh the windows.",
)
def publish_affected_days(context: dg.SensorEvaluationContext, staging: StagingStore):
    # The code location's day partitions, as bound to its home (first staged day onwards).
    days = context.repository_def.assets_defs_by_key[dg.AssetKey("build_all")].partitions_def
    return affected_days_requests(context, staging, days)


def affected_days_requests(
    context: dg.SensorEvaluationContext, staging: StagingStore, days: dg.PartitionsDefinition
) -> dg.SensorResult:
    """The publish sensor's tick: run requests for the days to stage and publish, and the cursor."""
    dirty = staging.dirty_days()
    now = time.time()
    if context.cursor:
        after = int(context.cursor)
        records = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("build_metadata"), after_storage_id=after),
            limit=200,
            ascending=True,
        ).records
        last = records[-1].storage_id if records else after
    else:
        # A first tick starts after the latest collection rather than replaying the history.
        records = context.instance.fetch_materializations(
            dg.AssetKey("build_metadata"), limit=1, ascending=False
        ).records
        last = records[0].storage_id if records else 0
    # After a new collection (or on a first tick), every day with unpublished changes: the days
    # it touched, and any a collection left unpublished, e.g. one killed after staging its builds
    # and before its materialization, whose retry then finds nothing new. A touched day that is
    # clean again was published whole since (e.g. by `kettle sync`) and is not asked for.
    touched = set(dirty) if records or not context.cursor else set()
    # Days whose changes were never published (a failed or killed run): ask again, hourly.
    hour = int(now // 3600)
    stale = [d for d, marked in dirty.items() if now - marked > UNPUBLISHED_GRACE_SECONDS]
    valid = sorted(d for d in touched | set(stale) if days.has_partition_key(d))
    for skipped in sorted(touched - set(valid)):
        context.log.warning(f"builds finished on {skipped}, outside the day partitions; not published")
    cursor = str(last)
    if not valid:
        return dg.SensorResult(skip_reason="no days to publish", cursor=cursor)
    tag = f"{last}" if touched else f"retry-{hour}"
    requests = [
        dg.RunRequest(
            run_key=f"days-{start}-{end}-{tag}", job_name=stage_and_publish_job.name,
            tags={**range_tags(start, end), **PUBLISH_PRIORITY},
        )
        for start, end in contiguous_ranges(valid)
    ]
    requests.append(dg.RunRequest(run_key=f"windows-{tag}", job_name=refresh_windows_job.name, tags=PUBLISH_PRIORITY))
    return dg.SensorResult(run_requests=requests, cursor=cursor)


SCHEDULES = [reconcile_buckets, refresh_windows_hourly, close_yesterday]
SENSORS = [stream_finished_builds, refresh_metrics, publish_affected_days]
