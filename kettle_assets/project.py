"""Builds the code location (assets, resources, jobs) from settings or the environment.

`Settings` holds every setting and its default; `Settings.from_env` reads the KETTLE_*
variables over them (the README's configuration table describes each), and `build_resources`
is the one place that turns them into resources (local folder and DuckDB, or GCS and BigQuery).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
from dagster_duckdb import DuckDBResource

from .automation import JOBS, SCHEDULES, SENSORS
from .assets.alerts import alert_on_new_failures
from .assets.collection import build_listing, build_metadata
from .assets.checks import make_build_checks, make_contract_checks
from .assets.build_all import build_all
from .assets.build_rows import build_rows
from .assets.junit_results import junit_results
from .assets.partitions import EARLIEST_START_DATE, bind_partitions, bucket_partitions, day_partitions
from .assets.links import DEFAULT_ARTIFACT_URL, bucket_owners, with_owners_and_schema
from .assets.failure_clusters import failure_clusters, failure_clusters_automation
from .assets.metrics import METRIC_ASSETS
from .assets.report import ci_report
from .assets.test_results import test_results
from .assets.windows import build_day, build_week
from .core.alerts import AlertRules
from .core.config import load_buckets
from .resources.artifacts import LocalArtifactStore
from .resources.gcs import GCSArtifactStore
from .resources.bigquery import BigQueryWarehouse, KettleBigQueryResource
from .resources.notifications import LocalFolderNotificationSource, PubSubNotificationSource
from .resources.settings import KettleSettings
from .resources.staging import StagingStore
from .resources.warehouse import DuckDBWarehouse
from .resources.webhooks import AlertWebhooks, parse_webhooks

DAYS_WITHOUT_DATA = 14  # an empty home's partitions: the last two weeks


@dataclass(frozen=True)
class Settings:
    """Every setting and its default, in one place: the environment (`from_env`) and `kettle`'s
    flags only override these, and the resources are built from them (`build_resources`)."""

    buckets_file: str = "buckets.yaml"
    storage_root: str | None = None
    home: str = ".kettle"
    start_date: str | None = None  # None: discovered from staging (first_partition_day)
    fetch_threads: int = 16  # from_env: 64 for gcp, whose requests wait on the network
    parse_threads: int = 0  # JUnit files parsed at once; 0: one per CPU
    env: str = "local"
    gcs_timeout: float = 10.0
    gcs_connections: int = 64
    gcs_deadline: float = 120.0
    bq_project: str | None = None
    bq_dataset: str = "build"
    bq_location: str | None = None
    bq_endpoint: str | None = None
    bq_deadline: float = 180.0
    pubsub_subscription: str | None = None
    alert_webhooks: str = ""  # slack:<url> or json:<url>, comma-separated
    alert_rules: str = ""  # name=value,... over AlertRules' defaults
    warehouse: str | None = None  # duckdb or bigquery; None: the env's own (see warehouse_kind)
    retention_days: int = 0  # staging days older than this are pruned after a sync; 0 keeps all
    max_row_bytes: int = 100 * 1024 * 1024
    artifact_url: str = DEFAULT_ARTIFACT_URL
    report_url: str | None = None  # None: $KETTLE_HOME/report as a file:// URL

    @property
    def warehouse_kind(self) -> str:
        """duckdb or bigquery: KETTLE_WAREHOUSE, else the environment's own."""
        return self.warehouse or ("duckdb" if self.env == "local" else "bigquery")

    @classmethod
    def from_env(cls, **overrides) -> "Settings":
        """Settings from KETTLE_* variables (flags in `overrides` win); a bad value raises
        SettingError naming the variable."""
        values = {}
        for name, (variable, parse) in _VARIABLES.items():
            raw = os.environ.get(variable)
            if raw:
                values[name] = parse(variable, raw)
        if overrides.get("fetch_threads") is not None:
            overrides["fetch_threads"] = _number("--threads", str(overrides["fetch_threads"]), int, 1, 512)
        values.update({k: v for k, v in overrides.items() if v is not None})
        values.setdefault("env", "local" if values.get("storage_root") else "gcp")
        artifact_url = values.get("artifact_url", cls.artifact_url)
        try:
            artifact_url.format(bucket="bucket", path="path")
        except (KeyError, IndexError, ValueError):
            raise SettingError(
                f"KETTLE_ARTIFACT_URL may only use {{bucket}} and {{path}}, not {artifact_url[:200]!r}"
            ) from None
        if values.get("report_url") and not re.match(r"(https?|file)://", values["report_url"]):
            raise SettingError(
                f"KETTLE_REPORT_URL must be an http(s):// or file:// address, not {values['report_url'][:200]!r}"
            )
        if values["env"] not in ("local", "gcp"):
            raise SettingError(f"KETTLE_ENV must be local or gcp, not {values['env'][:100]!r}")
        if values.get("warehouse") not in (None, "duckdb", "bigquery"):
            raise SettingError(f"KETTLE_WAREHOUSE must be duckdb or bigquery, not {values['warehouse'][:100]!r}")
        try:
            parse_webhooks(values.get("alert_webhooks", cls.alert_webhooks))
        except ValueError as exc:
            raise SettingError(f"KETTLE_ALERT_WEBHOOKS: {exc}") from None
        try:
            AlertRules.parse(values.get("alert_rules", cls.alert_rules))
        except ValueError as exc:
            raise SettingError(f"KETTLE_ALERT_RULES: {exc}") from None
        if values["env"] == "gcp":
            values.setdefault("fetch_threads", 64)
        return cls(**values)


