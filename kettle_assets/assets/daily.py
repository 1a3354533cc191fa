"""Per-day stages: JUnit results, contract rows (staging Parquet), and the `all` table.

Every run redoes whole days and does only what changed: `junit_results` fetches the builds
missing or whose finished.json changed, `build_rows` rebuilds their rows, and `build_all`
publishes the day, upserting just the changed builds when they are few. A streamed build is
collected by `build_metadata` like any other, so it costs a few builds' work, not a day's.
"""

import itertools
import json
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from ..core import collect
from ..core.publish import builds_to_upsert
from ..core.listing import junit_files, junit_listings
from ..core.rows import RowProblems, build_row, row_json, trim_row
from ..resources.artifacts import ArtifactStore
from ..resources.settings import KettleSettings
from ..core.schema import ROW_SCHEMA
from ..resources.staging import JUNIT_SCHEMA, StagingStore
from ..resources.warehouse import Warehouse
from .common import DAYS_PER_BACKFILL_RUN, STAGING_GROUP, STALE_AFTER_6_HOURS, WAREHOUSE_GROUP, fetch_unordered, md_table, report_refused
from .links import md_link
from .partitions import DAYS

ARROW_CHUNK = 100  # builds turned from Python objects into Arrow at a time (bounds memory)
JUNIT_CHUNK = 5000  # builds whose JUnit listings are held at a time
MALFORMED_SHARE_LIMIT = 0.05  # more malformed JUnit files than this fails the check


class JUnitConfig(dg.Config):
    refetch: bool = False  # re-read every build's JUnit files, even those whose finished.json is unchanged


class RowsConfig(dg.Config):
    rebuild: bool = False  # rebuild every row of the day, not only those whose inputs changed
    refetch: bool = False  # with junit_results' refetch: rebuild every row from the re-read results


# Bump when build_row's output changes: every staged row is then rebuilt on its day's next run.
ROW_LOGIC_VERSION = "1"


def _row_version(finished_hash: str | None) -> str | None:
    return None if finished_hash is None else f"{ROW_LOGIC_VERSION}:{finished_hash}"


def _replace_paths(existing: pa.Table, paths: set[str], new: pa.Table) -> pa.Table:
    """`existing` without `paths`, plus `new`, sorted by path: an Arrow-level upsert."""
    if paths and existing.num_rows:
        existing = existing.filter(pc.invert(pc.is_in(existing.column("path"), pa.array(sorted(paths)))))
    return pa.concat_tables([existing, new.cast(existing.schema)]).sort_by("path")


# Every day reads the metadata of every bucket.
ALL_BUCKETS_METADATA = dg.AssetDep("build_metadata", partition_mapping=dg.AllPartitionMapping())



