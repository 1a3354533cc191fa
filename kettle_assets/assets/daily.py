"""Per-day stages: JUnit results, contract rows (staging Parquet), and the `all` table.

Batch runs (backfills, `kettle sync`, the daily close) redo whole days, fetching only what
is missing. Streaming runs name their builds in run config (`builds`): they collect, stage
and publish exactly those, so a notification costs a few builds' work, not a day's.
"""

import json
import time
from datetime import timedelta
from concurrent.futures import ThreadPoolExecutor

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from ..core import collect
from ..core.rows import RowProblems, build_row, trim_row
from ..resources.artifacts import ArtifactStore
from ..resources.settings import KettleSettings
from ..resources.staging import JUNIT_SCHEMA, ROW_SCHEMA, StagingStore, iter_rows
from ..resources.warehouse import Warehouse
from .collection import collect_named_builds
from .common import STAGING_GROUP, WAREHOUSE_GROUP, md_table

MALFORMED_SHARE_LIMIT = 0.05  # more malformed JUnit files than this fails the check
# Kettle's monitor.py failed when a table had not changed for 6 hours.
STALE_AFTER_6_HOURS = dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=6), warn_window=timedelta(hours=2))


class StreamConfig(dg.Config):
    builds: list[str] = []  # streaming runs: exactly these build folders; empty: the whole day


def _replace_paths(existing: pa.Table, paths: set[str], new: pa.Table) -> pa.Table:
    """`existing` without `paths`, plus `new`, sorted by path: an Arrow-level upsert."""
    if paths and existing.num_rows:
        existing = existing.filter(pc.invert(pc.is_in(existing.column("path"), pa.array(sorted(paths)))))
    return pa.concat_tables([existing, new.cast(existing.schema)]).sort_by("path")


