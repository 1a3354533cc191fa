"""What each page of the CI report shows: the warehouse queries (DuckDB's dialect) and the
shaping of their rows into plain page data (dicts and lists), with plotly figure specs.

Nothing here reads or writes: the asset runs the queries and hands the rows in, the renderer
turns the page data into HTML.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Iterable, Sequence

PASS, FAIL, FLAKY = "pass", "fail", "flaky"
PASS_COLOR, FAIL_COLOR, FLAKY_COLOR = "#2e7d32", "#c62828", "#ef6c00"


@dataclass(frozen=True)
class ReportWindow:
    """[start, end) of the builds the report looks at, by started time."""

    start: datetime
    end: datetime

    @classmethod
    def last_days(cls, days: int, as_of: datetime) -> "ReportWindow":
        return cls(as_of - timedelta(days=days), as_of)

    def where(self, column: str = "started") -> str:
        return f"{column} >= {_ts(self.start)} AND {column} < {_ts(self.end)}"


def _ts(value: datetime) -> str:
    return f"TIMESTAMP '{value.astimezone(timezone.utc).strftime('%Y-%m-%d %H:%M:%S')}'"


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def bucket_sql(bucket_urls: Sequence[str]) -> str:
    """The buckets.yaml entry a build's path is under (the longest matching URL), else its gs:// bucket."""
    cases = " ".join(
        f"WHEN starts_with(path, {_sql_str(url)}) THEN {_sql_str(url)}"
        for url in sorted(bucket_urls, key=len, reverse=True)
    )
    fallback = "'gs://' || split_part(replace(path, 'gs://', ''), '/', 1) || '/'"
    return f"CASE {cases} ELSE {fallback} END" if cases else fallback


# --- queries ------------------------------------------------------------------------------

def overview_sql(window: ReportWindow, bucket_urls: Sequence[str]) -> str:
    """Builds and passes per UTC day and bucket."""
    return f"""
        SELECT CAST(started AS DATE) AS day, {bucket_sql(bucket_urls)} AS bucket,
               count(*) AS builds, count(*) FILTER (WHERE result = 'SUCCESS') AS passes
        FROM "all" WHERE {window.where()}
        GROUP BY ALL ORDER BY day, bucket
    """


def unstarted_builds_sql() -> str:
    """Builds the report cannot place in time (no `started`): counted, not shown."""
    return 'SELECT count(*) AS n FROM "all" WHERE started IS NULL'


def job_days_sql(window: ReportWindow) -> str:
    """Per job and UTC day: runs, failures, p50/p99 minutes."""
    return f"""
        SELECT job, CAST(started AS DATE) AS day, count(*) AS runs,
               count(*) FILTER (WHERE result IS DISTINCT FROM 'SUCCESS') AS failures,
               round(quantile_cont(elapsed, 0.5) / 60.0, 2) AS p50_minutes,
               round(quantile_cont(elapsed, 0.99) / 60.0, 2) AS p99_minutes
        FROM "all" WHERE {window.where()} AND job IS NOT NULL
        GROUP BY ALL ORDER BY job, day
    """


def jobs_sql(window: ReportWindow) -> str:
    """Per job over the window: runs, failure rate, p50/p99 minutes, the latest build and pass."""
    return f"""
        WITH w AS (SELECT * FROM "all" WHERE {window.where()} AND job IS NOT NULL)
        SELECT job, count(*) AS runs,
               count(*) FILTER (WHERE result IS DISTINCT FROM 'SUCCESS') AS failures,
               round(count(*) FILTER (WHERE result IS DISTINCT FROM 'SUCCESS') / count(*), 3) AS failure_rate,
               round(quantile_cont(elapsed, 0.5) / 60.0, 2) AS p50_minutes,
               round(quantile_cont(elapsed, 0.99) / 60.0, 2) AS p99_minutes,
               arg_max(result, started) AS latest_result, arg_max(path, started) AS latest_path,
               max(started) AS latest_started,
               max(started) FILTER (WHERE result = 'SUCCESS') AS latest_pass
        FROM w GROUP BY job ORDER BY failure_rate DESC, runs DESC, job
    """


