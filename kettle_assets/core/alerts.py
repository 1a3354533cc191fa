"""Alerts: the events worth a message after a publish, each with a stable identity.

Three families, each read from one warehouse table by one query below:

- **Jobs** (`all`): a job's current run of failed builds (the builds after its latest pass).
  `job_started_failing`: the run is shorter than `consecutive_failures` and follows at least
  `passes_before_failing` passes. `job_failing`: the run reached `consecutive_failures` (or the
  job never passed in that many builds). Both are keyed by the run's first failed build, so each
  run of failures gives at most one message of each kind, and a run that reaches N at once
  gives only `job_failing`. Only jobs with a build in the last `active_days` are looked at,
  over their builds of the last `lookback_days`; `pr:` jobs (presubmits fail with their PRs)
  only when `include_presubmits`.
- **Clusters** (`failure_clusters`): a cluster first seen within `new_cluster_days` of the
  evaluation with at least `cluster_min_failures` failures. Keyed by its id (stable while the
  cluster's text is unchanged).
- **Flakiness** (`test_flakiness`): a test whose flakiness over the last 7 days is at least
  `flakiness_min` and rose by at least `flakiness_jump` points over the 7 days before (which
  must have run), from at least `flakiness_min_results` results and `flakiness_min_flips`
  flips (one flip is chance). Keyed by job, test and the
  ISO week of the evaluation: at most one message per test and week.

Builds are ordered by started time, then number, then path; builds without a result (`passed`
NULL) and aborted builds are not outcomes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta, timezone
from typing import Callable, Iterable

from .report_links import cluster_page, job_page, page_url, test_page

JOB_STARTED_FAILING = "job_started_failing"
JOB_FAILING = "job_failing"
NEW_CLUSTER = "new_failure_cluster"
FLAKINESS_JUMP = "flakiness_jump"
KINDS = (JOB_STARTED_FAILING, JOB_FAILING, NEW_CLUSTER, FLAKINESS_JUMP)


@dataclass(frozen=True)
class AlertRules:
    consecutive_failures: int = 3
    passes_before_failing: int = 5
    active_days: int = 7
    lookback_days: int = 30
    include_presubmits: bool = False
    cluster_min_failures: int = 20
    new_cluster_days: int = 2
    flakiness_min: float = 10.0
    flakiness_jump: float = 10.0
    flakiness_min_results: int = 10
    flakiness_min_flips: int = 2

    @classmethod
    def parse(cls, text: str) -> "AlertRules":
        """`name=value,...` (e.g. `consecutive_failures=2,cluster_min_failures=50`) over the defaults;
        a bad name or value raises ValueError naming it."""
        kinds = {f.name: f.type for f in fields(cls)}
        values: dict = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            name, sep, raw = item.partition("=")
            name, raw = name.strip(), raw.strip()
            if not sep or name not in kinds:
                raise ValueError(f"unknown alert rule {name!r}; known: {', '.join(kinds)}")
            kind = kinds[name]
            try:
                if kind == "bool":
                    if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                        raise ValueError
                    values[name] = raw.lower() in ("true", "1", "yes")
                else:
                    values[name] = (int if kind == "int" else float)(raw)
            except ValueError:
                raise ValueError(f"alert rule {name} must be a {kind}, not {raw[:50]!r}") from None
            if kind != "bool" and not values[name] >= 0:
                raise ValueError(f"alert rule {name} must not be negative, not {raw[:50]!r}")
        if values.get("consecutive_failures", 1) < 1:
            raise ValueError("alert rule consecutive_failures must be at least 1")
        return cls(**values)


@dataclass(frozen=True)
class AlertEvent:
    """One thing to tell people about. `key` never changes for the same event."""

    key: str
    kind: str
    title: str  # one line
    text: str  # the details, plain text
    url: str  # its page in the CI report
    facts: dict  # JSON-safe numbers and names, for generic webhooks

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "AlertEvent":
        return cls(**json.loads(text))


def _ts(value: datetime) -> str:
    return f"TIMESTAMP '{value.astimezone(timezone.utc).strftime('%Y-%m-%d %H:%M:%S')}'"


def job_runs_sql(rules: AlertRules, now: datetime) -> str:
    """Per active job with a failed latest build: its run of failures (`failures`, first and
    latest build) and the passes right before it (`passes_before`; 0 when it never passed).

    Only the last `lookback_days` of builds are read (and the passes before a run counted):
    a run with no pass in them whose job has older builds began earlier; its first failed
    build, its identity, is not seen, so it is left out rather than keyed by a build that
    changes every day.
    """
    presubmits = "" if rules.include_presubmits else "AND NOT starts_with(job, 'pr:')"
    outcome = f"""job IS NOT NULL AND started IS NOT NULL AND passed IS NOT NULL
          AND coalesce(result, '') <> 'ABORTED' {presubmits}"""
    since = _ts(now - timedelta(days=rules.lookback_days))
    return f"""
    WITH b AS (
        SELECT job, path, number, started, passed,
               row_number() OVER (PARTITION BY job ORDER BY started DESC, number DESC, path DESC) AS age
        FROM "all"
        WHERE {outcome} AND started >= {since}
    ), jobs AS (
        SELECT job, count(*) AS builds, min(CASE WHEN passed THEN age END) AS latest_pass_age
        FROM b GROUP BY job
        HAVING max(started) >= {_ts(now - timedelta(days=rules.active_days))}
    ), started_earlier AS (
        SELECT DISTINCT job FROM "all"
        WHERE {outcome} AND started < {since}
          AND job IN (SELECT job FROM jobs WHERE latest_pass_age IS NULL)
    ), runs AS (
        SELECT job, builds, latest_pass_age, coalesce(latest_pass_age, builds + 1) - 1 AS failures FROM jobs
    ), next_failure AS (
        SELECT r.job, min(b.age) AS age
        FROM runs AS r JOIN b ON b.job = r.job AND NOT b.passed AND b.age > r.latest_pass_age
        GROUP BY r.job
    )
    SELECT r.job, r.failures,
           CASE WHEN r.latest_pass_age IS NULL THEN 0
                ELSE coalesce(n.age, r.builds + 1) - r.latest_pass_age END AS passes_before,
           f.path AS first_path, f.number AS first_number, f.started AS first_started,
           l.path AS latest_path, l.number AS latest_number, l.started AS latest_started
    FROM runs AS r
    JOIN b AS f ON f.job = r.job AND f.age = r.failures
    JOIN b AS l ON l.job = r.job AND l.age = 1
    LEFT JOIN next_failure AS n ON n.job = r.job
    WHERE r.failures > 0 AND r.job NOT IN (SELECT job FROM started_earlier)
    ORDER BY r.job
    """


def clusters_sql(rules: AlertRules) -> str:
    return f"""
    SELECT cluster_id, cluster_key, text, owner, failures, flaky_failures, tests, jobs, first_seen, last_seen
    FROM failure_clusters WHERE failures >= {int(rules.cluster_min_failures)}
    ORDER BY failures DESC, cluster_id
    """


def flakiness_sql(rules: AlertRules) -> str:
    return f"""
    SELECT job, name, considered, flips, flakiness, previous_flakiness, trend
    FROM test_flakiness WHERE trend >= {float(rules.flakiness_jump)}
    ORDER BY trend DESC, job, name
    """


def _aware(value) -> datetime | None:
    """A warehouse timestamp (DuckDB: naive UTC, BigQuery: aware) as an aware UTC datetime."""
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _when(value) -> str:
    at = _aware(value)
    return at.strftime("%Y-%m-%d %H:%M UTC") if at else "unknown time"


def _build_name(number, path: str) -> str:
    """The build's number, or its folder's name where it has none (timestamped builds)."""
    return str(number) if number is not None else path.rstrip("/").rsplit("/", 1)[-1]


def _build_line(label: str, number, path: str, started, artifact_url: Callable[[str], str | None]) -> str:
    url = artifact_url(path)
    return f"{label}: build {_build_name(number, path)} started {_when(started)}" + (f" — {url}" if url else f" — {path}")


def job_events(rows: Iterable[dict], rules: AlertRules, report_url: str,
               artifact_url: Callable[[str], str | None] = lambda _p: None) -> list[AlertEvent]:
    """Events of the jobs' current runs of failures (rows of `job_runs_sql`)."""
    events = []
    for r in rows:
        failures, passes = int(r["failures"]), int(r["passes_before"])
        job = r["job"]
        facts = {
            "job": job, "failures": failures, "passes_before": passes,
            "first_failed_build": r["first_path"], "first_failed_number": r["first_number"],
            "latest_build": r["latest_path"], "latest_number": r["latest_number"],
        }
        lines = [_build_line("first failed", r["first_number"], r["first_path"], r["first_started"], artifact_url)]
        if r["latest_path"] != r["first_path"]:
            lines.append(_build_line("latest", r["latest_number"], r["latest_path"], r["latest_started"], artifact_url))
        if failures >= rules.consecutive_failures:
            kind = JOB_FAILING
            title = (f"{job} failed {failures} builds in a row" if passes  # 0: no pass in its whole history
                     else f"{job} has never passed: {failures} failed builds")
            if passes:
                lines.insert(0, f"after {passes} passing build{'s' * (passes != 1)}")
        elif passes >= max(1, rules.passes_before_failing):
            kind = JOB_STARTED_FAILING
            title = f"{job} started failing: build {_build_name(r['first_number'], r['first_path'])} failed after {passes} pass{'es' * (passes != 1)}"
        else:
            continue
        events.append(AlertEvent(
            key=f"{kind}|{job}|{r['first_path']}", kind=kind, title=title, text="\n".join(lines),
            url=page_url(report_url, job_page(job)), facts=facts,
        ))
    return events


