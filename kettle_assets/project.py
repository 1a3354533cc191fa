"""Builds the code location (assets, resources, jobs) from settings or the environment.

KETTLE_BUCKETS      buckets.yaml (default: ./buckets.yaml)
KETTLE_STORAGE_ROOT a folder standing for gs:// (the embedded default)
KETTLE_HOME         data folder: staging Parquet, DuckDB file, exports (default: ./.kettle)
KETTLE_START_DATE   first day partition (default 2014-01-01)
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
from dagster_duckdb import DuckDBResource

from .automation import collect_bucket_job, make_automation, refresh_windows_job, stage_and_publish_job
from .assets.collection import make_collection_assets
from .assets.common import bucket_partitions, day_partitions
from .assets.daily import make_daily_assets
from .assets.windows import make_window_assets
from .core.config import load_buckets
from .resources.artifacts import LocalArtifactStore
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

    @classmethod
    def from_env(cls, **overrides) -> "Settings":
        values = dict(
            buckets_file=os.environ.get("KETTLE_BUCKETS", "buckets.yaml"),
            storage_root=os.environ.get("KETTLE_STORAGE_ROOT") or None,
            home=os.environ.get("KETTLE_HOME", ".kettle"),
            start_date=os.environ.get("KETTLE_START_DATE", DEFAULT_START_DATE),
            fetch_threads=int(os.environ.get("KETTLE_FETCH_THREADS", "16")),
        )
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def build_resources(settings: Settings) -> dict:
    home = Path(settings.home).resolve()
    if settings.storage_root is None:
        raise ValueError(
            "KETTLE_STORAGE_ROOT is not set: set it to a local artifact folder "
            "(run `kettle sample DIR` for one); real GCS arrives with the production resources"
        )
    return {
        "artifacts": LocalArtifactStore(root=str(Path(settings.storage_root).resolve())),
        "staging": StagingStore(home=str(home)),
        "warehouse": DuckDBWarehouse(duckdb=DuckDBResource(database=str(home / "warehouse.duckdb"))),
        "settings": KettleSettings(
            buckets_file=str(Path(settings.buckets_file).resolve()), fetch_threads=settings.fetch_threads
        ),
    }


def build_assets(settings: Settings) -> list[dg.AssetsDefinition]:
    buckets = load_buckets(settings.buckets_file)
    build_listing, build_metadata = make_collection_assets(bucket_partitions(buckets))
    junit_results, build_rows, build_all = make_daily_assets(day_partitions(settings.start_date), build_metadata)
    build_week, build_day = make_window_assets(build_rows)
    return [build_listing, build_metadata, junit_results, build_rows, build_all, build_week, build_day]


def build_definitions(settings: Settings) -> dg.Definitions:
    assets = build_assets(settings)
    buckets = load_buckets(settings.buckets_file)
    schedules, sensors = make_automation(buckets.keys, day_partitions(settings.start_date))
    return dg.Definitions(
        assets=assets,
        resources=build_resources(settings),
        jobs=[collect_bucket_job, stage_and_publish_job, refresh_windows_job],
        schedules=schedules,
        sensors=sensors,
        executor=dg.in_process_executor,
    )

