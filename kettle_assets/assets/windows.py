"""The rolling tables `week` and `day`: builds finished in the 7 days / 1 day before the refresh.

They are one table each, replaced whole, so they are not partitioned (a day
partition of a rolling window would mean nothing); they read the staged rows
of the few days the window touches.
"""


import time
from typing import Optional
from datetime import datetime, timedelta, timezone

import dagster as dg

from ..resources.staging import StagingStore
from ..resources.warehouse import Warehouse
from .common import STALE_AFTER_6_HOURS, WAREHOUSE_GROUP

DAY_SECONDS = 86400


class WindowConfig(dg.Config):
    as_of: Optional[float] = None  # epoch seconds the window ends at; default: now


def window_days(since_epoch: int, until_epoch: int) -> list[str]:
    start = datetime.fromtimestamp(since_epoch, tz=timezone.utc).date()
    end = datetime.fromtimestamp(until_epoch, tz=timezone.utc).date() + timedelta(days=1)
    days = []
    while start <= end:
        days.append(start.isoformat())
        start += timedelta(days=1)
    return days


def refresh_window(
    context: dg.AssetExecutionContext, table: str, days: int, config: WindowConfig,
    staging: StagingStore, warehouse: Warehouse,
) -> dg.MaterializeResult:
    now = int(config.as_of if config.as_of is not None else time.time())
    since = now - days * DAY_SECONDS
    staged = set(staging.row_days())
    days_in = [d for d in window_days(since, now) if d in staged]
    files = [staging.rows_file(d) for d in days_in]
    since_text = datetime.fromtimestamp(since, tz=timezone.utc).isoformat()
    fingerprint = staging.rows_fingerprint(days_in, since)
    marker = f"build_{table}.{warehouse.describe(table).replace('/', '_')}"
    export = staging.export_dir / f"build_{table}.json.gz"
    if fingerprint == staging.read_marker(marker) and export.exists():
        # The window slid without letting a build in or out: table and export are already right.
        count = warehouse.count(table)
        context.log.info(f"build_{table}: the {count} builds since {since_text} are unchanged; nothing rewritten")
        return dg.MaterializeResult(
            metadata={"dagster/row_count": count, "since": since_text, "unchanged": True,
                      "table": warehouse.describe(table)}
        )
    batches = (b for f in files for b in staging.row_batches(f.stem, since))
    export, exported, size = staging.write_export(f"build_{table}.json.gz", batches)
    count = warehouse.replace_window(table, files, since)
    staging.write_marker(marker, fingerprint)
    context.log.info(f"build_{table}: {count} builds finished since {since_text}; export {export} ({exported} rows)")
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": count,
            "since": since_text,
            "days_read": len(files),
            "export_rows": exported,
            "export_bytes": size,
            "unchanged": False,
            "table": warehouse.describe(table),
        }
    )


WINDOWS = {"week": (7, "the 7 days"), "day": (1, "the day")}


def _window_asset(table: str) -> dg.AssetsDefinition:
    days, span = WINDOWS[table]

    @dg.asset(
        name=f"build_{table}",
        group_name=WAREHOUSE_GROUP,
        deps=["build_rows"],
        kinds={"duckdb", "bigquery"},
        pool="warehouse",
        code_version="1",
        freshness_policy=STALE_AFTER_6_HOURS,
        description=(
            f"Warehouse table `{table}`: every build finished in {span} before the refresh; "
            f"export build_{table}.json.gz."
        ),
    )
    def window(
        context: dg.AssetExecutionContext, config: WindowConfig, staging: StagingStore, warehouse: Warehouse
    ) -> dg.MaterializeResult:
        return refresh_window(context, table, days, config, staging, warehouse)

    return window


build_week = _window_asset("week")
build_day = _window_asset("day")
