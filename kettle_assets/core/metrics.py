"""Per-test results, flake and health metrics: SQL definitions and output shaping.

Every query is written once, in DuckDB's dialect, and translated to BigQuery by sqlglot.
The queries avoid the constructs that differ between the two: no SUBSTR (BigQuery's
position 0 counts as 1), regexp_extract always names its group and an empty match is
turned into NULL (DuckDB gives '', BigQuery NULL), and every division guards its divisor.
The time window is rendered into the text as literals, so the same query can be asked
for any range ("since the fix").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Iterable

import sqlglot
from sqlglot import exp

TEST_RESULT_COLUMNS = [
    ("path", "VARCHAR NOT NULL"), ("job", "VARCHAR"), ("number", "BIGINT"), ("started", "TIMESTAMP"),
    ("finished", "TIMESTAMP"), ("pr", "BIGINT"), ("commit", "VARCHAR"), ("name", "VARCHAR"),
    ("time", "DOUBLE"), ("failed", "BOOLEAN NOT NULL"), ("failure_text", "VARCHAR"),
]

# Test names the flake metrics never report: wrappers that fail whenever anything does.
UNINTERESTING_TESTS = ("Test", "DiffResources", "DumpClusterLogs", "DumpFederationLogs")

# The repos text of a build: the column, else the `repos` metadata entry (JSON-encoded: unescape quotes).
REPOS_TEXT = (
    "replace(coalesce(a.repos, (SELECT m.value FROM UNNEST(a.metadata) AS u(m) WHERE m.key = 'repos' LIMIT 1)), '\\\"', '\"')"
)
# The PR head SHA of `<org>/<repo>: <base>,<pr>:<sha>`: for a batch, the last PR's.
PR_HEAD_SHA = f"nullif(regexp_extract({REPOS_TEXT}, '[^,]+,[0-9]+:([a-f0-9]+)\"', 1), '')"
COMMIT = (
    f"CASE WHEN starts_with(a.job, 'pr:') THEN {PR_HEAD_SHA} ELSE coalesce(a.repo_commit, a.version) END"
)
# PR-directory buckets keep builds under .../pull/[<org>_<repo>/]<pr>/<job>/<build>.
PR_NUMBER = "TRY_CAST(nullif(regexp_extract(a.path, '/pull/(?:[^/]+/)?([0-9]+)/', 1), '') AS BIGINT)"
# Refs in the repos text: the base plus one per PR, so exactly 2 means a single-PR (serial) run.
REPOS_REFS = f"array_length(string_split(replace({REPOS_TEXT}, ', ', ''), ','))"


def _ts(value: datetime) -> str:
    return f"TIMESTAMP '{value.astimezone(timezone.utc).strftime('%Y-%m-%d %H:%M:%S')}'"


def test_results_select(day: str, lateral_unnest: bool = False) -> str:
    """The test results of the builds of `all` finished on `day`, one row per test.

    The build's columns are worked out once a build and joined to its tests, not once a test
    (DuckDB ran the regular expressions per unnested row). DuckDB unnests the tests fastest in
    the select list; BigQuery (`lateral_unnest`) needs a join, which is what sqlglot would make
    of the select list too, but with a quadratic cross join per build.
    """
    date.fromisoformat(day)  # only a real day reaches the SQL text
    of_day = f"CAST(a.finished AS DATE) = DATE '{day}'"
    tests = (f'SELECT a.path, t FROM "all" AS a, UNNEST(a.test) AS u(t) WHERE {of_day}' if lateral_unnest
             else f'SELECT a.path, UNNEST(a.test) AS t FROM "all" AS a WHERE {of_day}')
    return f"""
        WITH builds AS (
            SELECT a.path, a.job, a.number, a.started, a.finished,
                   CASE WHEN a.path LIKE '%/pull/%' THEN {PR_NUMBER} END AS pr,
                   {COMMIT} AS "commit"
            FROM "all" AS a
            WHERE {of_day}
        ), tests AS ({tests})
        SELECT b.path, b.job, b.number, b.started, b.finished, b.pr, b."commit",
               t.t.name, CAST(t.t.time AS DOUBLE) AS time, coalesce(t.t.failed, FALSE) AS failed, t.t.failure_text
        FROM tests AS t JOIN builds AS b ON b.path = t.path
    """


@dataclass(frozen=True)
class Window:
    """[start, end) of the builds a metric looks at, by started time; `today` is the first
    instant of end's UTC day (day metrics leave the current, incomplete day out)."""

    start: datetime
    end: datetime

    @classmethod
    def last_days(cls, days: int, as_of: datetime) -> "Window":
        return cls(as_of - timedelta(days=days), as_of)

    @property
    def today(self) -> datetime:
        return self.end.astimezone(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)


