"""test_results and the metrics on hand-built rows of `all`, against answers worked out by hand."""

import json
from datetime import datetime, timezone

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlglot

from kettle_assets.core.metrics import (
    METRICS, Window, flips, metric_sql, shape, per_test_flakiness, flakiness_rows, flakiness_sql,
)
from kettle_assets.project import duckdb_warehouse
from kettle_assets.resources.staging import ROW_SCHEMA

AS_OF = datetime(2026, 12, 4, 12, 0, tzinfo=timezone.utc)
DAY1, DAY2 = "2026-12-02", "2026-12-03"
H = 3600


def at(day: str, hour: int) -> int:
    return int(datetime.fromisoformat(day).replace(hour=hour, tzinfo=timezone.utc).timestamp())


def build(path, job, day, hour, result, tests=(), version="v1.0", repo_commit=None, repos=None, metadata=(), elapsed=600):
    started = at(day, hour)
    test = [{"name": n, "time": 1.0, "failed": True if f else None, "failure_text": (t or "boom happened") if f else None}
            for n, f, *rest in tests for t in [rest[0] if rest else None]]
    return {
        "path": path, "job": job, "number": int(path.rsplit("/", 1)[1]), "started": started,
        "finished": started + elapsed, "elapsed": elapsed, "passed": result == "SUCCESS", "result": result,
        "version": version, "executor": None, "repo_commit": repo_commit, "repos": repos,
        "metadata": [{"key": k, "value": v} for k, v in metadata], "test": test, "tests_run": len(test),
        "tests_failed": sum(1 for t in test if t["failed"]), "_json": None, "_finished_hash": None,
    }


CI = "gs://kubernetes-jenkins/logs/ci-kubernetes-e2e"
PR = "gs://kubernetes-jenkins/pr-logs/pull"
ONE_PR = '{"kubernetes/kubernetes": "master:aaa,101:abc1"}'
BATCH = '{"kubernetes/kubernetes": "master:aaa,101:abc1,102:bcd2"}'


def hand_built_rows() -> dict[str, list[dict]]:
    return {
        DAY1: [
            # ci job, commit v1.0: one pass, one fail -> flaked; test A flaky there (1 of 2 runs failed)
            build(f"{CI}/1", "ci-kubernetes-e2e", DAY1, 1, "SUCCESS", [("A", False), ("B", False)]),
            build(f"{CI}/2", "ci-kubernetes-e2e", DAY1, 2, "FAILURE", [("A", True), ("B", False)]),
            # commit v1.1: two passes -> consistent
            build(f"{CI}/3", "ci-kubernetes-e2e", DAY1, 3, "SUCCESS", [("A", False), ("B", False)], version="v1.1"),
            build(f"{CI}/4", "ci-kubernetes-e2e", DAY1, 4, "SUCCESS", [("A", False), ("B", False)], version="v1.1"),
            # unknown commit: not considered by the flake metrics
            build(f"{CI}/5", "ci-kubernetes-e2e", DAY1, 5, "FAILURE", [("A", True)], version="unknown"),
            # a PR job at one head SHA: one pass, one fail -> flaked; T1 flaky
            build(f"{PR}/101/pull-kubernetes-unit/7", "pr:pull-kubernetes-unit", DAY1, 6, "SUCCESS",
                  [("T1", False), ("T2", False)], repos=ONE_PR),
            build(f"{PR}/101/pull-kubernetes-unit/8", "pr:pull-kubernetes-unit", DAY1, 7, "FAILURE",
                  [("T1", True), ("T2", False)], repos=ONE_PR),
        ],
        DAY2: [
            # commit v1.2: a single failing run -> consistent, and its tests always fail there
            build(f"{CI}/6", "ci-kubernetes-e2e", DAY2, 1, "FAILURE", [("A", True), ("B", True)], version="v1.2"),
            # a batch run of two PRs: excluded from the flake metrics
            build(f"{PR}/batch/pull-kubernetes-unit/9", "pr:pull-kubernetes-unit", DAY2, 2, "FAILURE",
                  [("T1", True)], repos=BATCH),
            # PR 103 of another repo, its repos only in metadata; it passes
            build(f"{PR}/org_repo/103/pull-kubernetes-unit/10", "pr:pull-kubernetes-unit", DAY2, 3, "SUCCESS",
                  [("T1", False)], repos=None, metadata=[("repos", '{"org/repo": "main:bbb,103:cafe"}')]),
            # zero runs: a build with no result counts as no run
            build(f"{CI.replace('e2e', 'null')}/11", "ci-kubernetes-null", DAY2, 4, None),
        ],
    }


