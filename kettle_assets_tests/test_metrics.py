"""test_results and the metrics on hand-built rows of `all`, against answers worked out by hand."""

from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlglot

import random

from kettle_assets.core.metrics import METRICS, Window, flakiness_sql, metric_sql, shape
from kettle_assets.project import duckdb_warehouse
from kettle_assets.core.schema import ROW_SCHEMA

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


def test_moved_build_leaves_its_old_day_in_a_warehouse_made_before_test_result_days(tmp_path):
    wh = duckdb_warehouse(tmp_path)
    for day, rows in hand_built_rows().items():
        publish(wh, tmp_path, day, rows)
    with wh.duckdb.get_connection() as conn:
        conn.execute("DROP TABLE test_result_days")
    reopened = duckdb_warehouse(tmp_path)  # a new process: its first use fills the table from test_results
    with_tests = [r for rows in hand_built_rows().values() for r in rows if r["test"]]
    assert reopened.count("test_result_days") == len(with_tests)
    moved = build(f"{CI}/2", "ci-kubernetes-e2e", DAY2, 5, "FAILURE", [("A", True), ("B", False)])
    publish(reopened, tmp_path, DAY2, hand_built_rows()[DAY2] + [moved])
    assert reopened.query(f"SELECT CAST(finished AS DATE) AS day, count(*) AS n FROM test_results WHERE path = '{CI}/2' GROUP BY day") == [
        {"day": datetime.fromisoformat(DAY2).date(), "n": 2}
    ]
    assert reopened.query(f"SELECT day FROM test_result_days WHERE path = '{CI}/2'") == [
        {"day": datetime.fromisoformat(DAY2).date()}
    ]


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
    e2e1 = health[(datetime.fromisoformat(DAY1), "ci-kubernetes-e2e")]
    # 5 runs, 3 passed; 9 tests of which 2 failed; every run 10 minutes
    assert (e2e1["runs"], e2e1["passed_runs"], e2e1["failure_rate"]) == (5, 3, 0.4)
    assert (e2e1["tests"], e2e1["failed_tests"], e2e1["test_failure_rate"]) == (9, 2, 0.222)
    assert (e2e1["p50_duration"], e2e1["p99_duration"]) == (10.0, 10.0)
    null = health[(datetime.fromisoformat(DAY2), "ci-kubernetes-null")]
    assert (null["runs"], null["failure_rate"], null["tests"], null["test_failure_rate"]) == (1, 1.0, 0, 0)
    latest = shape("job-health", run(warehouse, "job-health"))
    assert {r["day"] for r in latest} == {DAY2} and len(latest) == 3

    weekly = {r["job"]: r for r in shape("job-health-weekly", run(warehouse, "job-health-weekly"))}
    assert weekly["ci-kubernetes-e2e"]["runs"] == 6 and weekly["ci-kubernetes-e2e"]["failure_rate"] == 0.5


def test_presubmit_health_by_hand(warehouse):
    rows = run(warehouse, "presubmit-health")
    day1 = [r for r in rows if r["day"] == datetime.fromisoformat(DAY1)]
    # PR 101: 2 runs, 1 pass -> a PR with a failed run; 20 minutes over 2 runs
    assert [(r["prs"], r["prs_failed"], r["pr_failure_perc"], r["total_runs"], r["avg_run_time_minutes"],
             r["avg_pass_time_minutes"]) for r in day1] == [(1, 0 + 1, 100.0, 2, 10.0, 10.0)]
    latest = shape("presubmit-health", rows)
    # 12-03: the batch run (no PR number in its path: its own group) failed, PR 103 passed
    assert latest == [{"day": DAY2, "job": "pr:pull-kubernetes-unit", "pr_failure_perc": 50.0, "prs": 2,
                       "prs_failed": 1, "total_runs": 2, "avg_run_time_minutes": 10.0, "avg_pass_time_minutes": 10.0}]


def oracle_flips(outcomes: list[bool]) -> int:
    """Flips by hand: a failure after a pass, unless 3+ failures follow in a row."""
    count, i = 0, 0
    while i < len(outcomes):
        if outcomes[i] and i > 0 and not outcomes[i - 1]:
            run = 1
            while i + run < len(outcomes) and outcomes[i + run]:
                run += 1
            count += run < 3
            i += run
        else:
            i += 1
    return count


def insert_series(wh, series: dict[str, list], keep_build_passing=True):
    """One build per result (plus a passing companion test, so no build has every test failed)."""
    with wh.duckdb.get_connection() as conn:
        for name, outcomes in series.items():
            for i, item in enumerate(outcomes):
                failed, text = item if isinstance(item, tuple) else (item, "assertion failed" if item else None)
                path = f"gs://b/logs/j/{name}-{i}"
                started = datetime(2026, 12, 1, tzinfo=timezone.utc).timestamp() + i * 60
                for test, f, t in [(name, failed, text)] + ([("companion", False, None)] if keep_build_passing else []):
                    conn.execute(
                        "INSERT INTO test_results VALUES (?, 'j', ?, make_timestamp(?::BIGINT * 1000000), "
                        "make_timestamp(?::BIGINT * 1000000), NULL, 'c', ?, 1.0, ?, ?)",
                        [path, i, int(started), int(started) + 30, test, f, t],
                    )