@dg.asset(
    partitions_def=DAYS,
    group_name=STAGING_GROUP,
    deps=[ALL_BUCKETS_METADATA],
    pool="staging",
    backfill_policy=DAYS_PER_BACKFILL_RUN,
    kinds={"python", "parquet"},
    code_version="1",
    check_specs=[
        dg.AssetCheckSpec(
            "malformed_junit_share", asset="junit_results",
            description=f"At most {MALFORMED_SHARE_LIMIT:.0%} of the JUnit files read in a run fail to parse (warns).",
        ),
        dg.AssetCheckSpec(
            "no_build_with_all_junit_malformed", asset="junit_results",
            description="No build of these days has JUnit files that all failed to parse: its tests are lost (error).",
        ),
    ],
    description=(
        "Parsed JUnit results of every build finished that day: only builds not fetched yet, "
        "or whose finished.json changed, are downloaded."
    ),
)
def junit_results(
    context: dg.AssetExecutionContext, config: JUnitConfig, artifacts: ArtifactStore,
    staging: StagingStore, settings: KettleSettings,
):
    totals = dict(builds=0, fetched=0, dropped=0, files=0, bytes=0, malformed=0, too_large=0, tests=0, bad_times=0)
    all_malformed: list[dict] = []
    per_day: list[dict] = []
    t0 = time.monotonic()
    retries_before, refused_before = artifacts.retries, artifacts.refused
    # Plan every day first (only paths and hashes are kept), then fetch all of them in one
    # stream in day order: a slow request holds its own slot, not the start of the next day.
    plans = []
    for day in context.partition_keys:
        read_at = time.time()
        wanted = {
            r["path"]: r["finished_hash"]
            for r in staging.read_metadata(day).select(["path", "finished_hash"]).to_pylist()
        }
        keys = staging.read_junit(day).select(["path", "finished_hash"]).to_pylist()
        stale = {r["path"] for r in keys if config.refetch or wanted.get(r["path"], object()) != r["finished_hash"]}
        done = {r["path"] for r in keys} - stale
        todo = sorted(p for p in wanted if p not in done)
        plans.append(DayPlan(day, read_at, wanted, stale, done, todo))

    def finish_day(plan: "DayPlan", chunks: list[pa.Table], n_fetched: int, counts: dict) -> None:
        have = staging.read_junit(plan.day)
        if n_fetched or plan.stale or not staging.junit_file(plan.day).exists():
            have = _replace_paths(have, plan.stale | set(plan.todo), pa.concat_tables(chunks))
            staging.write_junit(plan.day, have)
        staging.record_junit_read(plan.day, plan.read_at)
        lost = builds_with_all_junit_malformed(have)
        all_malformed.extend(lost)
        dropped = len(plan.stale - set(plan.wanted))
        for k, v in counts.items():
            totals[k] += v
        totals["builds"] += len(plan.wanted)
        totals["fetched"] += n_fetched
        totals["dropped"] += dropped
        per_day.append({"day": plan.day, "builds": len(plan.wanted), "fetched": n_fetched})
        day_counts = {**counts, "builds": len(plan.wanted), "fetched": n_fetched, "dropped": dropped}
        context.add_asset_metadata(
            {
                **{f"junit_{k}" if k in ("files", "bytes", "malformed", "too_large") else k: v
                   for k, v in day_counts.items()},
                "malformed_share": round(day_counts["files"] and day_counts["malformed"] / day_counts["files"], 4),
                "builds_with_all_junit_malformed": len(lost),
            },
            partition_key=plan.day,
        )
        context.log.info(
            f"junit_results {plan.day}: {len(plan.wanted)} builds, {n_fetched} fetched, {len(plan.done)} already staged"
        )

    parse_slots = threading.BoundedSemaphore(settings.parse_slots)
    open_days: dict[str, dict] = {}
    for plan in plans:
        open_days[plan.day] = {"plan": plan, "left": len(plan.todo), "rows": [], "chunks": [], "n": 0,
                               "counts": dict.fromkeys(("files", "bytes", "malformed", "too_large", "tests", "bad_times"), 0)}
    for plan in plans:
        if not plan.todo:
            finish_day(plan, [JUNIT_SCHEMA.empty_table()], 0, open_days.pop(plan.day)["counts"])
    todo = [(plan.day, path, plan.wanted[path]) for plan in plans for path in plan.todo]
    with ThreadPoolExecutor(max_workers=settings.fetch_threads) as pool, \
            ThreadPoolExecutor(max_workers=max(1, settings.fetch_threads // 4)) as list_pool:
        for first in range(0, len(todo), JUNIT_CHUNK):
            chunk = todo[first : first + JUNIT_CHUNK]
            listed = _list_junit(list_pool, artifacts, [p for _, p, _ in chunk])

            def fetch(item, listed=listed):
                day, path, finished_hash = item
                files = listed[path].result()[path] if listed else None
                result = collect.fetch_junit(
                    artifacts, path, finished_hash, settings.max_junit_file_bytes,
                    files=files, parse_slots=parse_slots,
                )
                return day, result

            for day, result in fetch_unordered(pool, fetch, chunk, 2 * settings.fetch_threads):
                state = open_days[day]
                for problem in result.problems:
                    context.log.warning(f"junit_results {day}: {problem}")
                for k in ("files", "bytes", "malformed", "too_large", "bad_times"):
                    state["counts"][k] += getattr(result, k)
                state["counts"]["tests"] += len(result.tests)
                state["rows"].append(
                    {
                        "path": result.path, "finished_hash": result.finished_hash, "tests": result.tests,
                        "files": result.files, "bytes": result.bytes, "malformed": result.malformed,
                        "too_large": result.too_large,
                    }
                )
                state["n"] += 1
                state["left"] -= 1
                if len(state["rows"]) >= ARROW_CHUNK or not state["left"]:  # Python dicts of tests are large: keep them few
                    state["chunks"].append(pa.Table.from_pylist(state["rows"], schema=JUNIT_SCHEMA))
                    state["rows"] = []
                if not state["left"]:
                    finish_day(state["plan"], state["chunks"], state["n"], state["counts"])
                    del open_days[day]
    per_day.sort(key=lambda d: d["day"])
    elapsed = time.monotonic() - t0
    share = totals["files"] and totals["malformed"] / totals["files"]
    yield dg.MaterializeResult(
        metadata={
            **{f"junit_{k}" if k in ("files", "bytes", "malformed", "too_large") else k: v for k, v in totals.items()},
            "malformed_share": round(share, 4),
            "builds_with_all_junit_malformed": len(all_malformed),
            "artifact_retries": artifacts.retries - retries_before,
            "artifacts_refused": report_refused(context, artifacts, refused_before, "junit_results"),
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
    yield dg.AssetCheckResult(
        check_name="no_build_with_all_junit_malformed",
        passed=not all_malformed,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "builds": len(all_malformed),
            "examples": dg.MetadataValue.md(md_table(
                [{**b, "path": md_link(b["path"], settings.artifact_url)} for b in all_malformed[:20]],
                ["path", "files", "malformed"], raw=("path",),
            )),
        },
        description="Builds whose every JUnit file failed to parse: their rows have no tests.",
    )

@dg.asset(
    partitions_def=DAYS,
    group_name=STAGING_GROUP,
    deps=["junit_results", ALL_BUCKETS_METADATA],
    pool="staging",
    backfill_policy=DAYS_PER_BACKFILL_RUN,
    kinds={"python", "parquet"},
    code_version="1",
    description="One contract row per build finished that day (Kettle's make_json), as staging Parquet.",
)
def build_rows(
    context: dg.AssetExecutionContext, config: RowsConfig, staging: StagingStore, settings: KettleSettings
) -> dg.MaterializeResult:
    buckets = settings.buckets
    rebuild = config.rebuild or config.refetch
    totals = dict(rows=0, tests=0, tests_failed=0, problems=0, waiting_for_junit=0, rows_trimmed=0, bytes=0)
    trims: list[dict] = []
    preview: list[dict] = []
    per_day: list[dict] = []
    for day in context.partition_keys:
        before = dict(totals)
        metadata = staging.read_metadata(day)
        wanted = dict(zip(metadata.column("path").to_pylist(), metadata.column("finished_hash").to_pylist()))
        existing = staging.read_rows(day, ["path", "_finished_hash"])
        current = {
            p for p, h in zip(existing.column("path").to_pylist(), existing.column("_finished_hash").to_pylist())
            if h == _row_version(wanted.get(p)) and not rebuild
        }
        todo = sorted(p for p in wanted if p not in current)
        removed = set(existing.column("path").to_pylist()) - set(wanted)
        if not todo and not removed and staging.rows_file(day).exists():
            per_day.append({"day": day, "rows": 0, "bytes": 0})
            context.add_asset_metadata(
                {**{k: 0 for k in totals}, "rows_built": 0, "dagster/row_count": existing.num_rows}, partition_key=day
            )
            context.log.info(f"build_rows {day}: {len(current)} rows current, nothing to rebuild")
            continue
        metadata = metadata.filter(pc.is_in(metadata.column("path"), pa.array(todo, pa.string())))
        junit_all = staging.read_junit(day).select(["path", "finished_hash", "tests"])
        chunks, built = [], 0
        for first in range(0, metadata.num_rows, ARROW_CHUNK):
            meta_chunk = metadata.slice(first, ARROW_CHUNK)
            chunk_paths = meta_chunk.column("path")
            junit = junit_all.filter(pc.is_in(junit_all.column("path"), chunk_paths.combine_chunks()))
            staged = {r["path"]: r for r in junit.to_pylist()}
            rows = []
            for meta in meta_chunk.to_pylist():
                row = _row_for(context, day, meta, staged.get(meta["path"]), buckets, settings, totals, trims)
                if row is not None:
                    rows.append(row)
            built += len(rows)
            totals["tests"] += sum(r["tests_run"] for r in rows)
            totals["tests_failed"] += sum(r["tests_failed"] for r in rows)
            preview.extend(rows[: max(0, 10 - len(preview))])
            chunks.append(pa.Table.from_pylist(rows, schema=ROW_SCHEMA))
        del junit_all
        new = pa.concat_tables(chunks) if chunks else ROW_SCHEMA.empty_table()
        kept = set(existing.column("path").to_pylist()) - set(todo) - removed
        # a day rebuilt whole (a cold sync, a rebuild) need not read its old rows at all
        table = _replace_paths(staging.read_rows(day), set(todo) | removed, new) if kept else new.sort_by("path")
        size = staging.write_rows(day, table)
        totals["rows"] += built
        totals["bytes"] += size
        per_day.append({"day": day, "rows": built, "bytes": size})
        context.add_asset_metadata(
            {**{k: totals[k] - before[k] for k in totals}, "rows_built": built, "dagster/row_count": table.num_rows},
            partition_key=day,
        )
        context.log.info(
            f"build_rows {day}: {built} rows built, {len(current)} current, {len(removed)} removed; "
            f"{table.num_rows} rows staged"
        )
    return dg.MaterializeResult(
        metadata={
            **totals,
            "dagster/row_count": totals["rows"],
            "partitions_in_run": len(per_day),
            "per_day": dg.MetadataValue.md(md_table(per_day, ["day", "rows", "bytes"])),
            "trimmed_rows": dg.MetadataValue.md(md_table(trims[:20], ["path", "trim"])),
            "preview": dg.MetadataValue.md(md_table(
                [{**r, "path": md_link(r["path"], settings.artifact_url)} for r in preview],
                ["path", "job", "result", "tests_run", "tests_failed"], raw=("path",),
            )),
            "rows_built": totals["rows"],
        }
    )

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


@dataclass
class DayPlan:
    """What junit_results does for one day: the builds staged, which JUnit results are stale or
    current, and which builds to fetch."""

    day: str
    read_at: float
    wanted: dict
    stale: set
    done: set
    todo: list


def _list_junit(pool: ThreadPoolExecutor, artifacts: ArtifactStore, paths: list[str]) -> dict[str, Future]:
    """Each build's pending listing of its JUnit files (shared listings on a remote store);
    empty when each build lists its own folder as it is fetched (a local folder)."""
    if not artifacts.lists_by_glob:
        return {}
    futures = {}
    for listing in junit_listings(paths):
        future = pool.submit(junit_files, artifacts, listing)
        futures.update(dict.fromkeys(listing.builds, future))
    return futures


def builds_with_all_junit_malformed(junit: pa.Table) -> list[dict]:
    """Staged builds that had JUnit files and could parse none of them."""
    return [
        r for r in junit.select(["path", "files", "malformed"]).to_pylist()
        if r["files"] and r["malformed"] == r["files"]
    ]


def _row_for(context, day, meta, tests, buckets, settings, totals, trims) -> dict | None:
    """One staged build to its contract row (with its make_json line), or None while its
    JUnit results are not staged yet: no row rather than a row without tests."""
    path = meta["path"]
    if tests is None or tests["finished_hash"] != meta["finished_hash"]:
        totals["waiting_for_junit"] += 1
        context.log.info(f"build_rows {day}: {path} waits for junit_results")
        return None
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
    row["_json"] = row_json(row)
    row["_finished_hash"] = _row_version(meta["finished_hash"])
    return row


def _loads(text: str | None) -> dict | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # collection already counted it; staged text predates that check
        return None
    return value if isinstance(value, dict) else None