def make_daily_assets(days: dg.DailyPartitionsDefinition, build_metadata: dg.AssetsDefinition):
    all_buckets = dg.AssetDep(build_metadata, partition_mapping=dg.AllPartitionMapping())

    @dg.asset(
        partitions_def=days,
        group_name=STAGING_GROUP,
        deps=[all_buckets],
        pool="staging",
        backfill_policy=dg.BackfillPolicy.single_run(),
        kinds={"python", "parquet"},
        code_version="1",
        check_specs=[dg.AssetCheckSpec("malformed_junit_share", asset="junit_results")],
        description=(
            "Parsed JUnit results of every build finished that day: only builds not fetched yet, "
            "or whose finished.json changed, are downloaded."
        ),
    )
    def junit_results(
        context: dg.AssetExecutionContext, config: StreamConfig, artifacts: ArtifactStore,
        staging: StagingStore, settings: KettleSettings,
    ):
        totals = dict(builds=0, fetched=0, dropped=0, files=0, bytes=0, malformed=0, too_large=0, tests=0, bad_times=0)
        per_day: list[dict] = []
        t0 = time.monotonic()
        retries_before = artifacts.retries
        only = set(config.builds)
        if only:
            merged = collect_named_builds(artifacts, staging, settings, config.builds, time.time(), context.log)
            context.log.info(
                f"junit_results: collected {len(only)} named builds: {merged.new} new, {merged.updated} updated, "
                f"{merged.unchanged} unchanged"
            )
        with ThreadPoolExecutor(max_workers=settings.fetch_threads) as pool:
            for day in context.partition_keys:
                read_at = time.time()
                wanted = {
                    r["path"]: r["finished_hash"]
                    for r in staging.read_metadata(day).select(["path", "finished_hash"]).to_pylist()
                }
                have = staging.read_junit(day)
                keys = have.select(["path", "finished_hash"]).to_pylist()
                stale = {r["path"] for r in keys if wanted.get(r["path"], object()) != r["finished_hash"]}
                done = {r["path"] for r in keys} - stale
                todo = sorted(p for p in wanted if p not in done and (not only or p in only))
                fetched = []
                for result in pool.map(
                    lambda p: collect.fetch_junit(artifacts, p, wanted[p], settings.max_junit_file_bytes), todo
                ):
                    for problem in result.problems:
                        context.log.warning(f"junit_results {day}: {problem}")
                    for k in ("files", "bytes", "malformed", "too_large", "bad_times"):
                        totals[k] += getattr(result, k)
                    totals["tests"] += len(result.tests)
                    fetched.append(
                        {
                            "path": result.path, "finished_hash": result.finished_hash, "tests": result.tests,
                            "files": result.files, "bytes": result.bytes, "malformed": result.malformed,
                            "too_large": result.too_large,
                        }
                    )
                if fetched or stale or not staging.junit_file(day).exists():
                    new = pa.Table.from_pylist(fetched, schema=JUNIT_SCHEMA)
                    staging.write_junit(day, _replace_paths(have, stale | set(todo), new))
                staging.record_junit_read(day, read_at)
                totals["builds"] += len(wanted)
                totals["fetched"] += len(fetched)
                totals["dropped"] += len(stale - set(wanted))
                per_day.append({"day": day, "builds": len(wanted), "fetched": len(fetched)})
                context.log.info(
                    f"junit_results {day}: {len(wanted)} builds, {len(fetched)} fetched, {len(done)} already staged"
                )
        elapsed = time.monotonic() - t0
        share = totals["files"] and totals["malformed"] / totals["files"]
        yield dg.MaterializeResult(
            metadata={
                **{f"junit_{k}" if k in ("files", "bytes", "malformed", "too_large") else k: v for k, v in totals.items()},
                "malformed_share": round(share, 4),
                "artifact_retries": artifacts.retries - retries_before,
                "seconds": round(elapsed, 2),
                "partitions_in_run": len(per_day),
                "per_day": dg.MetadataValue.md(md_table(per_day, ["day", "builds", "fetched"])),
            }
        )
        yield dg.AssetCheckResult(
            check_name="malformed_junit_share",
            passed=share <= MALFORMED_SHARE_LIMIT,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"malformed_share": round(share, 4), "limit": MALFORMED_SHARE_LIMIT,
                      "junit_files": totals["files"], "junit_malformed": totals["malformed"]},
            description="Share of JUnit files fetched in this run that did not parse.",
        )

    @dg.asset(
        partitions_def=days,
        group_name=STAGING_GROUP,
        deps=[junit_results, all_buckets],
        pool="staging",
        backfill_policy=dg.BackfillPolicy.single_run(),
        kinds={"python", "parquet"},
        code_version="1",
        description="One contract row per build finished that day (Kettle's make_json), as staging Parquet.",
    )
    def build_rows(
        context: dg.AssetExecutionContext, config: StreamConfig, staging: StagingStore, settings: KettleSettings
    ) -> dg.MaterializeResult:
        buckets = settings.buckets
        only = set(config.builds)
        totals = dict(rows=0, tests=0, tests_failed=0, problems=0, waiting_for_junit=0, rows_trimmed=0, bytes=0)
        trims: list[dict] = []
        preview: list[dict] = []
        per_day: list[dict] = []
        for day in context.partition_keys:
            metadata = staging.read_metadata(day)
            if only:
                metadata = metadata.filter(pc.is_in(metadata.column("path"), pa.array(sorted(only))))
            junit = staging.read_junit(day).select(["path", "finished_hash", "tests"])
            if only:
                junit = junit.filter(pc.is_in(junit.column("path"), pa.array(sorted(only))))
            staged = {r["path"]: r for r in junit.to_pylist()}
            rows = []
            for meta in metadata.to_pylist():
                path = meta["path"]
                tests = staged.get(path)
                if tests is None or tests["finished_hash"] != meta["finished_hash"]:
                    # Its JUnit results are not staged yet (collected after junit_results ran):
                    # no row rather than a row without tests; the next run of this day adds it.
                    totals["waiting_for_junit"] += 1
                    context.log.info(f"build_rows {day}: {path} waits for junit_results")
                    continue
                owner = buckets.owner_of(path) or buckets.by_key(meta["bucket"])
                problems = RowProblems()
                row = build_row(
                    path, owner.prefix, _loads(meta["started_json"]), _loads(meta["finished_json"]),
                    [[{k: v for k, v in t.items() if v is not None} for t in tests["tests"]]], problems,
                )
                trimmed = trim_row(row, settings.max_row_bytes)
                if trimmed:
                    totals["rows_trimmed"] += 1
                    trims.append({"path": path, "trim": trimmed})
                    context.log.warning(f"build_rows {path}: over BigQuery's row limit; {trimmed}")
                for note in problems.notes:
                    context.log.warning(f"build_rows {path}: {note}")
                totals["problems"] += len(problems.notes)
                rows.append(row)
            rows.sort(key=lambda r: r["path"])
            table = pa.Table.from_pylist(rows, schema=ROW_SCHEMA)
            if only:  # keep the day's other rows; these builds' rows replaced (or removed)
                table = _replace_paths(staging.read_rows(day), only, table)
            size = staging.write_rows(day, table)
            totals["rows"] += len(rows)
            totals["tests"] += sum(r["tests_run"] for r in rows)
            totals["tests_failed"] += sum(r["tests_failed"] for r in rows)
            totals["bytes"] += size
            preview.extend(rows[: max(0, 10 - len(preview))])
            per_day.append({"day": day, "rows": len(rows), "bytes": size})
            context.log.info(f"build_rows {day}: {len(rows)} rows, {sum(r['tests_run'] for r in rows)} tests")
        return dg.MaterializeResult(
            metadata={
                **totals,
                "dagster/row_count": totals["rows"],
                "partitions_in_run": len(per_day),
                "per_day": dg.MetadataValue.md(md_table(per_day, ["day", "rows", "bytes"])),
                "trimmed_rows": dg.MetadataValue.md(md_table(trims[:20], ["path", "trim"])),
                "preview": dg.MetadataValue.md(md_table(preview, ["path", "job", "result", "tests_run", "tests_failed"])),
            }
        )

    @dg.asset(
        name="build_all",
        partitions_def=days,
        group_name=WAREHOUSE_GROUP,
        deps=[build_rows],
        backfill_policy=dg.BackfillPolicy.single_run(),
        kinds={"duckdb", "bigquery"},
        pool="warehouse",
        code_version="1",
        freshness_policy=STALE_AFTER_6_HOURS,
        description=(
            "Warehouse table `all`: each day partition replaced with that day's staged rows, "
            "plus the day's Kettle-format export export/all/<day>.json.gz."
        ),
    )
    def build_all(
        context: dg.AssetExecutionContext, config: StreamConfig, staging: StagingStore, warehouse: Warehouse
    ) -> dg.MaterializeResult:
        loaded = exported_bytes = 0
        skipped = []
        per_day: list[dict] = []
        for day in context.partition_keys:
            rows_file = staging.rows_file(day)
            if not rows_file.exists():
                skipped.append(day)
                context.log.warning(f"build_all {day}: no staged rows (never staged, or pruned); table left as is")
                continue
            export, count, size = staging.write_ndjson(f"all/{day}.json.gz", iter_rows([staging.read_rows(day)]))
            if config.builds:
                n = warehouse.upsert_paths("all", [rows_file], config.builds)
            else:
                n = warehouse.replace_day(day, rows_file, export)
                staging.clear_dirty(day, staging.junit_read_at(day))
            loaded += n
            exported_bytes += size
            per_day.append({"day": day, "rows": n, "export_bytes": size})
            context.log.info(f"build_all {day}: {n} rows loaded into {warehouse.describe('all')}; export {export}")
        return dg.MaterializeResult(
            metadata={
                "rows_loaded": loaded,
                "dagster/row_count": warehouse.count("all"),
                "export_bytes": exported_bytes,
                "days_skipped": dg.MetadataValue.json(skipped),
                "partitions_in_run": len(context.partition_keys),
                "per_day": dg.MetadataValue.md(md_table(per_day, ["day", "rows", "export_bytes"])),
                "table": warehouse.describe("all"),
            }
        )

    return junit_results, build_rows, build_all


def _loads(text: str | None) -> dict | None:
    if text is None:
        return None
    value = json.loads(text)
    return value if isinstance(value, dict) else None