def grid_builds_sql(window: ReportWindow, builds: int) -> str:
    """Each job's last `builds` builds of the window, newest first."""
    return f"""
        SELECT job, path, number, started, result
        FROM "all" WHERE {window.where()} AND job IS NOT NULL
        QUALIFY row_number() OVER (PARTITION BY job ORDER BY started DESC, number DESC, path DESC) <= {int(builds)}
        ORDER BY job, started DESC, number DESC, path DESC
    """


def grid_results_sql(window: ReportWindow, builds: int) -> str:
    """Per job, test and grid build: whether it failed, passed, or both (a retried test); only
    tests that failed at least once in the job's grid, and how many tests always passed."""
    return f"""
        WITH b AS ({grid_builds_sql(window, builds)}),
        r AS (
            SELECT t.job, t.path, t.name, bool_or(t.failed) AS any_failed, bool_and(t.failed) AS all_failed
            FROM test_results AS t JOIN b ON t.path = b.path
            WHERE t.name IS NOT NULL
            GROUP BY ALL
        ),
        failing AS (SELECT DISTINCT job, name FROM r WHERE any_failed)
        SELECT r.job, r.path, r.name, r.any_failed, r.all_failed
        FROM r JOIN failing AS f ON f.job = r.job AND f.name = r.name
        ORDER BY r.job, r.name
    """


def grid_passing_sql(window: ReportWindow, builds: int) -> str:
    """Per job: tests that passed in every grid build they ran in (left out of the grid)."""
    return f"""
        WITH b AS ({grid_builds_sql(window, builds)}),
        r AS (
            SELECT t.job, t.name, bool_or(t.failed) AS any_failed
            FROM test_results AS t JOIN b ON t.path = b.path WHERE t.name IS NOT NULL GROUP BY ALL
        )
        SELECT job, count(*) AS tests FROM r WHERE NOT any_failed GROUP BY job
    """


def unnamed_tests_sql(window: ReportWindow) -> str:
    return f"SELECT count(*) AS n FROM test_results WHERE {window.where()} AND name IS NULL"


def flaky_tests_sql() -> str:
    """Tests that flipped this week (table test_flakiness), flakiest first."""
    return """
        SELECT job, name, considered, flips, flakiness, previous_flakiness, trend
        FROM test_flakiness WHERE flips > 0 AND name IS NOT NULL
        ORDER BY flakiness DESC, flips DESC, job, name
    """


def flaky_jobs_sql() -> str:
    """Jobs with commits whose runs both passed and failed this week (table metric_flakes)."""
    return """
        SELECT job, any_value(flakes) AS flakes, any_value(runs) AS runs, any_value(commits) AS commits,
               any_value(commit_consistency) AS commit_consistency, any_value(build_consistency) AS build_consistency
        FROM metric_flakes WHERE job IS NOT NULL GROUP BY job
        ORDER BY flakes DESC, commit_consistency, job
    """


def clusters_sql() -> str:
    return """
        SELECT cluster_id, text, owner, failures, flaky_failures, tests, jobs, first_seen, last_seen
        FROM failure_clusters ORDER BY failures DESC, cluster_id
    """


def cluster_days_sql() -> str:
    return "SELECT cluster_id, day, failures FROM failure_cluster_days ORDER BY cluster_id, day"


def cluster_failures_sql(latest: int) -> str:
    """Each cluster's latest `latest` failed tests, with their build's result, and its count."""
    return f"""
        SELECT cluster_id, path, job, number, name, started, count(*) OVER (PARTITION BY cluster_id) AS total
        FROM failure_cluster_failures
        QUALIFY row_number() OVER (PARTITION BY cluster_id ORDER BY started DESC, path, name, seq) <= {int(latest)}
        ORDER BY cluster_id, started DESC, path, name
    """


def cluster_tests_sql() -> str:
    """Per cluster, its tests and jobs with how many failures each."""
    return """
        SELECT cluster_id, name, job, count(*) AS failures
        FROM failure_cluster_failures GROUP BY ALL ORDER BY cluster_id, failures DESC, name, job
    """