def _text(_variable: str, raw: str) -> str:
    return raw


def _bounded(kind: type, low: float, high: float):
    return lambda variable, raw: _number(variable, raw, kind, low, high)


# Settings field -> its environment variable and how its text is read.
_VARIABLES = {
    "buckets_file": ("KETTLE_BUCKETS", _text),
    "storage_root": ("KETTLE_STORAGE_ROOT", _text),
    "home": ("KETTLE_HOME", _text),
    "start_date": ("KETTLE_START_DATE", lambda variable, raw: _date_setting(variable, raw)),
    "fetch_threads": ("KETTLE_FETCH_THREADS", _bounded(int, 1, 512)),
    "parse_threads": ("KETTLE_PARSE_THREADS", _bounded(int, 0, 512)),
    "env": ("KETTLE_ENV", _text),
    "gcs_timeout": ("KETTLE_GCS_TIMEOUT", _bounded(float, 0.1, 3600)),
    "gcs_connections": ("KETTLE_GCS_CONNECTIONS", _bounded(int, 1, 1024)),
    "gcs_deadline": ("KETTLE_GCS_DEADLINE", _bounded(float, 0.1, 86400)),
    "bq_project": ("KETTLE_BQ_PROJECT", _text),
    "bq_dataset": ("KETTLE_BQ_DATASET", _text),
    "bq_location": ("KETTLE_BQ_LOCATION", _text),
    "bq_endpoint": ("KETTLE_BQ_ENDPOINT", _text),
    "bq_deadline": ("KETTLE_BQ_DEADLINE", _bounded(float, 0.1, 86400)),
    "pubsub_subscription": ("KETTLE_PUBSUB_SUBSCRIPTION", _text),
    "warehouse": ("KETTLE_WAREHOUSE", _text),
    "retention_days": ("KETTLE_STAGING_RETENTION_DAYS", _bounded(int, 0, 100_000)),
    "max_row_bytes": ("KETTLE_MAX_ROW_BYTES", _bounded(int, 1024, 1 << 40)),
    "artifact_url": ("KETTLE_ARTIFACT_URL", _text),
    "report_url": ("KETTLE_REPORT_URL", _text),
    "alert_webhooks": ("KETTLE_ALERT_WEBHOOKS", _text),
    "alert_rules": ("KETTLE_ALERT_RULES", _text),
}


class SettingError(ValueError):
    """A setting with a value it cannot have; the message names the setting."""


def _number(name: str, raw: str, kind: type, low: float, high: float):
    what = "a whole number" if kind is int else "a number"
    try:
        value = kind(raw.strip())
    except ValueError:
        raise SettingError(f"{name} must be {what} from {low:g} to {high:g}, not {raw[:100]!r}") from None
    if not low <= value <= high:  # also refuses nan
        raise SettingError(f"{name} must be {what} from {low:g} to {high:g}, not {raw[:100]!r}")
    return value


def _date_setting(name: str, raw: str | None) -> str | None:
    if raw is None:
        return None
    try:
        return date.fromisoformat(raw.strip()).isoformat()
    except ValueError:
        raise SettingError(f"{name} must be a date written YYYY-MM-DD, not {raw[:100]!r}") from None
def first_partition_day(settings: Settings) -> str:
    """The first day partition: KETTLE_START_DATE, else the first day with staged builds, else
    two weeks ago. Day partitions then cover the data and nothing more: a synced home shows
    every day filled, and "Materialize all" is never a backfill of years without data."""
    if settings.start_date:
        return settings.start_date
    staged = [
        d for d in StagingStore(home=str(Path(settings.home).resolve())).metadata_days()
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", d) and d >= EARLIEST_START_DATE
    ]
    if staged:
        return min(staged)
    return (datetime.now(timezone.utc).date() - timedelta(days=DAYS_WITHOUT_DATA)).isoformat()