def _flakes_sql(w: Window) -> str:
    names = ", ".join(f"'{n}'" for n in UNINTERESTING_TESTS)
    return f"""
    WITH builds AS (
        SELECT a.path, a.job, a.result, {COMMIT} AS "commit"
        FROM "all" AS a
        WHERE a.started > {_ts(w.start)} AND a.started <= {_ts(w.end)}
          AND (a.version <> 'unknown' OR a.repo_commit IS NOT NULL)
          AND (starts_with(a.job, 'ci-') OR coalesce({REPOS_REFS}, 0) = 2)
    ), per_commit AS (
        SELECT job, "commit", count(result) AS runs,
               sum(CASE WHEN result = 'SUCCESS' THEN 1 ELSE 0 END) AS passed
        FROM builds GROUP BY job, "commit"
    ), flaked AS (
        SELECT job, "commit", runs, passed,
               CASE WHEN passed = runs OR passed = 0 THEN 0 ELSE 1 END AS flaked
        FROM per_commit
    ), test_failures AS (
        SELECT b.job, b."commit", t.name, sum(CASE WHEN t.failed THEN 1 ELSE 0 END) AS failures
        FROM test_results AS t JOIN builds AS b ON t.path = b.path
        GROUP BY b.job, b."commit", t.name
    ), flaky_tests AS (
        SELECT f.job, f.name, count(*) AS flakes
        FROM test_failures AS f JOIN per_commit AS p ON f.job = p.job AND f."commit" IS NOT DISTINCT FROM p."commit"
        WHERE f.failures > 0 AND f.failures < p.runs AND f.name NOT IN ({names})
        GROUP BY f.job, f.name
    ), ranked AS (
        SELECT job, name, flakes, row_number() OVER (PARTITION BY job ORDER BY flakes DESC, name) AS rank
        FROM flaky_tests
    ), jobs AS (
        SELECT job,
               round(sum(CASE WHEN flaked = 1 THEN passed ELSE runs END) / nullif(sum(runs), 0), 3) AS build_consistency,
               round(1 - sum(flaked) / nullif(count(DISTINCT "commit"), 0), 3) AS commit_consistency,
               sum(flaked) AS flakes, sum(runs) AS runs, count(DISTINCT "commit") AS commits
        FROM flaked GROUP BY job
    )
    SELECT j.job, j.build_consistency, j.commit_consistency, j.flakes, j.runs, j.commits,
           r.name AS test, r.flakes AS test_flakes, r.rank AS test_rank
    FROM jobs AS j LEFT JOIN ranked AS r ON r.job = j.job AND r.rank <= 10
    ORDER BY j.flakes DESC, j.commit_consistency, j.build_consistency, j.job, r.rank
    """


def _build_stats_sql(w: Window) -> str:
    return f"""
    SELECT date_trunc('day', started) AS day,
           count(started) AS invocations,
           sum(CASE WHEN result = 'SUCCESS' THEN 1 ELSE 0 END) AS passes,
           CASE WHEN count(started) > 0
                THEN sum(CASE WHEN result = 'SUCCESS' THEN 1 ELSE 0 END) / count(started) ELSE 1 END AS rate
    FROM "all"
    WHERE started >= {_ts(w.start)} AND started < {_ts(w.today)}
    GROUP BY 1 ORDER BY 1
    """


