"""Per-build and per-day anomalies a maintainer wants flagged: pure functions over plain rows."""

from __future__ import annotations

from datetime import date, timedelta
from statistics import median


def sharp_test_drops(
    builds: list[dict], history: int = 5, keep_share: float = 0.5, min_typical: int = 10
) -> list[dict]:
    """Builds that ran far fewer tests than their job usually does.

    `builds` holds `path`, `job`, `started` and `tests_run`. A build is flagged when it ran
    fewer than `keep_share` of the median of its job's `history` previous builds (by start
    time), and that median is at least `min_typical` (tiny suites vary too much to judge).
    """
    by_job: dict[str, list[dict]] = {}
    for build in builds:
        by_job.setdefault(build["job"], []).append(build)
    drops = []
    for job, runs in sorted(by_job.items()):
        runs.sort(key=lambda b: (b["started"] or 0, b["path"]))
        for i, build in enumerate(runs):
            before = [b["tests_run"] or 0 for b in runs[max(0, i - history) : i]]
            if len(before) < min(3, history):
                continue
            typical = median(before)
            if typical >= min_typical and (build["tests_run"] or 0) < keep_share * typical:
                drops.append({"path": build["path"], "job": job, "tests_run": build["tests_run"] or 0, "typical": typical})
    return drops


def thin_days(
    builds_per_day: dict[str, int], weeks: int = 4, keep_share: float = 0.5, min_typical: int = 5,
    before: str | None = None,
) -> list[dict]:
    """Days with far fewer builds than the same weekday in the `weeks` before.

    A day is flagged when its count is under `keep_share` of the median of the same weekday's
    counts in earlier weeks (those with data), and that median is at least `min_typical`.
    Days on or after `before` (e.g. today, still filling) are not judged.
    """
    thin = []
    for day, count in sorted(builds_per_day.items()):
        if before is not None and day >= before:
            continue
        d = date.fromisoformat(day)
        earlier = [
            builds_per_day[k]
            for k in ((d - timedelta(weeks=w)).isoformat() for w in range(1, weeks + 1))
            if k in builds_per_day
        ]
        if not earlier:
            continue
        typical = median(earlier)
        if typical >= min_typical and count < keep_share * typical:
            thin.append({"day": day, "builds": count, "typical": typical})
    return thin