def test_history_sql(window: ReportWindow, latest: int, with_clusters: bool) -> str:
    """The latest `latest` results of every test that failed in the window (or is in a cluster)."""
    clustered = "UNION SELECT name FROM failure_cluster_failures" if with_clusters else ""
    return f"""
        WITH named AS (
            SELECT name FROM test_results WHERE {window.where()} AND failed AND name IS NOT NULL {clustered}
        )
        SELECT t.name, t.job, t.path, t.number, t.started, t.time, t.failed,
               left(t.failure_text, 300) AS failure_text,
               count(*) OVER (PARTITION BY t.name) AS total
        FROM test_results AS t
        WHERE {window.where('t.started')} AND t.name IN (SELECT name FROM named)
        QUALIFY row_number() OVER (PARTITION BY t.name ORDER BY t.started DESC, t.path, t.failed) <= {int(latest)}
        ORDER BY t.name, t.started DESC, t.path, t.failed
    """


# --- shaping ------------------------------------------------------------------------------

def day_range(window: ReportWindow) -> list[str]:
    """Every UTC day the window touches, as ISO dates."""
    first = window.start.astimezone(timezone.utc).date()
    last = (window.end - timedelta(microseconds=1)).astimezone(timezone.utc).date()
    return [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]


def iso_day(value) -> str:
    """The YYYY-MM-DD of a date, a timestamp or its text."""
    return value.isoformat()[:10] if isinstance(value, (date, datetime)) else str(value)[:10]


def rate(part: float, whole: float) -> float | None:
    return round(part / whole, 3) if whole else None


def overview(rows: Iterable[dict], days: list[str]) -> dict:
    """Per bucket and in total: builds and pass rate per day, and the window's totals."""
    per_bucket: dict[str, dict[str, list[int]]] = defaultdict(lambda: {d: [0, 0] for d in days})
    for r in rows:
        day = iso_day(r["day"])
        if day in days:
            counts = per_bucket[r["bucket"]][day]
            counts[0] += int(r["builds"])
            counts[1] += int(r["passes"])
    buckets = []
    for name in sorted(per_bucket):
        series = per_bucket[name]
        builds = sum(c[0] for c in series.values())
        passes = sum(c[1] for c in series.values())
        buckets.append({
            "bucket": name, "builds": builds, "passes": passes, "pass_rate": rate(passes, builds),
            "daily_builds": [series[d][0] for d in days],
            "daily_pass_rate": [rate(series[d][1], series[d][0]) for d in days],
        })
    builds = sum(b["builds"] for b in buckets)
    passes = sum(b["passes"] for b in buckets)
    return {"days": days, "buckets": buckets, "builds": builds, "passes": passes, "pass_rate": rate(passes, builds)}


def overview_figures(data: dict) -> list[dict]:
    days = data["days"]
    builds = {
        "data": [{"type": "bar", "name": b["bucket"], "x": days, "y": b["daily_builds"]} for b in data["buckets"]],
        "layout": {"title": {"text": "Builds per day"}, "barmode": "stack", "height": 320,
                   "margin": {"t": 40, "b": 40, "l": 50, "r": 10}, "legend": {"orientation": "h"}},
    }
    rates = {
        "data": [{"type": "scatter", "mode": "lines+markers", "name": b["bucket"], "x": days,
                  "y": b["daily_pass_rate"], "connectgaps": False} for b in data["buckets"]],
        "layout": {"title": {"text": "Pass rate per day"}, "height": 320, "yaxis": {"range": [0, 1.05], "tickformat": ".0%"},
                   "margin": {"t": 40, "b": 40, "l": 50, "r": 10}, "legend": {"orientation": "h"}},
    }
    return [builds, rates]


def job_series(rows: Iterable[dict], days: list[str]) -> dict[str, dict]:
    """Per job, aligned on `days`: runs, failure rate and p50/p99 minutes (None where it did not run)."""
    by_job: dict[str, dict[str, dict]] = defaultdict(dict)
    for r in rows:
        by_job[r["job"]][iso_day(r["day"])] = r
    out = {}
    for job, per_day in by_job.items():
        got = [per_day.get(d) for d in days]
        out[job] = {
            "days": days,
            "runs": [g["runs"] if g else 0 for g in got],
            "failure_rate": [rate(g["failures"], g["runs"]) if g else None for g in got],
            "p50": [g["p50_minutes"] if g else None for g in got],
            "p99": [g["p99_minutes"] if g else None for g in got],
        }
    return out