def _failures_sql(w: Window) -> str:
    return f"""
    WITH jobs AS (
        SELECT job, count(*) AS weekly_builds FROM "all"
        WHERE started > {_ts(w.start)} AND started <= {_ts(w.end)} GROUP BY job
    ), runs AS (
        SELECT job, CAST(min(started) AS DATE) AS first_run, CAST(max(started) AS DATE) AS latest_run
        FROM "all" WHERE started <= {_ts(w.end)} GROUP BY job
    ), passes AS (
        SELECT job, max(started) AS latest_pass FROM "all"
        WHERE result = 'SUCCESS' AND started <= {_ts(w.end)} GROUP BY job
    )
    SELECT j.job, p.latest_pass, j.weekly_builds, r.first_run, r.latest_run,
           date_diff('day', coalesce(CAST(p.latest_pass AS DATE), r.first_run), CAST({_ts(w.end)} AS DATE)) AS broken_days
    FROM jobs AS j LEFT JOIN runs AS r ON j.job = r.job LEFT JOIN passes AS p ON j.job = p.job
    ORDER BY broken_days DESC, p.latest_pass NULLS FIRST, r.first_run, j.weekly_builds DESC, j.job
    """


def _health_sql(w: Window, per_day: bool) -> str:
    # BigQuery's PERCENTILE_CONT is analytic only: percentiles over the group as a window, then max().
    day = "date_trunc('day', started)"
    keys, part = (f"{day} AS day, job", f"job, {day}") if per_day else ("job", "job")
    out_keys, group = ("day, job", "day, job") if per_day else ("job", "job")
    until = w.today if per_day else w.end
    pct = "".join(
        f", quantile_cont(elapsed, {q}) OVER (PARTITION BY {part}) / 60.0 AS p{n}" for n, q in (("99", 0.99), ("75", 0.75), ("50", 0.5))
    )
    return f"""
    SELECT {out_keys}, count(*) AS runs,
           sum(CASE WHEN passed THEN 1 ELSE 0 END) AS passed_runs,
           CASE WHEN count(*) <> 0 THEN round(1 - sum(CASE WHEN passed THEN 1 ELSE 0 END) / count(*), 3) ELSE 0 END
               AS failure_rate,
           sum(tests_run) AS tests, sum(tests_failed) AS failed_tests,
           CASE WHEN sum(tests_run) <> 0 THEN round(sum(tests_failed) / sum(tests_run), 3) ELSE 0 END
               AS test_failure_rate,
           round(max(p99), 3) AS p99_duration, round(max(p75), 3) AS p75_duration, round(max(p50), 3) AS p50_duration
    FROM (
        SELECT {keys}, passed, tests_run, tests_failed{pct}
        FROM "all"
        WHERE started > {_ts(w.start)} AND started < {_ts(until)} AND elapsed IS NOT NULL
    ) AS b
    GROUP BY {group} ORDER BY {group}
    """


def _presubmit_health_sql(w: Window) -> str:
    return f"""
    WITH per_pr AS (
        SELECT date_trunc('day', started) AS day, job,
               regexp_extract(path, '/([0-9]+)/', 1) AS pr,
               sum(CASE WHEN result = 'SUCCESS' THEN 1 ELSE 0 END) AS passes, count(result) AS runs,
               sum(elapsed) AS total_elapsed, sum(CASE WHEN result = 'SUCCESS' THEN elapsed ELSE 0 END) AS passes_elapsed
        FROM "all"
        WHERE starts_with(job, 'pr:') AND started > {_ts(w.start)} AND started < {_ts(w.today)}
          AND elapsed IS NOT NULL
        GROUP BY 1, 2, 3
    ), per_job AS (
        SELECT day, job, count(*) AS prs, sum(CASE WHEN passes < runs THEN 1 ELSE 0 END) AS prs_failed,
               sum(passes_elapsed) AS total_pass_elapsed, sum(passes) AS total_passes,
               sum(total_elapsed) AS total_elapsed, sum(runs) AS total_runs
        FROM per_pr GROUP BY day, job
    )
    SELECT day, job, round(prs_failed / prs * 100, 1) AS pr_failure_perc, prs, prs_failed, total_runs,
           round(total_elapsed / nullif(total_runs, 0) / 60, 1) AS avg_run_time_minutes,
           CASE WHEN total_passes > 0 THEN round(total_pass_elapsed / total_passes / 60, 1) ELSE 0 END
               AS avg_pass_time_minutes
    FROM per_job ORDER BY day DESC, pr_failure_perc DESC, job
    """


@dataclass(frozen=True)
class Metric:
    name: str
    days: int  # the default window, ending now
    sql: callable
    description: str

    @property
    def table(self) -> str:
        return "metric_" + self.name.replace("-", "_")


