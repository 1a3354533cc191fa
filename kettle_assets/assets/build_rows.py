"""`build_rows`: one contract row per build finished that day (Kettle's make_json), as staging Parquet.

Only rows whose inputs changed (finished.json, JUnit results, the row logic's version) are rebuilt.
"""

import json

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from ..core.rows import RowProblems, build_row, row_json, trim_row
from ..core.schema import ROW_SCHEMA
from ..resources.settings import KettleSettings
from ..resources.memory import return_freed_memory
from ..resources.staging import StagingStore
from .common import ALL_BUCKETS_METADATA, ARROW_CHUNK, DAYS_PER_BACKFILL_RUN, STAGING_GROUP, md_table, replace_paths
from .links import md_link
from .partitions import DAYS


class RowsConfig(dg.Config):
    rebuild: bool = False  # rebuild every row of the day, not only those whose inputs changed
    refetch: bool = False  # with junit_results' refetch: rebuild every row from the re-read results


# Bump when build_row's output changes: every staged row is then rebuilt on its day's next run.
ROW_LOGIC_VERSION = "1"


def _row_version(finished_hash: str | None) -> str | None:
    return None if finished_hash is None else f"{ROW_LOGIC_VERSION}:{finished_hash}"


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
        table = replace_paths(staging.read_rows(day), set(todo) | removed, new) if kept else new.sort_by("path")
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
    return_freed_memory()
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
