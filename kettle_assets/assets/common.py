"""Group names, policies and metadata helpers shared by the assets."""


import queue
import warnings
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Callable, Iterable, Iterator

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

ARROW_CHUNK = 25  # builds turned from Python objects into Arrow at a time (bounds memory)

# Every day reads the metadata of every bucket.
ALL_BUCKETS_METADATA = dg.AssetDep("build_metadata", partition_mapping=dg.AllPartitionMapping())

BUCKET_GROUP = "collect"
STAGING_GROUP = "stage"
WAREHOUSE_GROUP = "warehouse"

# The assets' `backfill_policy` parameter is marked beta.
warnings.filterwarnings("ignore", category=dg.BetaWarning, message=".*backfill_policy")

# A backfill of many days runs a month at a time, so no run holds the warehouse pool for long.
DAYS_PER_BACKFILL_RUN = dg.BackfillPolicy.multi_run(max_partitions_per_run=31)

# Kettle's monitor.py failed when a table had not changed for 6 hours.
STALE_AFTER_6_HOURS = dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=6), warn_window=timedelta(hours=2))


def md_table(rows: list[dict], cols: list[str], raw: tuple[str, ...] = ()) -> str:
    """A small Markdown table for materialization previews; `raw` columns (links) are kept whole."""
    if not rows:
        return "_nothing_"
    head = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    body = "\n".join(
        "| " + " | ".join(
            str(r.get(c, "")).replace("|", "\\|").replace("\n", " ")[: None if c in raw else 120] for c in cols
        ) + " |"
        for r in rows
    )
    return head + body


def report_refused(context, artifacts, before: int, stage: str) -> int:
    """One log line for the objects a stage's store refused since `before`; returns how many."""
    paths = artifacts.refused_paths[before:]
    if paths:
        shown = ", ".join(paths[:5]) + (" …" if len(paths) > 5 else "")
        context.log.warning(f"{stage}: {len(paths)} symlinks refused (nothing outside the artifact root is read): {shown}")
    return len(paths)
def fetch_unordered(pool: ThreadPoolExecutor, fn: Callable, items: Iterable, in_flight: int) -> Iterator:
    """`fn` over `items` on `pool`, results as they finish, at most `in_flight` pending.

    Unlike `pool.map`, a slow or stalled item holds only its own slot: finished
    results are handed on at once rather than queued behind it, so memory stays
    bounded by `in_flight` results whatever the number of items. Finished futures
    arrive on a queue, so each costs the same whatever is pending (waiting on the
    pending set cost a pass over it per result: a local folder's quick reads were
    slower through it than the reads themselves).
    """
    finished: queue.SimpleQueue = queue.SimpleQueue()
    pending = 0
    for item in items:
        if pending >= in_flight:
            pending -= 1
            yield finished.get().result()
        pool.submit(fn, item).add_done_callback(finished.put)
        pending += 1
    while pending:
        pending -= 1
        yield finished.get().result()


def replace_paths(existing: pa.Table, paths: set[str], new: pa.Table) -> pa.Table:
    """`existing` without `paths`, plus `new`, sorted by path: an Arrow-level upsert."""
    if paths and existing.num_rows:
        existing = existing.filter(pc.invert(pc.is_in(existing.column("path"), pa.array(sorted(paths)))))
    return pa.concat_tables([existing, new.cast(existing.schema)]).sort_by("path")