METRICS = {
    m.name: m
    for m in (
        Metric("flakes", 7, _flakes_sql, "Per job: commits whose runs both passed and failed, and its 10 flakiest tests."),
        Metric("flakes-daily", 1, _flakes_sql, "`flakes` over the last day."),
        Metric("build-stats", 30, _build_stats_sql, "Builds and passes per UTC day (today excluded)."),
        Metric("failures", 7, _failures_sql, "Jobs run in the window and their days since the last pass."),
        Metric("job-health", 7, lambda w: _health_sql(w, True), "Per day and job: runs, failure rates, durations."),
        Metric("job-health-weekly", 7, lambda w: _health_sql(w, False), "Per job over the window: runs, failure rates, durations."),
        Metric("presubmit-health", 7, _presubmit_health_sql, "PR jobs per day: PRs, share failing, runs, minutes."),
    )
}


def metric_sql(name: str, window: Window, dialect: str = "duckdb") -> str:
    """The metric's query over `window`, in DuckDB's dialect or translated to `dialect`."""
    text = METRICS[name].sql(window)
    if dialect == "duckdb":
        return text
    return sqlglot.transpile(text, read="duckdb", write=dialect, pretty=True)[0]


def to_bigquery(sql: str, project: str, dataset: str, tables: dict[str, str]) -> str:
    """A DuckDB-dialect query in BigQuery's dialect, its tables (`tables`: our name -> BigQuery
    table name) qualified with project and dataset."""
    tree = sqlglot.parse_one(sql, read="duckdb")
    for table in tree.find_all(exp.Table):
        if not table.args.get("db") and table.name in tables:
            table.set("this", exp.to_identifier(tables[table.name], quoted=True))
            table.set("db", exp.to_identifier(dataset, quoted=True))
            table.set("catalog", exp.to_identifier(project, quoted=True))
    # our TIMESTAMPs hold UTC: BigQuery's TIMESTAMP, not its zoneless DATETIME
    for cast in tree.find_all(exp.Cast):
        if cast.to.is_type(exp.DataType.Type.TIMESTAMP, exp.DataType.Type.TIMESTAMPNTZ):
            cast.set("to", exp.DataType.build("TIMESTAMPTZ"))
    return tree.sql(dialect="bigquery")


# --- shaping rows into the <metric>-latest.json files (what the jq filters made) ---

def _num(value):
    """jq's tonumber on BigQuery's JSON strings: integers stay integers."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _epoch(day: datetime) -> int:
    """A UTC day as the warehouses return it (DuckDB: naive UTC, BigQuery: aware) to epoch seconds."""
    return int((day if day.tzinfo else day.replace(tzinfo=timezone.utc)).timestamp())


def _iso_day(day: datetime) -> str:
    return day.date().isoformat()


def _merge(objects: list[dict]):
    """jq's `add` over an array of objects: null when empty."""
    if not objects:
        return None
    out: dict = {}
    for o in objects:
        out.update(o)
    return out


def _flakes_by_job(rows: Iterable[dict]) -> list[dict]:
    jobs: dict[str, dict] = {}
    for r in rows:
        job = jobs.setdefault(r["job"], {**{k: r[k] for k in ("job", "build_consistency", "commit_consistency", "flakes", "runs", "commits")}, "flakiest": []})
        if r.get("test") is not None:
            job["flakiest"].append({"name": r["test"], "flakes": r["test_flakes"]})
    return list(jobs.values())


def _newest(rows: list[dict]) -> list[dict]:
    newest = max((r["day"] for r in rows), default=None)
    return [r for r in rows if r["day"] == newest]


HEALTH_FIELDS = ("runs", "failure_rate", "tests", "test_failure_rate", "p50_duration", "p75_duration", "p99_duration")