@pytest.fixture()
def warehouse(tmp_path):
    wh = duckdb_warehouse(tmp_path)
    for day, rows in hand_built_rows().items():
        publish(wh, tmp_path, day, rows)
    return wh


def publish(wh, folder, day, rows):
    f = folder / f"{day}.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=ROW_SCHEMA), f)
    wh.replace_day(day, f)
    wh.replace_test_results(day)


def run(wh, name, window=None):
    window = window or Window.last_days(METRICS[name].days, AS_OF)
    return wh.query(metric_sql(name, window))


def test_test_results_flatten_every_test_with_pr_and_commit(warehouse):
    rows = warehouse.query('SELECT path, pr, "commit", name, failed FROM test_results ORDER BY path, name')
    assert len(rows) == 2 * 4 + 1 + 2 * 2 + 2 + 1 + 1  # every entry of every build's test list
    by = {(r["path"].split("/pull/")[-1].split("/logs/")[-1], r["name"]): r for r in rows}
    assert by[("101/pull-kubernetes-unit/7", "T1")]["pr"] == 101
    assert by[("101/pull-kubernetes-unit/7", "T1")]["commit"] == "abc1"
    assert by[("org_repo/103/pull-kubernetes-unit/10", "T1")] | {"path": None} == {
        "path": None, "pr": 103, "commit": "cafe", "name": "T1", "failed": False}
    assert by[("batch/pull-kubernetes-unit/9", "T1")]["commit"] == "bcd2"  # a batch: the last PR's head
    assert by[("batch/pull-kubernetes-unit/9", "T1")]["pr"] is None
    assert by[("ci-kubernetes-e2e/3", "A")]["commit"] == "v1.1" and by[("ci-kubernetes-e2e/3", "A")]["pr"] is None
    assert by[("ci-kubernetes-e2e/2", "A")]["failed"] is True


def test_republished_day_replaces_its_tests(warehouse, tmp_path):
    rows = hand_built_rows()[DAY1]
    rows[0] = build(f"{CI}/1", "ci-kubernetes-e2e", DAY1, 1, "SUCCESS", [("A", False)])  # one test fewer
    for _ in range(2):
        publish(warehouse, tmp_path, DAY1, rows)
    assert warehouse.count("test_results", f"path = '{CI}/1'") == 1
    assert warehouse.count("test_results") == 17 - 1
    # a build whose finished time moved to the next day leaves its old day
    moved = build(f"{CI}/2", "ci-kubernetes-e2e", DAY2, 5, "FAILURE", [("A", True), ("B", False)])
    publish(warehouse, tmp_path, DAY2, hand_built_rows()[DAY2] + [moved])
    assert warehouse.count("test_results", f"path = '{CI}/2'") == 2