def cluster_events(rows: Iterable[dict], rules: AlertRules, report_url: str, now: datetime) -> list[AlertEvent]:
    """Events of clusters new and big enough (rows of `clusters_sql`)."""
    since = now - timedelta(days=rules.new_cluster_days)
    events = []
    for r in rows:
        first_seen = _aware(r["first_seen"])
        if int(r["failures"]) < rules.cluster_min_failures or first_seen is None or first_seen < since:
            continue
        text = (r.get("text") or r.get("cluster_key") or "").strip().splitlines()
        excerpt = (text[0] if text else "")[:200]
        owner = f", owner {r['owner']}" if r.get("owner") else ""
        events.append(AlertEvent(
            key=f"{NEW_CLUSTER}|{r['cluster_id']}", kind=NEW_CLUSTER,
            title=f"New failure cluster: {r['failures']} failures in {r['tests']} tests of {r['jobs']} jobs{owner}",
            text="\n".join([
                f"first seen {_when(r['first_seen'])}, last seen {_when(r['last_seen'])}; "
                f"{r['flaky_failures']} of the failures at commits where the test also passed",
                f"failure: {excerpt}",
            ]),
            url=page_url(report_url, cluster_page(r["cluster_id"])),
            facts={"cluster_id": r["cluster_id"], "failures": int(r["failures"]), "flaky_failures": int(r["flaky_failures"]),
                   "tests": int(r["tests"]), "jobs": int(r["jobs"]), "owner": r.get("owner"),
                   "first_seen": _when(r["first_seen"]), "last_seen": _when(r["last_seen"]), "text": excerpt},
        ))
    return events


