"""Per-bucket stages: find new builds (`build_listing`), fetch their metadata (`build_metadata`)."""


import time
from typing import Iterator, Optional
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from concurrent.futures import ThreadPoolExecutor

import dagster as dg
import pyarrow as pa

from ..core import collect
from ..core.listing import Candidate, ListingStats, list_candidates
from ..resources.artifacts import ArtifactStore
from ..resources.staging import KNOWN_SCHEMA, METADATA_SCHEMA, StagingStore
from ..resources.settings import KettleSettings
from .partitions import BUCKETS
from .common import BUCKET_GROUP, fetch_unordered, md_table, report_refused

FETCH_CHUNK = 5000  # builds fetched and merged into staging at a time


class ListingConfig(dg.Config):
    recheck_paths: list[str] = []  # build folders to fetch again even though known (e.g. finished.json changed)


class MetadataConfig(dg.Config):
    as_of: Optional[float] = None  # the "now" that decides which unfinished builds are given up; default: now
    # Streaming: fetch exactly these build folders of the bucket (known or not) instead of the listing.
    builds: list[str] = []


def _windowed_map(pool: ThreadPoolExecutor, fn, items: list, window: int) -> Iterator:
    """`pool.map` a window at a time: jobs are listed concurrently, but only a window's
    build lists are held at once."""
    for first in range(0, len(items), window):
        yield from pool.map(fn, items[first : first + window])


def _bucket(settings: KettleSettings, key: str):
    return settings.buckets.by_key(key)


@dg.asset(
    partitions_def=BUCKETS,
    group_name=BUCKET_GROUP,
    kinds={"python", "parquet"},
    code_version="1",
    description="Builds in one bucket not collected yet (Kettle's listing rules), written to staging.",
)
def build_listing(
    context: dg.AssetExecutionContext, config: ListingConfig, artifacts: ArtifactStore,
    staging: StagingStore, settings: KettleSettings,
) -> dg.MaterializeResult:
    key = context.partition_key
    bucket = _bucket(settings, key)
    started = time.monotonic()
    retries_before, refused_before = artifacts.retries, artifacts.refused
    known = staging.read_known(bucket.slug)
    known_keys = set(known.column("listed_as").to_pylist())
    stats = ListingStats()
    with ThreadPoolExecutor(max_workers=settings.fetch_threads) as pool:
        records = [
            {"listed_as": c.listed_as, "job": c.job, "path": c.path}
            for c in list_candidates(
                artifacts, bucket, known_keys, stats, map_jobs=lambda fn, jobs: _windowed_map(pool, fn, jobs, settings.fetch_threads)
            )
        ]
    seen = {r["listed_as"] for r in records}
    for path in config.recheck_paths:
        path = path.rstrip("/")
        if path.startswith(bucket.url) and path not in seen:
            parent = path.rsplit("/", 2)
            job = parent[-2] if len(parent) >= 3 else ""
            if bucket.excludes(job):
                continue
            records.append({"listed_as": path, "job": job, "path": path})
    size = staging.write_listing(bucket.slug, records)
    elapsed = time.monotonic() - started
    context.log.info(
        f"build_listing {key}: {stats.jobs} jobs ({stats.jobs_excluded} excluded), "
        f"{stats.builds_seen} builds seen, {stats.known_skipped} known, {len(records)} candidates in {elapsed:.1f}s"
    )
    return dg.MaterializeResult(
        metadata={
            "jobs": stats.jobs,
            "jobs_excluded": stats.jobs_excluded,
            "builds_seen": stats.builds_seen,
            "builds_known": len(known_keys),
            "candidates": len(records),
            "bad_paths": stats.bad_paths,
            "artifact_retries": artifacts.retries - retries_before,
            "artifacts_refused": report_refused(context, artifacts, refused_before, f"build_listing {key}"),
            "bytes": dg.MetadataValue.int(size),
            "seconds": round(elapsed, 2),
            "preview": dg.MetadataValue.md(md_table(records[:10], ["job", "listed_as"])),
        }
    )