def jobs_figures(jobs: list[dict], series: dict[str, dict], top: int = 10) -> list[dict]:
    """Failure rate and p99 duration over time of the `top` jobs failing most."""
    worst = [j["job"] for j in jobs[:top] if j["job"] in series]
    lines = {"type": "scatter", "mode": "lines+markers", "connectgaps": False}
    margin = {"t": 40, "b": 40, "l": 50, "r": 10}
    return [
        {"data": [{**lines, "name": j, "x": series[j]["days"], "y": series[j]["failure_rate"]} for j in worst],
         "layout": {"title": {"text": f"Failure rate per day (the {len(worst)} jobs failing most)"}, "height": 360,
                    "yaxis": {"range": [0, 1.05], "tickformat": ".0%"}, "margin": margin}},
        {"data": [{**lines, "name": j, "x": series[j]["days"], "y": series[j]["p99"]} for j in worst],
         "layout": {"title": {"text": "p99 duration per day (minutes)"}, "height": 360, "margin": margin}},
    ]


def job_figures(job: str, series: dict) -> list[dict]:
    margin = {"t": 40, "b": 40, "l": 50, "r": 50}
    return [
        {"data": [
            {"type": "bar", "name": "runs", "x": series["days"], "y": series["runs"], "marker": {"color": "#90a4ae"}},
            {"type": "scatter", "mode": "lines+markers", "name": "failure rate", "x": series["days"],
             "y": series["failure_rate"], "yaxis": "y2", "line": {"color": FAIL_COLOR}},
        ], "layout": {"title": {"text": f"{job}: runs and failure rate"}, "height": 320, "margin": margin,
                      "yaxis": {"title": {"text": "runs"}},
                      "yaxis2": {"overlaying": "y", "side": "right", "range": [0, 1.05], "tickformat": ".0%"},
                      "legend": {"orientation": "h"}}},
        {"data": [
            {"type": "scatter", "mode": "lines+markers", "name": name, "x": series["days"], "y": series[key]}
            for name, key in (("p50", "p50"), ("p99", "p99"))
        ], "layout": {"title": {"text": "duration (minutes)"}, "height": 320, "margin": margin,
                      "legend": {"orientation": "h"}}},
    ]


def grid(builds: list[dict], results: Iterable[dict]) -> dict:
    """A TestGrid-like grid for one job: columns are its builds (newest first), rows the tests
    that failed at least once, cells pass / fail / flaky (failed and passed in one build) / ''.
    Rows with the most failures first, then by name."""
    column = {b["path"]: i for i, b in enumerate(builds)}
    rows: dict[str, list[str]] = {}
    for r in results:
        i = column.get(r["path"])
        if i is None:
            continue
        cells = rows.setdefault(r["name"], [""] * len(builds))
        cells[i] = FAIL if r["all_failed"] else FLAKY if r["any_failed"] else PASS
    tests = [
        {"name": name, "cells": cells, "failures": sum(c == FAIL for c in cells), "flaky": sum(c == FLAKY for c in cells)}
        for name, cells in rows.items()
    ]
    tests.sort(key=lambda t: (-t["failures"], -t["flaky"], t["name"]))
    return {"builds": builds, "tests": tests}


