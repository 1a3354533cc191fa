"""Builds the code location (assets, resources, jobs) from settings or the environment.

KETTLE_ENV          local (folder + DuckDB) or gcp (GCS + BigQuery); default: local when
                    KETTLE_STORAGE_ROOT is set, else gcp
KETTLE_BUCKETS      buckets.yaml (default: ./buckets.yaml)
KETTLE_STORAGE_ROOT a folder standing for gs:// (local)
KETTLE_HOME         data folder: staging Parquet, DuckDB file, exports (default: ./.kettle)
KETTLE_START_DATE   first day partition (default 2014-01-01)
KETTLE_GCS_TIMEOUT, KETTLE_GCS_DEADLINE   per-request timeout and per-call retry deadline (seconds)
KETTLE_FETCH_THREADS  artifact fetches in flight (default: 16 local, 64 gcp)
KETTLE_GCS_CONNECTIONS  pooled HTTP connections to GCS (default 64)
KETTLE_BQ_PROJECT, KETTLE_BQ_DATASET, KETTLE_BQ_LOCATION, KETTLE_BQ_ENDPOINT, KETTLE_BQ_DEADLINE (gcp)
KETTLE_PUBSUB_SUBSCRIPTION  projects/<p>/subscriptions/<s> with GCS notifications (gcp streaming)
KETTLE_STAGING_RETENTION_DAYS  prune per-day staging older than this many days after a sync (0: keep)
KETTLE_WAREHOUSE    duckdb: keep the local warehouse whatever the artifact store (the benchmark uses it)
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
from dagster_duckdb import DuckDBResource

from .automation import collect_bucket_job, make_automation, refresh_windows_job, stage_and_publish_job, stream_job
from .assets.collection import make_collection_assets
from .assets.checks import make_contract_checks
from .assets.common import bucket_partitions, day_partitions
from .assets.daily import make_daily_assets
from .assets.windows import make_window_assets
from .core.config import load_buckets
from .resources.artifacts import LocalArtifactStore
from .resources.gcs import GCSArtifactStore
from .resources.bigquery import BigQueryWarehouse, KettleBigQueryResource
from .resources.notifications import LocalFolderNotificationSource, PubSubNotificationSource
from .resources.settings import KettleSettings
from .resources.staging import StagingStore
from .resources.warehouse import DuckDBWarehouse

DEFAULT_START_DATE = "2014-01-01"

# BackfillPolicy.single_run is what lets a backfill of many days run as one run; it is marked beta.
warnings.filterwarnings("ignore", category=dg.BetaWarning)


@dataclass(frozen=True)
class Settings:
    buckets_file: str
    storage_root: str | None
    home: str
    start_date: str = DEFAULT_START_DATE
    fetch_threads: int = 16
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

    @classmethod
    def from_env(cls, **overrides) -> "Settings":
        values = dict(
            buckets_file=os.environ.get("KETTLE_BUCKETS", "buckets.yaml"),
            storage_root=os.environ.get("KETTLE_STORAGE_ROOT") or None,
            home=os.environ.get("KETTLE_HOME", ".kettle"),
            start_date=os.environ.get("KETTLE_START_DATE", DEFAULT_START_DATE),
            fetch_threads=int(os.environ["KETTLE_FETCH_THREADS"]) if os.environ.get("KETTLE_FETCH_THREADS") else None,
            gcs_timeout=float(os.environ.get("KETTLE_GCS_TIMEOUT", "10")),
            gcs_connections=int(os.environ.get("KETTLE_GCS_CONNECTIONS", "64")),
            gcs_deadline=float(os.environ.get("KETTLE_GCS_DEADLINE", "120")),
            bq_project=os.environ.get("KETTLE_BQ_PROJECT") or None,
            bq_dataset=os.environ.get("KETTLE_BQ_DATASET", "build"),
            bq_location=os.environ.get("KETTLE_BQ_LOCATION") or None,
            bq_endpoint=os.environ.get("KETTLE_BQ_ENDPOINT") or None,
            bq_deadline=float(os.environ.get("KETTLE_BQ_DEADLINE", "180")),
            pubsub_subscription=os.environ.get("KETTLE_PUBSUB_SUBSCRIPTION") or None,
            warehouse=os.environ.get("KETTLE_WAREHOUSE") or None,
            retention_days=int(os.environ.get("KETTLE_STAGING_RETENTION_DAYS", "0")),
            max_row_bytes=int(os.environ.get("KETTLE_MAX_ROW_BYTES", str(100 * 1024 * 1024))),
        )
        values.update({k: v for k, v in overrides.items() if v is not None})
        values["env"] = overrides.get("env") or os.environ.get("KETTLE_ENV") or (
            "local" if values["storage_root"] else "gcp"
        )
        if values["env"] not in ("local", "gcp"):
            raise ValueError(f"KETTLE_ENV must be local or gcp, not {values['env']!r}")
        if values.get("fetch_threads") is None:  # GCS requests wait on the network: keep more in flight
            values["fetch_threads"] = 64 if values["env"] == "gcp" else 16
        return cls(**values)


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
            max_row_bytes=settings.max_row_bytes,
        ),
    }


def build_assets(settings: Settings) -> list[dg.AssetsDefinition]:
    buckets = load_buckets(settings.buckets_file)
    build_listing, build_metadata = make_collection_assets(bucket_partitions(buckets))
    junit_results, build_rows, build_all = make_daily_assets(day_partitions(settings.start_date), build_metadata)
    build_week, build_day = make_window_assets(build_rows)
    return [build_listing, build_metadata, junit_results, build_rows, build_all, build_week, build_day]


def build_checks() -> list[dg.AssetChecksDefinition]:
    return make_contract_checks()


def build_definitions(settings: Settings) -> dg.Definitions:
    assets = build_assets(settings)
    buckets = load_buckets(settings.buckets_file)
    schedules, sensors = make_automation(buckets.keys, day_partitions(settings.start_date))
    return dg.Definitions(
        assets=assets,
        asset_checks=build_checks(),
        resources=build_resources(settings),
        jobs=[collect_bucket_job, stage_and_publish_job, refresh_windows_job, stream_job],
        schedules=schedules,
        sensors=sensors,
        executor=dg.in_process_executor,
    )

