"""`build_all`: the warehouse table `all`, each day partition made equal to that day's staged rows.

When at most a tenth of the day changed, just the changed builds are upserted; otherwise the day
is replaced. The day's Kettle-format export is written alongside.
"""

import itertools

import dagster as dg

from ..core.publish import builds_to_upsert
from ..resources.staging import StagingStore
from ..resources.warehouse import Warehouse
from .common import DAYS_PER_BACKFILL_RUN, STALE_AFTER_6_HOURS, WAREHOUSE_GROUP, md_table
from .partitions import DAYS


@dg.asset(
    name="build_all",
    partitions_def=DAYS,
    group_name=WAREHOUSE_GROUP,
    deps=["build_rows"],
    backfill_policy=DAYS_PER_BACKFILL_RUN,
    kinds={"duckdb", "bigquery"},
    pool="warehouse",
    code_version="1",
    freshness_policy=STALE_AFTER_6_HOURS,
    description=(
        "Warehouse table `all`: each day partition made equal to that day's staged rows (the few "
        "changed builds upserted, or the day replaced), plus the day's Kettle-format export "
        "`export/all/YYYY-MM-DD.json.gz`."
    ),
)
def build_all(
    context: dg.AssetExecutionContext, staging: StagingStore, warehouse: Warehouse
) -> dg.MaterializeResult:
    loaded = exported_bytes = 0
    skipped = []
    per_day: list[dict] = []
    pruned = staging.pruned_days()
    target = warehouse.describe("all")
    upserted_days = 0
    for day in context.partition_keys:
        rows_file = staging.rows_file(day)
        if not rows_file.exists():
            skipped.append(day)
            context.log.warning(f"build_all {day}: no staged rows (never staged, or pruned); table left as is")
            context.add_asset_metadata(
                {"rows_loaded": 0, "dagster/row_count": 0, "export_bytes": 0, "skipped": True}, partition_key=day
            )
            continue
        relpath = f"all/{day}.json.gz"
        if day in pruned:
            # staging holds only late builds of this day: add them, keep every published row
            staged = staging.read_rows(day, ["path"]).column("path").to_pylist()
            old_lines = staging.export_batches_without(relpath, set(staged))
            export, count, size = staging.write_export(
                relpath, itertools.chain(old_lines, staging.row_batches(day))
            )
            n = warehouse.upsert_builds(rows_file, staged)
            staging.clear_dirty(day, staging.junit_read_at(day))
            context.log.info(f"build_all {day}: staging was pruned; {n} late rows added, the rest kept")
        else:
            export, count, size = staging.write_export(relpath, staging.row_batches(day))
            staged = staging.row_digests(day)
            changed = builds_to_upsert(staged, staging.read_published(day, target))
            if changed is None:
                n = warehouse.replace_day(day, rows_file)
            else:
                n = warehouse.upsert_builds(rows_file, changed) if changed else 0
                upserted_days += 1
            staging.write_published(day, target, staged)
            staging.clear_dirty(day, staging.junit_read_at(day))
            context.log.info(
                f"build_all {day}: " + ("day replaced" if changed is None else f"{len(changed)} changed builds upserted")
            )
        loaded += n
        exported_bytes += size
        per_day.append({"day": day, "rows": n, "export_bytes": size})
        context.add_asset_metadata(
            {"rows_loaded": n, "dagster/row_count": count, "export_bytes": size,
             "export": dg.MetadataValue.path(str(export))},
            partition_key=day,
        )
        context.log.info(f"build_all {day}: {n} rows loaded into {warehouse.describe('all')}; export {export}")
    return dg.MaterializeResult(
        metadata={
            "rows_loaded": loaded,
            "table_rows": warehouse.count("all"),
            "export_bytes": exported_bytes,
            "days_skipped": dg.MetadataValue.json(skipped),
            "days_upserted": upserted_days,
            "partitions_in_run": len(context.partition_keys),
            "per_day": dg.MetadataValue.md(md_table(per_day, ["day", "rows", "export_bytes"])),
            "table": warehouse.describe("all"),
        }
    )