def report_root_url(settings: Settings) -> str:
    """Where the CI report is read from: KETTLE_REPORT_URL, else its folder under the home."""
    return settings.report_url or (Path(settings.home).resolve() / "report").as_uri()


def settings_resource(settings: Settings) -> KettleSettings:
    """The settings every stage shares, as a resource."""
    return KettleSettings(
        buckets_file=str(Path(settings.buckets_file).resolve()),
        fetch_threads=settings.fetch_threads,
        parse_threads=settings.parse_threads,
        max_row_bytes=settings.max_row_bytes,
        artifact_url=settings.artifact_url,
        report_url=report_root_url(settings),
    )


def duckdb_warehouse(home: Path) -> DuckDBWarehouse:
    # Bounded memory and threads: DuckDB would otherwise take 80% of RAM for nested inserts. Its
    # buffer cache grows with the warehouse up to the limit: at 256 MB a sync's peak grew 23% from
    # 1x to 4x history; at 96 MB it is flat and an 8,000-build sync is 4% slower (bench/results.md).
    # No vacuum at checkpoints: it merged each day's new row group into the one before, rewriting
    # up to 2,048 builds' test lists at every day's checkpoint; upserts vacuum (warehouse.py).
    config = {"memory_limit": "96MB", "threads": 1, "preserve_insertion_order": False, "max_vacuum_tasks": 0}
    return DuckDBWarehouse(duckdb=DuckDBResource(database=str(home / "warehouse.duckdb"), connection_config=config))


def build_resources(settings: Settings) -> dict:
    """The one switch between the embedded default and production (KETTLE_ENV)."""
    home = Path(settings.home).resolve()
    if settings.env == "local":
        if settings.storage_root is None:
            raise ValueError("KETTLE_ENV=local needs KETTLE_STORAGE_ROOT (run `kettle sample DIR` for one)")
        artifacts = LocalArtifactStore(root=str(Path(settings.storage_root).resolve()))
        notifications = LocalFolderNotificationSource(
            root=str(Path(settings.storage_root).resolve()), state_file=str(home / "stream" / "local_watch.json")
        )
    else:
        artifacts = GCSArtifactStore(
            project=settings.bq_project,
            request_timeout_seconds=settings.gcs_timeout,
            deadline_seconds=settings.gcs_deadline,
            max_connections=settings.gcs_connections,
        )
        notifications = PubSubNotificationSource(subscription=settings.pubsub_subscription or "")
    if settings.pubsub_subscription:  # e.g. local artifacts, but notifications from Pub/Sub
        notifications = PubSubNotificationSource(subscription=settings.pubsub_subscription)
    if settings.warehouse_kind == "duckdb":
        warehouse = duckdb_warehouse(home)
    else:
        warehouse = BigQueryWarehouse(
            bigquery=KettleBigQueryResource(
                project=settings.bq_project,
                location=settings.bq_location,
                api_endpoint=settings.bq_endpoint,
                anonymous_credentials=bool(settings.bq_endpoint),
            ),
            dataset=settings.bq_dataset,
            retry_deadline_seconds=settings.bq_deadline,
            request_timeout_seconds=min(60.0, settings.bq_deadline),
        )
    return {
        "artifacts": artifacts,
        "staging": StagingStore(home=str(home)),
        "warehouse": warehouse,
        "notifications": notifications,
        "settings": settings_resource(settings),
        "alerts": AlertWebhooks(
            webhooks=settings.alert_webhooks, rules=settings.alert_rules, report_url=report_root_url(settings),
            outbox_file=str(home / "alerts" / "outbox.sqlite"),
        ),
    }


def build_assets(settings: Settings, days: dg.DailyPartitionsDefinition | None = None) -> list[dg.AssetsDefinition]:
    """The assets over `days` (default: the day partitions the settings' staging gives)."""
    days = days or day_partitions(first_partition_day(settings))
    buckets = load_buckets(settings.buckets_file)
    collected = [build_listing, build_metadata, junit_results, build_rows, build_all, build_week, build_day]
    return bind_partitions(
        [
            *(with_owners_and_schema(a, bucket_owners(buckets)) for a in collected),
            test_results, *METRIC_ASSETS, failure_clusters, ci_report,
        ],
        buckets=bucket_partitions(buckets), days=days,
    )


def build_checks() -> list[dg.AssetChecksDefinition]:
    return [*make_contract_checks(), *make_build_checks()]


def build_definitions(settings: Settings) -> dg.Definitions:
    return dg.Definitions(
        assets=build_assets(settings),
        asset_checks=build_checks(),
        resources=build_resources(settings),
        jobs=JOBS,
        schedules=SCHEDULES,
        sensors=[*SENSORS, failure_clusters_automation, alert_on_new_failures],
        executor=dg.in_process_executor,
    )