def shape(name: str, rows: list[dict]):
    """The metric's published JSON, from its query rows (same shapes as the jq filters gave)."""
    if name == "flakes":
        return _merge([
            {j["job"]: {"consistency": _num(j["commit_consistency"]), "flakes": _num(j["flakes"]),
                        "flakiest": _merge([{t["name"]: t["flakes"]} for t in j["flakiest"] if t["flakes"] >= 4])}}
            for j in _flakes_by_job(rows) if "pr:" in j["job"]
        ])
    if name == "flakes-daily":
        return _merge([
            {j["job"]: {"consistency": _num(j["commit_consistency"]), "flakes": _num(j["flakes"]),
                        "test_flakes": _merge([{t["name"]: t["flakes"]} for t in j["flakiest"]])}}
            for j in _flakes_by_job(rows)
        ])
    if name == "build-stats":
        return [{"day": str(_epoch(r["day"])), "invocations": r["invocations"], "passes": _num(r["passes"]), "rate": _num(r["rate"])}
                for r in _newest(rows)]
    if name == "failures":
        return _merge([{r["job"]: {"failing_days": r["broken_days"]}}
                       for r in rows if r["latest_pass"] is None or r["broken_days"] > 30])
    if name == "job-health":
        return [{"day": _iso_day(r["day"]), "job": r["job"], **{k: _num(r[k]) for k in HEALTH_FIELDS}} for r in _newest(rows)]
    if name == "job-health-weekly":
        return [{"job": r["job"], **{k: _num(r[k]) for k in HEALTH_FIELDS}} for r in rows]
    if name == "presubmit-health":
        fields = ("pr_failure_perc", "prs", "prs_failed", "total_runs", "avg_run_time_minutes", "avg_pass_time_minutes")
        return [{"day": _iso_day(r["day"]), "job": r["job"], **{k: _num(r[k]) for k in fields}} for r in _newest(rows)]
    raise KeyError(name)


def to_json(value) -> str:
    return json.dumps(value, indent=2, sort_keys=False, default=str) + "\n"


# --- per-test flakiness (flips) ---

BREAK_LENGTH = 3  # this many consecutive failures are a break, not a flake


def _flips_in(start: datetime, end: datetime) -> str:
    """Per (job, test) in [start, end): results considered and flips, in build order.

    Left out: infra failures (a failure text of one word) and builds whose every test failed.
    A flip is a failure right after a pass, unless it starts BREAK_LENGTH or more failures in a row:
    the next BREAK_LENGTH - 1 results all failures too. One ordering of each test's results answers
    both (3.5x faster than numbering runs of equal results, which sorted them three times).
    """
    def in_window(table: str) -> str:
        return f"{table}.started >= {_ts(start)} AND {table}.started < {_ts(end)}"

    starts_break = " AND ".join(f"coalesce(lead(failed, {k}) OVER w, FALSE)" for k in range(1, BREAK_LENGTH))
    return f"""
        SELECT job, name, count(*) AS considered,
               sum(CASE WHEN failed AND prev_failed = FALSE AND NOT starts_break THEN 1 ELSE 0 END) AS flips
        FROM (
            SELECT job, name, failed, lag(failed) OVER w AS prev_failed, ({starts_break}) AS starts_break
            FROM (
                SELECT t.job, t.name, t.failed, t.started, t.number, t.path
                FROM test_results AS t
                JOIN (
                    SELECT r.path FROM test_results AS r WHERE {in_window("r")}
                    GROUP BY r.path HAVING sum(CASE WHEN r.failed THEN 1 ELSE 0 END) < count(*)
                ) AS some_passed ON some_passed.path = t.path
                WHERE {in_window("t")}
                  AND NOT (t.failed AND coalesce(regexp_matches(t.failure_text, '^\\s*\\S+\\s*$'), FALSE))
            ) AS considered
            WINDOW w AS (PARTITION BY job, name ORDER BY started, number, path)
        ) AS ordered
        GROUP BY job, name
    """


def flakiness_sql(window: Window) -> str:
    """Per (job, test) over `window`: flakiness = 100 * flips / results considered, with its
    trend: the change since the window of the same length just before (NULL if it did not run)."""
    previous = Window(window.start - (window.end - window.start), window.start)
    return f"""
        WITH cur AS ({_flips_in(window.start, window.end)}),
             prev AS ({_flips_in(previous.start, previous.end)})
        SELECT c.job, c.name, c.considered, c.flips,
               round(100.0 * c.flips / c.considered, 2) AS flakiness,
               round(100.0 * p.flips / p.considered, 2) AS previous_flakiness,
               round(100.0 * c.flips / c.considered, 2) - round(100.0 * p.flips / p.considered, 2) AS trend
        FROM cur AS c LEFT JOIN prev AS p ON c.job = p.job AND c.name = p.name
        ORDER BY flakiness DESC, c.flips DESC, c.job, c.name
    """
