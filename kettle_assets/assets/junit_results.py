"""`junit_results`: the parsed JUnit results of every build finished that day (staging Parquet).

Only the builds not fetched yet, or whose finished.json changed, are downloaded; every day of a
run is fetched in one bounded stream.
"""

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import dagster as dg
import pyarrow as pa

from ..core import collect
from ..core.listing import junit_files, junit_listings
from ..resources.artifacts import ArtifactStore
from ..resources.settings import KettleSettings
from ..resources.memory import return_freed_memory
from ..resources.staging import JUNIT_SCHEMA, StagingStore
from .common import (
    ALL_BUCKETS_METADATA, ARROW_CHUNK, DAYS_PER_BACKFILL_RUN, STAGING_GROUP, fetch_unordered, md_table,
    replace_paths, report_refused,
)
from .links import md_link
from .partitions import DAYS

JUNIT_CHUNK = 5000  # builds whose JUnit listings are held at a time
MALFORMED_SHARE_LIMIT = 0.05  # more malformed JUnit files than this fails the check


class JUnitConfig(dg.Config):
    refetch: bool = False  # re-read every build's JUnit files, even those whose finished.json is unchanged


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
            have = replace_paths(have, plan.stale | set(plan.todo), pa.concat_tables(chunks))
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
    return_freed_memory()
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