def test_flakes_by_hand(warehouse):
    rows = run(warehouse, "flakes")
    jobs = {r["job"]: r for r in rows}
    e2e = jobs["ci-kubernetes-e2e"]
    # commits v1.0 (flaked: 1 of 2 passed), v1.1 (2 of 2), v1.2 (0 of 1); unknown left out
    assert (e2e["flakes"], e2e["runs"], e2e["commits"]) == (1, 5, 3)
    assert e2e["build_consistency"] == pytest.approx(0.8)  # (1 + 2 + 1) / 5
    assert e2e["commit_consistency"] == pytest.approx(0.667)  # 1 - 1/3
    assert [(r["test"], r["test_flakes"]) for r in rows if r["job"] == "ci-kubernetes-e2e"] == [("A", 1)]
    pr = [r for r in rows if r["job"] == "pr:pull-kubernetes-unit"]
    # SHAs abc1 (flaked, 1 of 2) and cafe (1 of 1); the batch run left out
    assert (pr[0]["flakes"], pr[0]["runs"], pr[0]["commits"]) == (1, 3, 2)
    assert pr[0]["build_consistency"] == pytest.approx(round(2 / 3, 3))  # (1 + 1) / 3
    assert pr[0]["commit_consistency"] == pytest.approx(0.5)
    assert [(r["test"], r["test_flakes"]) for r in pr] == [("T1", 1)]
    null = jobs["ci-kubernetes-null"]  # zero runs: no division error, consistency undefined
    assert (null["runs"], null["flakes"], null["build_consistency"], null["commit_consistency"]) == (0, 0, None, 1.0)
    assert [r["job"] for r in rows][0] in ("ci-kubernetes-e2e", "pr:pull-kubernetes-unit")  # flakiest first
    assert shape("flakes", rows) == {"pr:pull-kubernetes-unit": {"consistency": 0.5, "flakes": 1, "flakiest": None}}
    daily = shape("flakes-daily", run(warehouse, "flakes-daily"))
    # the last day (from 2026-12-03 12:00) holds no build: nothing to report
    assert daily is None
    since = shape("flakes-daily", run(warehouse, "flakes-daily", Window(datetime(2026, 12, 2, tzinfo=timezone.utc), AS_OF)))
    assert since["ci-kubernetes-e2e"] == {"consistency": 0.667, "flakes": 1, "test_flakes": {"A": 1}}


def test_flakes_shape_keeps_tests_flaking_at_four_commits_or_more():
    rows = [
        {"job": "pr:x", "build_consistency": 0.5, "commit_consistency": 0.2, "flakes": 5, "runs": 9, "commits": 6,
         "test": t, "test_flakes": n, "test_rank": i}
        for i, (t, n) in enumerate([("Slow", 5), ("Edge", 4), ("Rare", 3)], 1)
    ] + [{"job": "ci-y", "build_consistency": 1.0, "commit_consistency": 1.0, "flakes": 0, "runs": 1,
          "commits": 1, "test": None, "test_flakes": None, "test_rank": None}]
    assert shape("flakes", rows) == {"pr:x": {"consistency": 0.2, "flakes": 5, "flakiest": {"Slow": 5, "Edge": 4}}}
    assert shape("flakes-daily", rows)["ci-y"] == {"consistency": 1, "flakes": 0, "test_flakes": None}


def test_build_stats_failures_and_health_by_hand(warehouse):
    stats = run(warehouse, "build-stats")
    # 2026-12-02: 7 builds, 4 SUCCESS; 2026-12-03: 4 builds, 1 SUCCESS (today, 12-04, excluded)
    assert [(r["invocations"], r["passes"], r["rate"]) for r in stats] == [(7, 4, 4 / 7), (4, 1, 0.25)]
    assert shape("build-stats", stats) == [
        {"day": str(at(DAY2, 0)), "invocations": 4, "passes": 1, "rate": 0.25}]

    failures = {r["job"]: r for r in run(warehouse, "failures")}
    assert failures["ci-kubernetes-e2e"]["broken_days"] == 2  # last pass 12-02, as of 12-04
    assert failures["ci-kubernetes-null"]["latest_pass"] is None and failures["ci-kubernetes-null"]["broken_days"] == 1
    assert shape("failures", run(warehouse, "failures")) == {"ci-kubernetes-null": {"failing_days": 1}}

    health = {(r["day"], r["job"]): r for r in run(warehouse, "job-health")}
    e2e1 = health[(at(DAY1, 0), "ci-kubernetes-e2e")]
    # 5 runs, 3 passed; 9 tests of which 2 failed; every run 10 minutes
    assert (e2e1["runs"], e2e1["passed_runs"], e2e1["failure_rate"]) == (5, 3, 0.4)
    assert (e2e1["tests"], e2e1["failed_tests"], e2e1["test_failure_rate"]) == (9, 2, 0.222)
    assert (e2e1["p50_duration"], e2e1["p99_duration"]) == (10.0, 10.0)
    null = health[(at(DAY2, 0), "ci-kubernetes-null")]
    assert (null["runs"], null["failure_rate"], null["tests"], null["test_failure_rate"]) == (1, 1.0, 0, 0)
    latest = shape("job-health", run(warehouse, "job-health"))
    assert {r["day"] for r in latest} == {DAY2} and len(latest) == 3

    weekly = {r["job"]: r for r in shape("job-health-weekly", run(warehouse, "job-health-weekly"))}
    assert weekly["ci-kubernetes-e2e"]["runs"] == 6 and weekly["ci-kubernetes-e2e"]["failure_rate"] == 0.5