def flakiness(wh, window=Window(datetime(2026, 11, 30, tzinfo=timezone.utc), AS_OF)):
    return {(r["job"], r["name"]): r for r in wh.query(flakiness_sql(window))}


def test_flips_count_flakes_not_breaks(tmp_path):
    P, F = False, True
    cases = {
        "first-fail": [F, P, P],  # a failure first follows no pass
        "two": [P, F, P, F, P],
        "pair": [P, F, F, P],  # two failures in a row: still a flake
        "break": [P, F, F, F, P, F],  # three in a row is a break; the last failure is a flip
        "green": [P, P, P],
        "infra": [P, (F, "timeout"), P, (F, "  deadline\n"), P, (F, "assertion failed")],  # one-word texts left out
    }
    wh = duckdb_warehouse(tmp_path)
    wh.ensure_tables()
    insert_series(wh, cases)
    got = flakiness(wh)
    assert {n: got[("j", n)]["flips"] for n in cases} == {
        "first-fail": 0, "two": 2, "pair": 1, "break": 1, "green": 0, "infra": 1}
    assert got[("j", "infra")]["considered"] == 4 and got[("j", "infra")]["flakiness"] == 25.0


def test_flips_in_sql_match_the_hand_rule_on_random_series(tmp_path):
    rng = random.Random(7)
    series = {f"t{k}": [rng.random() < 0.4 for _ in range(rng.randint(1, 30))] for k in range(40)}
    wh = duckdb_warehouse(tmp_path)
    wh.ensure_tables()
    insert_series(wh, series)
    got = flakiness(wh)
    assert {n: got[("j", n)]["flips"] for n in series} == {n: oracle_flips(o) for n, o in series.items()}


def test_flakiness_leaves_out_all_failed_builds_with_trend(warehouse):
    current = flakiness(warehouse, Window(datetime(2026, 12, 2, tzinfo=timezone.utc), AS_OF))
    # A in build order: pass(1) fail(2) pass(3) pass(4); builds 5 and 6 left out (every test failed)
    a = current[("ci-kubernetes-e2e", "A")]
    assert (a["considered"], a["flips"], a["flakiness"]) == (4, 1, 25.0)
    assert (current[("ci-kubernetes-e2e", "B")]["considered"], current[("ci-kubernetes-e2e", "B")]["flips"]) == (4, 0)
    # T1: pass, fail, [batch: its only test failed -> left out], pass
    t1 = current[("pr:pull-kubernetes-unit", "T1")]
    assert (t1["considered"], t1["flips"], t1["flakiness"], t1["trend"]) == (3, 1, 33.33, None)
    # a window of 1 day from 12-03: only day 2 (A failed alone in build 6: left out)
    since = Window(datetime(2026, 12, 3, tzinfo=timezone.utc), datetime(2026, 12, 4, tzinfo=timezone.utc))
    # against 12-02, where A flipped once in 4: trend is the change
    later = flakiness(warehouse, since)
    assert ("ci-kubernetes-e2e", "A") not in later
    t1_later = later[("pr:pull-kubernetes-unit", "T1")]
    assert (t1_later["considered"], t1_later["flips"], t1_later["previous_flakiness"], t1_later["trend"]) == (
        1, 0, 50.0, -50.0)


@pytest.mark.parametrize("name", sorted(METRICS))
def test_every_metric_translates_to_bigquery(name):
    text = metric_sql(name, Window.last_days(7, AS_OF), dialect="bigquery")
    assert sqlglot.parse_one(text, read="bigquery") is not None
    assert "SUBSTR" not in text.upper()


def row_groups(wh, table="all") -> int:
    return wh.query(f"SELECT count(DISTINCT row_group_id) AS n FROM pragma_storage_info('{table}')")[0]["n"]


def test_a_replaced_day_keeps_its_own_row_group_and_an_upsert_merges_them(tmp_path):
    wh = duckdb_warehouse(tmp_path)
    rows = hand_built_rows()
    expected = sum(map(len, rows.values()))
    for day, day_rows in rows.items():
        publish(wh, tmp_path, day, day_rows)  # replace_test_results's checkpoint comes after too
    assert row_groups(wh) == 2  # one a day: no checkpoint rewrote the first to add the second
    publish(wh, tmp_path, DAY1, rows[DAY1])
    assert row_groups(wh) == 2 and wh.count("all") == expected  # the old day's group dropped whole
    for build in rows[DAY2][:3]:  # the stream: builds upserted one by one
        assert wh.upsert_builds(tmp_path / f"{DAY2}.parquet", [build["path"]]) == 1
    assert row_groups(wh) == 1 and wh.count("all") == expected
    assert wh.query('SELECT count(DISTINCT path) AS n FROM "all"') == [{"n": expected}]
