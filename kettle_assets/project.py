"""Builds the code location (assets, resources, jobs) from settings or the environment.

KETTLE_ENV          local (folder + DuckDB) or gcp (GCS + BigQuery); default: local when
                    KETTLE_STORAGE_ROOT is set, else gcp
KETTLE_BUCKETS      buckets.yaml (default: ./buckets.yaml)
KETTLE_STORAGE_ROOT a folder standing for gs:// (local)
KETTLE_HOME         data folder: staging Parquet, DuckDB file, exports (default: ./.kettle)
KETTLE_START_DATE   first day partition (default: the first day with staged builds, else two weeks ago)
KETTLE_ARTIFACT_URL where a build's artifacts are browsed: {bucket} and {path} (default: gcsweb.k8s.io)
KETTLE_GCS_TIMEOUT, KETTLE_GCS_DEADLINE   per-request timeout and per-call retry deadline (seconds)
KETTLE_FETCH_THREADS  artifact fetches in flight (default: 16 local, 64 gcp)
KETTLE_GCS_CONNECTIONS  pooled HTTP connections to GCS (default 64)
KETTLE_PARSE_THREADS  JUnit files parsed at once (default: one per CPU)
KETTLE_BQ_PROJECT, KETTLE_BQ_DATASET, KETTLE_BQ_LOCATION, KETTLE_BQ_ENDPOINT, KETTLE_BQ_DEADLINE (gcp)
KETTLE_PUBSUB_SUBSCRIPTION  projects/<p>/subscriptions/<s> with GCS notifications (gcp streaming)
KETTLE_STAGING_RETENTION_DAYS  prune per-day staging older than this many days after a sync (0: keep)
KETTLE_WAREHOUSE    duckdb: keep the local warehouse whatever the artifact store (the benchmark uses it)
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
from dagster_duckdb import DuckDBResource

from .automation import JOBS, make_automation
from .assets.collection import make_collection_assets
from .assets.checks import make_build_checks, make_contract_checks
from .assets.common import bucket_partitions, day_partitions
from .assets.daily import make_daily_assets
from .assets.links import DEFAULT_ARTIFACT_URL, bucket_owners, with_owners_and_schema
from .assets.failure_clusters import failure_clusters, failure_clusters_automation
from .assets.metrics import make_metric_assets
from .assets.test_results import make_test_results_asset
from .assets.windows import make_window_assets
from .core.config import load_buckets
from .resources.artifacts import LocalArtifactStore
from .resources.gcs import GCSArtifactStore
from .resources.bigquery import BigQueryWarehouse, KettleBigQueryResource
from .resources.notifications import LocalFolderNotificationSource, PubSubNotificationSource
from .resources.settings import KettleSettings
from .resources.staging import StagingStore
from .resources.warehouse import DuckDBWarehouse

EARLIEST_START_DATE = "2014-01-01"  # Kettle's first year: staged days before it are bad timestamps
DAYS_WITHOUT_DATA = 14  # an empty home's partitions: the last two weeks

# BackfillPolicy (many days in one run, a month at most) is marked beta.
warnings.filterwarnings("ignore", category=dg.BetaWarning)


@dataclass(frozen=True)
class Settings:
    buckets_file: str
    storage_root: str | None
    home: str
    start_date: str | None = None  # None: discovered from staging (first_partition_day)
    fetch_threads: int = 16
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
    warehouse: str | None = None  # override: duckdb or bigquery (default: the env's)
    retention_days: int = 0  # staging days older than this are pruned after a sync; 0 keeps all
    max_row_bytes: int = 100 * 1024 * 1024
    artifact_url: str = DEFAULT_ARTIFACT_URL

    @classmethod
    def from_env(cls, **overrides) -> "Settings":
        """Settings from KETTLE_* variables (flags in `overrides` win); a bad value raises
        SettingError naming the variable."""
        env = os.environ
        values = dict(
            buckets_file=env.get("KETTLE_BUCKETS", "buckets.yaml"),
            storage_root=env.get("KETTLE_STORAGE_ROOT") or None,
            home=env.get("KETTLE_HOME", ".kettle"),
            start_date=_date_setting("KETTLE_START_DATE", env.get("KETTLE_START_DATE") or None),
            fetch_threads=(
                _number("KETTLE_FETCH_THREADS", env["KETTLE_FETCH_THREADS"], int, 1, 512)
                if env.get("KETTLE_FETCH_THREADS") else None
            ),
            parse_threads=_number("KETTLE_PARSE_THREADS", env.get("KETTLE_PARSE_THREADS", "0"), int, 0, 512),
            gcs_timeout=_number("KETTLE_GCS_TIMEOUT", env.get("KETTLE_GCS_TIMEOUT", "10"), float, 0.1, 3600),
            gcs_connections=_number("KETTLE_GCS_CONNECTIONS", env.get("KETTLE_GCS_CONNECTIONS", "64"), int, 1, 1024),
            gcs_deadline=_number("KETTLE_GCS_DEADLINE", env.get("KETTLE_GCS_DEADLINE", "120"), float, 0.1, 86400),
            bq_project=env.get("KETTLE_BQ_PROJECT") or None,
            bq_dataset=env.get("KETTLE_BQ_DATASET", "build"),
            bq_location=env.get("KETTLE_BQ_LOCATION") or None,
            bq_endpoint=env.get("KETTLE_BQ_ENDPOINT") or None,
            bq_deadline=_number("KETTLE_BQ_DEADLINE", env.get("KETTLE_BQ_DEADLINE", "180"), float, 0.1, 86400),
            pubsub_subscription=env.get("KETTLE_PUBSUB_SUBSCRIPTION") or None,
            warehouse=env.get("KETTLE_WAREHOUSE") or None,
            retention_days=_number(
                "KETTLE_STAGING_RETENTION_DAYS", env.get("KETTLE_STAGING_RETENTION_DAYS", "0"), int, 0, 100_000
            ),
            max_row_bytes=_number(
                "KETTLE_MAX_ROW_BYTES", env.get("KETTLE_MAX_ROW_BYTES", str(100 * 1024 * 1024)), int, 1024, 1 << 40
            ),
            artifact_url=env.get("KETTLE_ARTIFACT_URL") or DEFAULT_ARTIFACT_URL,
        )
        if overrides.get("fetch_threads") is not None:
            overrides["fetch_threads"] = _number("--threads", str(overrides["fetch_threads"]), int, 1, 512)
        values.update({k: v for k, v in overrides.items() if v is not None})
        values["env"] = overrides.get("env") or env.get("KETTLE_ENV") or ("local" if values["storage_root"] else "gcp")
        try:
            values["artifact_url"].format(bucket="bucket", path="path")
        except (KeyError, IndexError, ValueError):
            raise SettingError(
                f"KETTLE_ARTIFACT_URL may only use {{bucket}} and {{path}}, not {values['artifact_url'][:200]!r}"
            ) from None
        if values["env"] not in ("local", "gcp"):
            raise SettingError(f"KETTLE_ENV must be local or gcp, not {values['env'][:100]!r}")
        if values["warehouse"] not in (None, "duckdb", "bigquery"):
            raise SettingError(f"KETTLE_WAREHOUSE must be duckdb or bigquery, not {values['warehouse'][:100]!r}")
        if values.get("fetch_threads") is None:  # GCS requests wait on the network: keep more in flight
            values["fetch_threads"] = 64 if values["env"] == "gcp" else 16
        return cls(**values)


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


def duckdb_warehouse(home: Path) -> DuckDBWarehouse:
    # Bounded memory and threads: DuckDB would otherwise take 80% of RAM for nested inserts.
    config = {"memory_limit": "256MB", "threads": 1, "preserve_insertion_order": False}
    return DuckDBWarehouse(duckdb=DuckDBResource(database=str(home / "warehouse.duckdb"), connection_config=config))


def build_resources(settings: Settings) -> dict:
    """The one switch between the embedded default and production (KETTLE_ENV)."""
    home = Path(settings.home).resolve()
    if settings.env == "local":
        if settings.storage_root is None:
            raise ValueError("KETTLE_ENV=local needs KETTLE_STORAGE_ROOT (run `kettle sample DIR` for one)")
        artifacts = LocalArtifactStore(root=str(Path(settings.storage_root).resolve()))
        warehouse = duckdb_warehouse(home)
        notifications = LocalFolderNotificationSource(
            root=str(Path(settings.storage_root).resolve()), state_file=str(home / "stream" / "local_watch.json")
        )
        if settings.pubsub_subscription:  # local artifacts, but notifications from Pub/Sub
            notifications = PubSubNotificationSource(subscription=settings.pubsub_subscription)
    else:
        artifacts = GCSArtifactStore(
            project=settings.bq_project,
            request_timeout_seconds=settings.gcs_timeout,
            deadline_seconds=settings.gcs_deadline,
            max_connections=settings.gcs_connections,
        )
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
        notifications = PubSubNotificationSource(subscription=settings.pubsub_subscription or "")
    if settings.warehouse == "duckdb":  # e.g. GCS artifacts into a local warehouse (the benchmark)
        warehouse = duckdb_warehouse(home)
    return {
        "artifacts": artifacts,
        "staging": StagingStore(home=str(home)),
        "warehouse": warehouse,
        "notifications": notifications,
        "settings": KettleSettings(
            buckets_file=str(Path(settings.buckets_file).resolve()),
            fetch_threads=settings.fetch_threads,
            parse_threads=settings.parse_threads,
            max_row_bytes=settings.max_row_bytes,
            artifact_url=settings.artifact_url,
        ),
    }


def build_assets(settings: Settings) -> list[dg.AssetsDefinition]:
    buckets = load_buckets(settings.buckets_file)
    build_listing, build_metadata = make_collection_assets(bucket_partitions(buckets))
    days = day_partitions(first_partition_day(settings))
    junit_results, build_rows, build_all = make_daily_assets(days, build_metadata)
    build_week, build_day = make_window_assets(build_rows)
    test_results = make_test_results_asset(days, build_all)
    assets = [build_listing, build_metadata, junit_results, build_rows, build_all, build_week, build_day]
    return [
        *(with_owners_and_schema(a, bucket_owners(buckets)) for a in assets),
        test_results, *make_metric_assets(build_all, test_results), failure_clusters,
    ]


def build_checks() -> list[dg.AssetChecksDefinition]:
    return [*make_contract_checks(), *make_build_checks()]


def build_definitions(settings: Settings) -> dg.Definitions:
    assets = build_assets(settings)
    buckets = load_buckets(settings.buckets_file)
    schedules, sensors = make_automation(buckets.keys, day_partitions(first_partition_day(settings)))
    return dg.Definitions(
        assets=assets,
        asset_checks=build_checks(),
        resources=build_resources(settings),
        jobs=JOBS,
        schedules=schedules,
        sensors=[*sensors, failure_clusters_automation],
        executor=dg.in_process_executor,
    )