@dg.asset(
    partitions_def=BUCKETS,
    group_name=BUCKET_GROUP,
    deps=[build_listing],
    kinds={"python", "parquet"},
    code_version="1",
    description=(
        "started.json/finished.json of each listed build; finished builds are staged by the UTC day "
        "they finished, unfinished ones retried next time, ones started over 5 days ago given up."
    ),
)
def build_metadata(
    context: dg.AssetExecutionContext, config: MetadataConfig, artifacts: ArtifactStore,
    staging: StagingStore, settings: KettleSettings,
) -> dg.MaterializeResult:
    key = context.partition_key
    bucket = _bucket(settings, key)
    if config.builds:
        candidates, not_in_bucket = named_candidates(bucket, settings, config.builds, context.log)
    else:
        listing = staging.read_listing(bucket.slug).to_pylist()
        candidates, not_in_bucket = [Candidate(r["listed_as"], r["job"], r["path"]) for r in listing], 0
    now = config.as_of if config.as_of is not None else time.time()
    t0 = time.monotonic()
    retries_before, refused_before = artifacts.retries, artifacts.refused
    states: Counter = Counter()
    problems: list[str] = []
    merged = MergeCounts()
    known_by_path = {r["path"]: r for r in staging.read_known(bucket.slug).to_pylist()}
    with ThreadPoolExecutor(max_workers=settings.fetch_threads) as pool:
        # Chunks bound memory on a cold sync of a large bucket, and each chunk's
        # progress is kept even if a later one fails.
        for first in range(0, len(candidates), FETCH_CHUNK):
            chunk = candidates[first : first + FETCH_CHUNK]
            collected: list[collect.BuildMeta] = []
            for meta in fetch_unordered(pool, lambda c: collect.fetch_build(artifacts, c, now), chunk, 2 * settings.fetch_threads):
                for p in meta.problems:
                    context.log.warning(f"build_metadata {key}: {p}")
                problems.extend(meta.problems)
                owner = settings.buckets.owner_of(meta.path) if meta.path else None
                if meta.state in (collect.FINISHED, collect.GIVEN_UP) and owner not in (None, bucket):
                    # a PR entry naming another bucket's build: that bucket collects it, once
                    context.log.warning(
                        f"build_metadata {key}: {meta.listed_as} points at {meta.path}, a build of "
                        f"{owner.url}; skipped here"
                    )
                    meta.state = "foreign"
                elif meta.state == collect.FINISHED and bucket.excludes(_job_of(meta.path)):
                    meta.state = "excluded"  # a PR entry whose folder belongs to an excluded job
                states[meta.state] += 1
                if meta.state in (collect.FINISHED, collect.GIVEN_UP):
                    collected.append(meta)
            merge_into_staging(staging, bucket, collected, known_by_path, merged)
            context.log.info(f"build_metadata {key}: fetched {first + len(chunk)}/{len(candidates)} builds")
    by_day = merged.by_day
    affected = sorted(merged.affected)
    new, updated, unchanged = merged.new, merged.updated, merged.unchanged
    elapsed = time.monotonic() - t0
    context.log.info(
        f"build_metadata {key}: {len(candidates)} fetched in {elapsed:.1f}s: {new} new finished, "
        f"{updated} updated, {states[collect.UNFINISHED]} unfinished, {states[collect.GIVEN_UP]} given up, "
        f"{states[collect.ABSENT]} absent, {len(problems)} problems; days affected: {', '.join(affected) or 'none'}"
    )
    return dg.MaterializeResult(
        metadata={
            "fetched": len(candidates),
            "new_finished": new,
            "updated": updated,
            "unchanged": unchanged,
            "unfinished": states[collect.UNFINISHED],
            "given_up": states[collect.GIVEN_UP],
            "absent": states[collect.ABSENT],
            "excluded": states["excluded"],
            "foreign_builds": states["foreign"],
            "bad_paths": states[collect.BAD_PATH],
            "named_builds": len(config.builds),
            "named_not_in_bucket": not_in_bucket,
            "artifact_retries": artifacts.retries - retries_before,
            "artifacts_refused": report_refused(context, artifacts, refused_before, f"build_metadata {key}"),
            "problems": len(problems),
            "known_builds": len(known_by_path),
            "affected_days": dg.MetadataValue.json(affected),
            "seconds": round(elapsed, 2),
            "preview": dg.MetadataValue.md(
                md_table([{"day": d, "builds": by_day[d]} for d in affected[:20]], ["day", "builds"])
            ),
            "problems_preview": dg.MetadataValue.md(md_table([{"problem": p} for p in problems[:10]], ["problem"])),
        }
    )


