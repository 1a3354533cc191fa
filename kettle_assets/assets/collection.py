"""Per-bucket stages: find new builds (`build_listing`), fetch their metadata (`build_metadata`)."""


import time
from typing import Optional
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor

import dagster as dg
import pyarrow as pa

from ..core import collect
from ..core.listing import Candidate, ListingStats, list_candidates
from ..resources.artifacts import ArtifactStore
from ..resources.staging import StagingStore
from ..resources.settings import KettleSettings
from .common import BUCKET_GROUP, md_table

PROGRESS_EVERY = 2000


class ListingConfig(dg.Config):
    recheck_paths: list[str] = []  # build folders to fetch again even though known (e.g. finished.json changed)


class MetadataConfig(dg.Config):
    as_of: Optional[float] = None  # the "now" that decides which unfinished builds are given up; default: now


def _bucket(settings: KettleSettings, key: str):
    return settings.buckets.by_key(key)


def make_collection_assets(partitions: dg.StaticPartitionsDefinition):
    @dg.asset(
        partitions_def=partitions,
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
        known = staging.read_known(bucket.slug)
        known_keys = set(known.column("listed_as").to_pylist())
        stats = ListingStats()
        records = [
            {"listed_as": c.listed_as, "job": c.job, "path": c.path}
            for c in list_candidates(artifacts, bucket, known_keys, stats)
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
                "bytes": dg.MetadataValue.int(size),
                "seconds": round(elapsed, 2),
                "preview": dg.MetadataValue.md(md_table(records[:10], ["job", "listed_as"])),
            }
        )

    @dg.asset(
        partitions_def=partitions,
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
        listing = staging.read_listing(bucket.slug).to_pylist()
        candidates = [Candidate(r["listed_as"], r["job"], r["path"]) for r in listing]
        now = config.as_of if config.as_of is not None else time.time()
        t0 = time.monotonic()
        states: Counter = Counter()
        problems = 0
        finished: list[collect.BuildMeta] = []
        with ThreadPoolExecutor(max_workers=settings.fetch_threads) as pool:
            for n, meta in enumerate(pool.map(lambda c: collect.fetch_build(artifacts, c, now), candidates), 1):
                if meta.problems:
                    problems += len(meta.problems)
                    for p in meta.problems:
                        context.log.warning(f"build_metadata {key}: {p}")
                if meta.state == collect.FINISHED and meta.path and bucket.excludes(_job_of(meta.path)):
                    meta.state = "excluded"
                states[meta.state] += 1
                if meta.state == collect.FINISHED:
                    finished.append(meta)
                elif meta.state == collect.GIVEN_UP:
                    finished.append(meta)  # recorded as known, never staged as a row
                if n % PROGRESS_EVERY == 0:
                    context.log.info(f"build_metadata {key}: fetched {n}/{len(candidates)} builds")

        known = staging.read_known(bucket.slug).to_pylist()
        known_by_path = {r["path"]: r for r in known if r["path"]}
        by_day: dict[str, list[collect.BuildMeta]] = defaultdict(list)
        moved_out: dict[str, set[str]] = defaultdict(set)  # day -> paths that left it
        new = updated = unchanged = 0
        for meta in finished:
            old = known_by_path.get(meta.path)
            if meta.state == collect.GIVEN_UP:
                if old is None:
                    known_by_path[meta.path] = _known_record(meta)
                continue
            if old is not None and old["state"] == collect.FINISHED and old["finished_hash"] == meta.finished_hash:
                unchanged += 1
                continue
            if old is not None and old["state"] == collect.FINISHED:
                updated += 1
                if old["day"] != meta.day:
                    moved_out[old["day"]].add(meta.path)
            else:
                new += 1
            known_by_path[meta.path] = _known_record(meta)
            by_day[meta.day].append(meta)

        affected = sorted(set(by_day) | set(moved_out))
        for day in affected:
            incoming = {m.path: m for m in by_day.get(day, [])}
            current = staging.read_metadata(day, bucket.slug).to_pylist()
            kept = [r for r in current if r["path"] not in incoming and r["path"] not in moved_out.get(day, ())]
            kept.extend(_metadata_record(bucket.key, m) for m in incoming.values())
            kept.sort(key=lambda r: r["path"])
            staging.write_metadata(day, bucket.slug, pa.Table.from_pylist(kept))
        # Known index last: if anything above fails, the builds are fetched again next time.
        known_rows = sorted(known_by_path.values(), key=lambda r: r["listed_as"])
        known_rows.extend(r for r in known if not r["path"])
        staging.write_known(bucket.slug, pa.Table.from_pylist(known_rows))

        elapsed = time.monotonic() - t0
        context.log.info(
            f"build_metadata {key}: {len(candidates)} fetched in {elapsed:.1f}s: {new} new finished, "
            f"{updated} updated, {states[collect.UNFINISHED]} unfinished, {states[collect.GIVEN_UP]} given up, "
            f"{states[collect.ABSENT]} absent, {problems} problems; days affected: {', '.join(affected) or 'none'}"
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
                "bad_paths": states[collect.BAD_PATH],
                "problems": problems,
                "known_builds": len(known_rows),
                "affected_days": dg.MetadataValue.json(affected),
                "seconds": round(elapsed, 2),
                "preview": dg.MetadataValue.md(
                    md_table([{"day": d, "builds": len(by_day.get(d, []))} for d in affected[:20]], ["day", "builds"])
                ),
            }
        )

    return build_listing, build_metadata


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