def flaky_figures(tests: list[dict], jobs: list[dict], top: int = 15) -> list[dict]:
    """The flakiest tests this week against the week before, and the jobs with most flaky commits."""
    shown = tests[:top]
    labels = [f"{t['name'][:60]} ({t['job']})" for t in shown][::-1]
    margin = {"t": 40, "b": 40, "l": 420, "r": 10}
    figures = [] if not shown else [{
        "data": [
            {"type": "bar", "orientation": "h", "name": "this week", "y": labels, "x": [t["flakiness"] for t in shown][::-1],
             "marker": {"color": FLAKY_COLOR}},
            {"type": "bar", "orientation": "h", "name": "week before", "y": labels,
             "x": [t["previous_flakiness"] for t in shown][::-1], "marker": {"color": "#bdbdbd"}},
        ],
        "layout": {"title": {"text": "Flakiest tests: flips per 100 results"}, "barmode": "group",
                   "height": 120 + 36 * len(shown), "margin": margin, "legend": {"orientation": "h"}},
    }]
    flaky_jobs = [j for j in jobs if (j["flakes"] or 0) > 0][:top]
    if not flaky_jobs:
        return figures
    figures.append({
        "data": [{"type": "bar", "orientation": "h", "name": "flaky commits", "y": [j["job"] for j in flaky_jobs][::-1],
                  "x": [j["flakes"] for j in flaky_jobs][::-1], "marker": {"color": FLAKY_COLOR}}],
        "layout": {"title": {"text": "Jobs with most flaky commits"}, "height": 120 + 30 * max(1, len(flaky_jobs)),
                   "margin": {**margin, "l": 260}},
    })
    return figures


def trend_word(trend: float | None) -> str:
    """How a test's flakiness moved against the week before."""
    if trend is None:
        return "new"
    if trend > 0:
        return "worse"
    if trend < 0:
        return "better"
    return "same"


def highlight(text: str, spans: Sequence[int] | None) -> list[tuple[str, bool]]:
    """`text` cut into (segment, common) pieces from triage's alternating span lengths (common
    first); without spans the whole text is common (a cluster of one failure)."""
    if not spans:
        return [(text, True)] if text else []
    pieces, at, common = [], 0, True
    for length in spans:
        if length:
            pieces.append((text[at:at + length], common))
        at += length
        common = not common
    if at < len(text):
        pieces.append((text[at:], common))
    return pieces


def cluster_figure(days: list[str], counts: dict[str, int], title: str) -> dict:
    return {
        "data": [{"type": "bar", "name": "failures", "x": days, "y": [counts.get(d, 0) for d in days],
                  "marker": {"color": FAIL_COLOR}}],
        "layout": {"title": {"text": title}, "height": 280, "margin": {"t": 40, "b": 40, "l": 50, "r": 10}},
    }


def clusters_figure(top: list[dict], days_by_cluster: dict[str, dict[str, int]], days: list[str]) -> dict:
    return {
        "data": [{"type": "bar", "name": c["cluster_id"][:8], "x": days,
                  "y": [days_by_cluster.get(c["cluster_id"], {}).get(d, 0) for d in days]} for c in top],
        "layout": {"title": {"text": f"Failures per day of the {len(top)} biggest clusters"}, "barmode": "stack",
                   "height": 340, "margin": {"t": 40, "b": 40, "l": 50, "r": 10}, "legend": {"orientation": "h"}},
    }


def test_history_figure(name: str, results: list[dict]) -> dict:
    """Passes and failures per day of one test's shown results."""
    per_day: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in results:
        per_day[iso_day(r["started"])][1 if r["failed"] else 0] += 1
    days = sorted(per_day)
    return {
        "data": [
            {"type": "bar", "name": "passed", "x": days, "y": [per_day[d][0] for d in days], "marker": {"color": PASS_COLOR}},
            {"type": "bar", "name": "failed", "x": days, "y": [per_day[d][1] for d in days], "marker": {"color": FAIL_COLOR}},
        ],
        "layout": {"title": {"text": "results per day"}, "barmode": "stack", "height": 260,
                   "margin": {"t": 40, "b": 40, "l": 50, "r": 10}, "legend": {"orientation": "h"}},
    }


def pages_of(items: Sequence, per_page: int) -> list[Sequence]:
    """`items` cut into pages of `per_page` (one empty page when there are none)."""
    if per_page < 1:
        raise ValueError("per_page must be at least 1")
    return [items[i:i + per_page] for i in range(0, len(items), per_page)] or [items[:0]]


def group_by(rows: Iterable[dict], key: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        out[r[key]].append(r)
    return out