@dataclass
class MergeCounts:
    new: int = 0
    updated: int = 0
    unchanged: int = 0
    by_day: Counter = field(default_factory=Counter)  # day -> builds staged into it
    affected: set = field(default_factory=set)  # days whose staged builds changed


def merge_into_staging(
    staging: StagingStore, bucket, collected: list[collect.BuildMeta], known_by_path: dict, counts: MergeCounts
) -> None:
    """Stage finished builds by day and record them (and given-up ones) as known.

    A build whose finished.json changed replaces its old record, leaving the day
    it was filed under if its finished time moved: updated, never doubled.
    The known index is written last, so a failure before it means a re-fetch, not a loss.
    """
    incoming: dict[str, dict[str, collect.BuildMeta]] = defaultdict(dict)
    moved_out: dict[str, set[str]] = defaultdict(set)
    for meta in collected:
        old = known_by_path.get(meta.path)
        if meta.state == collect.GIVEN_UP:
            if old is None:
                known_by_path[meta.path] = _known_record(meta)
            continue
        if old is not None and old["listed_as"] != old["path"]:
            meta.listed_as = old["listed_as"]  # keep the listing's key (a PR directory entry), whoever fetched it
        if old is not None and old["state"] == collect.FINISHED:
            if old["finished_hash"] == meta.finished_hash:
                counts.unchanged += 1
                if old["listed_as"] != meta.listed_as:
                    known_by_path[meta.path] = _known_record(meta)
                continue
            counts.updated += 1
            if old["day"] != meta.day:
                moved_out[old["day"]].add(meta.path)
        else:
            counts.new += 1
        known_by_path[meta.path] = _known_record(meta)
        incoming[meta.day][meta.path] = meta
    for day in sorted(set(incoming) | set(moved_out)):
        arriving = incoming.get(day, {})
        leaving = moved_out.get(day, set())
        current = staging.read_metadata(day, bucket.slug).to_pylist()
        kept = [r for r in current if r["path"] not in arriving and r["path"] not in leaving]
        kept.extend(_metadata_record(bucket.key, m) for m in arriving.values())
        kept.sort(key=lambda r: r["path"])
        staging.write_metadata(day, bucket.slug, pa.Table.from_pylist(kept, schema=METADATA_SCHEMA))
        counts.by_day[day] += len(arriving)
        counts.affected.add(day)
    staging.mark_dirty(incoming.keys() | moved_out.keys())
    if collected:
        rows = sorted(known_by_path.values(), key=lambda r: r["listed_as"])
        staging.write_known(bucket.slug, pa.Table.from_pylist(rows, schema=KNOWN_SCHEMA))


def named_candidates(bucket, settings: KettleSettings, paths: list[str], log) -> tuple[list[Candidate], int]:
    """Build folders named by a notification, as candidates of `bucket`: those of another
    bucket (or of none) are logged and counted, those of excluded jobs left out."""
    candidates, elsewhere = [], 0
    for path in sorted(set(p.rstrip("/") for p in paths)):
        if settings.buckets.owner_of(path) is not bucket:
            log.warning(f"build_metadata {bucket.key}: {path} is not a build of this bucket; ignored")
            elsewhere += 1
        elif bucket.excludes(_job_of(path)):
            log.info(f"build_metadata {bucket.key}: {path}: job excluded by buckets.yaml; ignored")
        else:
            candidates.append(Candidate(listed_as=path, job=_job_of(path), path=path))
    return candidates, elsewhere


def _job_of(path: str) -> str:
    return path.rsplit("/", 2)[-2]


def _known_record(meta: collect.BuildMeta) -> dict:
    return {
        "listed_as": meta.listed_as,
        "path": meta.path,
        "job": meta.job,
        "state": meta.state,
        "day": meta.day,
        "finished_hash": meta.finished_hash,
    }


def _metadata_record(bucket_key: str, meta: collect.BuildMeta) -> dict:
    return {
        "bucket": bucket_key,
        "listed_as": meta.listed_as,
        "job": meta.job,
        "path": meta.path,
        "started_json": meta.started_json,
        "finished_json": meta.finished_json,
        "finished_hash": meta.finished_hash,
        "day": meta.day,
    }
