"""Partitions, group names and metadata helpers shared by the assets."""


from datetime import timedelta

import dagster as dg

from ..core.config import BucketSet

BUCKET_GROUP = "collect"
STAGING_GROUP = "stage"
WAREHOUSE_GROUP = "warehouse"

# Kettle's monitor.py failed when a table had not changed for 6 hours.
STALE_AFTER_6_HOURS = dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=6), warn_window=timedelta(hours=2))


def bucket_partitions(buckets: BucketSet) -> dg.StaticPartitionsDefinition:
    """One partition per bucket of buckets.yaml, keyed `bucket/prefix`."""
    return dg.StaticPartitionsDefinition(buckets.keys)


def day_partitions(start_date: str) -> dg.DailyPartitionsDefinition:
    """UTC days of the finished time; end_offset=1 so today exists."""
    return dg.DailyPartitionsDefinition(start_date=start_date, end_offset=1, timezone="UTC")


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