def flakiness_events(rows: Iterable[dict], rules: AlertRules, report_url: str, now: datetime) -> list[AlertEvent]:
    """Events of tests whose flakiness jumped (rows of `flakiness_sql`)."""
    year, week, _ = now.astimezone(timezone.utc).isocalendar()
    events = []
    for r in rows:
        if (r["previous_flakiness"] is None or r["trend"] is None or int(r["considered"]) < rules.flakiness_min_results
                or int(r["flips"]) < rules.flakiness_min_flips
                or float(r["flakiness"]) < rules.flakiness_min or float(r["trend"]) < rules.flakiness_jump):
            continue
        events.append(AlertEvent(
            key=f"{FLAKINESS_JUMP}|{r['job']}|{r['name']}|{year}-W{week:02d}", kind=FLAKINESS_JUMP,
            title=f"{r['name']} in {r['job']} got flakier: {float(r['flakiness']):g}% "
                  f"(was {float(r['previous_flakiness']):g}% the week before)",
            text=f"{r['flips']} flip{'s' * (int(r['flips']) != 1)} in {r['considered']} results over the last 7 days",
            url=page_url(report_url, test_page(r["name"])),
            facts={"job": r["job"], "test": r["name"], "flakiness": float(r["flakiness"]),
                   "previous_flakiness": float(r["previous_flakiness"]), "trend": float(r["trend"]),
                   "flips": int(r["flips"]), "results": int(r["considered"])},
        ))
    return events