def test_presubmit_health_by_hand(warehouse):
    rows = run(warehouse, "presubmit-health")
    day1 = [r for r in rows if r["day"] == at(DAY1, 0)]
    # PR 101: 2 runs, 1 pass -> a PR with a failed run; 20 minutes over 2 runs
    assert [(r["prs"], r["prs_failed"], r["pr_failure_perc"], r["total_runs"], r["avg_run_time_minutes"],
             r["avg_pass_time_minutes"]) for r in day1] == [(1, 0 + 1, 100.0, 2, 10.0, 10.0)]
    latest = shape("presubmit-health", rows)
    # 12-03: the batch run (no PR number in its path: its own group) failed, PR 103 passed
    assert latest == [{"day": DAY2, "job": "pr:pull-kubernetes-unit", "pr_failure_perc": 50.0, "prs": 2,
                       "prs_failed": 1, "total_runs": 2, "avg_run_time_minutes": 10.0, "avg_pass_time_minutes": 10.0}]


def test_flips_count_flakes_not_breaks():
    P, F = False, True
    assert flips([]) == 0
    assert flips([F, P, P]) == 0  # a failure first follows no pass
    assert flips([P, F, P, F, P]) == 2
    assert flips([P, F, F, P]) == 1  # two failures in a row: still a flake
    assert flips([P, F, F, F, P, F]) == 1  # three in a row is a break; the last failure is a flip
    assert flips([P, P, P]) == 0


def test_flakiness_leaves_out_infra_failures_and_all_failed_builds_with_trend(warehouse):
    def results(window):
        return per_test_flakiness(warehouse.query(flakiness_sql(window.start, window.end)))

    current = results(Window(datetime(2026, 12, 2, tzinfo=timezone.utc), AS_OF))
    # A in build order: pass(1) fail(2) pass(3) pass(4); builds 5 and 6 left out (every test failed)
    assert current[("ci-kubernetes-e2e", "A")] == {"considered": 4, "flips": 1, "flakiness": 25.0}
    assert current[("ci-kubernetes-e2e", "B")] == {"considered": 4, "flips": 0, "flakiness": 0.0}
    # T1: pass, fail, [batch: its only test failed -> left out], pass
    assert current[("pr:pull-kubernetes-unit", "T1")] == {"considered": 3, "flips": 1, "flakiness": 33.33}
    infra = per_test_flakiness([
        {"job": "j", "name": "t", "failed": f, "failure_text": text, "build_tests": 2, "build_failures": 1}
        for f, text in [(False, None), (True, "timeout"), (False, None), (True, "assertion failed")]
    ])
    assert infra[("j", "t")] == {"considered": 3, "flips": 1, "flakiness": 33.33}
    trend = flakiness_rows(current, {("ci-kubernetes-e2e", "A"): {"considered": 4, "flips": 0, "flakiness": 10.0}})
    assert [r["name"] for r in trend] == ["T1", "A", "B", "T2"]  # flakiest first
    assert trend[1] == {"job": "ci-kubernetes-e2e", "name": "A", "considered": 4, "flips": 1, "flakiness": 25.0,
                        "previous_flakiness": 10.0, "trend": 15.0}
    assert next(r for r in trend if r["name"] == "T1")["trend"] is None


@pytest.mark.parametrize("name", sorted(METRICS))
def test_every_metric_translates_to_bigquery(name):
    text = metric_sql(name, Window.last_days(7, AS_OF), dialect="bigquery")
    assert sqlglot.parse_one(text, read="bigquery") is not None
    assert "SUBSTR" not in text.upper()
