"""Alert rules on hand-made warehouse rows, against the events worked out by hand."""

from datetime import datetime, timedelta, timezone

import pytest

from kettle_assets.core.alerts import (
    FLAKINESS_JUMP, JOB_FAILING, JOB_STARTED_FAILING, NEW_CLUSTER, AlertEvent, AlertRules, cluster_events,
    clusters_sql, flakiness_events, flakiness_sql, job_events, job_runs_sql,
)
from kettle_assets.project import duckdb_warehouse

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=timezone.utc)
REPORT = "https://ci.example/report"
LOGS = "gs://kubernetes-jenkins/logs"


def builds(job: str, outcomes: str, hours_ago: int = 100, first: int = 1) -> list[tuple]:
    """One build per letter, oldest first, an hour apart, numbered from `first`: P passed, F failed,
    A aborted, ? no result."""
    rows = []
    for i, o in enumerate(outcomes, first - 1):
        started = NOW - timedelta(hours=hours_ago - i + first - 1)
        passed = {"P": True, "F": False, "A": False, "?": None}[o]
        result = {"P": "SUCCESS", "F": "FAILURE", "A": "ABORTED", "?": None}[o]
        rows.append((f"{LOGS}/{job}/{i + 1}", job, i + 1, started.replace(tzinfo=None), passed, result))
    return rows


@pytest.fixture()
def warehouse(tmp_path):
    wh = duckdb_warehouse(tmp_path)
    wh.ensure_tables()
    return wh


def insert_builds(wh, rows):
    with wh.duckdb.get_connection() as conn:
        conn.executemany('INSERT INTO "all" (path, job, number, started, passed, result) VALUES (?, ?, ?, ?, ?, ?)', rows)


def artifacts(path: str) -> str:
    return "https://gcsweb.example/" + path.removeprefix("gs://")


def test_job_runs_give_started_failing_and_n_in_a_row_once_per_run(warehouse):
    insert_builds(warehouse, [
        *builds("ci-started", "FPPPPPF"),  # 5 passes, then a failure: started failing at build 7
        *builds("ci-three", "PPFPPFFF"),  # 3 in a row from build 6 (2 passes before)
        *builds("ci-never", "FFFF"),  # never passed
        *builds("ci-flaky", "PPFPF"),  # one failure after a single pass: nothing
        *builds("ci-green", "FFPP"),  # latest passed: nothing
        *builds("ci-aborted", "PPPPPFA?"),  # aborted and unknown builds are not outcomes: started failing at 6
        *builds("ci-stale", "PPPPPFFF", hours_ago=24 * 30),  # no build in the last 7 days: nothing
        *builds("pr:pull-unit", "PPPPPPFFF"),  # presubmits are left out by default
        # failing since before the lookback (30 days): its first failed build is not seen, nothing
        *builds("ci-long", "PPF", hours_ago=24 * 40), *builds("ci-long", "FFF", first=4),
        # a pass before the lookback, a run that started inside it: seen whole
        *builds("ci-back", "P", hours_ago=24 * 40), *builds("ci-back", "PFFF", first=2),
    ])
    rules = AlertRules()
    events = job_events(warehouse.query(job_runs_sql(rules, NOW)), rules, REPORT, artifacts)
    assert [(e.kind, e.key) for e in events] == [
        (JOB_STARTED_FAILING, f"{JOB_STARTED_FAILING}|ci-aborted|{LOGS}/ci-aborted/6"),
        (JOB_FAILING, f"{JOB_FAILING}|ci-back|{LOGS}/ci-back/3"),
        (JOB_FAILING, f"{JOB_FAILING}|ci-never|{LOGS}/ci-never/1"),
        (JOB_STARTED_FAILING, f"{JOB_STARTED_FAILING}|ci-started|{LOGS}/ci-started/7"),
        (JOB_FAILING, f"{JOB_FAILING}|ci-three|{LOGS}/ci-three/6"),
    ]
    started, _, never, _, three = events
    assert started.title == "ci-aborted started failing: build 6 failed after 5 passes"
    assert never.title == "ci-never has never passed: 4 failed builds"
    assert three.title == "ci-three failed 3 builds in a row"
    assert three.url == f"{REPORT}/jobs/ci-three.html"
    assert three.facts == {
        "job": "ci-three", "failures": 3, "passes_before": 2, "first_failed_build": f"{LOGS}/ci-three/6",
        "first_failed_number": 6, "latest_build": f"{LOGS}/ci-three/8", "latest_number": 8,
    }
    assert three.text.splitlines() == [
        "after 2 passing builds",
        "first failed: build 6 started 2026-11-30 13:00 UTC — https://gcsweb.example/kubernetes-jenkins/logs/ci-three/6",
        "latest: build 8 started 2026-11-30 15:00 UTC — https://gcsweb.example/kubernetes-jenkins/logs/ci-three/8",
    ]
    with_presubmits = AlertRules(include_presubmits=True, consecutive_failures=2, passes_before_failing=1)
    events = job_events(warehouse.query(job_runs_sql(with_presubmits, NOW)), with_presubmits, REPORT)
    assert [e.key for e in events] == [
        f"{JOB_STARTED_FAILING}|ci-aborted|{LOGS}/ci-aborted/6",
        f"{JOB_FAILING}|ci-back|{LOGS}/ci-back/3",
        f"{JOB_STARTED_FAILING}|ci-flaky|{LOGS}/ci-flaky/5",
        f"{JOB_FAILING}|ci-never|{LOGS}/ci-never/1",
        f"{JOB_STARTED_FAILING}|ci-started|{LOGS}/ci-started/7",
        f"{JOB_FAILING}|ci-three|{LOGS}/ci-three/6",
        f"{JOB_FAILING}|pr:pull-unit|{LOGS}/pr:pull-unit/7",
    ]


def test_a_run_keeps_its_key_as_it_grows_and_a_new_run_gets_a_new_one(warehouse):
    rules = AlertRules()
    insert_builds(warehouse, builds("ci-a", "PPPPPF"))
    first = job_events(warehouse.query(job_runs_sql(rules, NOW)), rules, REPORT)
    insert_builds(warehouse, [r for r in builds("ci-a", "PPPPPFFF") if r[2] > 6])
    grown = job_events(warehouse.query(job_runs_sql(rules, NOW)), rules, REPORT)
    insert_builds(warehouse, [r for r in builds("ci-a", "PPPPPFFFPPPPPF") if r[2] > 8])
    again = job_events(warehouse.query(job_runs_sql(rules, NOW)), rules, REPORT)
    assert [e.key for e in first] == [f"{JOB_STARTED_FAILING}|ci-a|{LOGS}/ci-a/6"]
    assert [e.key for e in grown] == [f"{JOB_FAILING}|ci-a|{LOGS}/ci-a/6"]
    assert [e.key for e in again] == [f"{JOB_STARTED_FAILING}|ci-a|{LOGS}/ci-a/14"]


def cluster(cid, failures, first_seen_days_ago, **extra):
    first = (NOW - timedelta(days=first_seen_days_ago)).replace(tzinfo=None)
    return {"cluster_id": cid, "cluster_key": f"key {cid}", "text": f"timeout in {cid}\nmore", "owner": extra.get("owner"),
            "failures": failures, "flaky_failures": extra.get("flaky", 0), "tests": 2, "jobs": 1,
            "first_seen": first, "last_seen": NOW.replace(tzinfo=None)}


def test_new_clusters_above_the_size(warehouse):
    rows = [cluster("c-big-new", 25, 1, owner="sig-node", flaky=5), cluster("c-small", 19, 0),
            cluster("c-big-old", 500, 3), cluster("c-exact", 20, 2)]
    with warehouse.duckdb.get_connection() as conn:
        conn.execute("""CREATE TABLE failure_clusters (cluster_id VARCHAR, cluster_key VARCHAR, text VARCHAR, owner VARCHAR,
                        failures BIGINT, flaky_failures BIGINT, tests BIGINT, jobs BIGINT, first_seen TIMESTAMP,
                        last_seen TIMESTAMP)""")
        conn.executemany("INSERT INTO failure_clusters VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", [list(r.values()) for r in rows])
    rules = AlertRules()
    events = cluster_events(warehouse.query(clusters_sql(rules)), rules, REPORT, NOW)
    assert [e.key for e in events] == [f"{NEW_CLUSTER}|c-big-new", f"{NEW_CLUSTER}|c-exact"]
    assert events[0] == AlertEvent(
        key=f"{NEW_CLUSTER}|c-big-new", kind=NEW_CLUSTER,
        title="New failure cluster: 25 failures in 2 tests of 1 jobs, owner sig-node",
        text="first seen 2026-12-03 12:00 UTC, last seen 2026-12-04 12:00 UTC; 5 of the failures at commits where "
             "the test also passed\nfailure: timeout in c-big-new",
        url=f"{REPORT}/clusters/c-big-new.html",
        facts={"cluster_id": "c-big-new", "failures": 25, "flaky_failures": 5, "tests": 2, "jobs": 1, "owner": "sig-node",
               "first_seen": "2026-12-03 12:00 UTC", "last_seen": "2026-12-04 12:00 UTC", "text": "timeout in c-big-new"},
    )


def test_flakiness_jumps_need_both_weeks_enough_results_and_the_thresholds(warehouse):
    rows = [  # job, name, considered, flips, flakiness, previous, trend
        ("ci-a", "jumped", 20, 5, 25.0, 5.0, 20.0),
        ("ci-a", "exactly", 10, 2, 20.0, 10.0, 10.0),
        ("ci-a", "too few results", 9, 3, 33.33, 0.0, 33.33),
        ("ci-a", "new test", 20, 5, 25.0, None, None),
        ("ci-a", "small jump", 20, 4, 20.0, 15.0, 5.0),
        ("ci-a", "one flip", 10, 1, 10.0, 0.0, 10.0),
        ("ci-b", "flaky but low", 40, 3, 7.5, 0.0, 7.5),
    ]
    with warehouse.duckdb.get_connection() as conn:
        conn.execute("""CREATE TABLE test_flakiness (job VARCHAR, name VARCHAR, considered BIGINT, flips BIGINT,
                        flakiness DOUBLE, previous_flakiness DOUBLE, trend DOUBLE)""")
        conn.executemany("INSERT INTO test_flakiness VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    rules = AlertRules()
    events = flakiness_events(warehouse.query(flakiness_sql(rules)), rules, REPORT, NOW)
    assert [(e.kind, e.key) for e in events] == [
        (FLAKINESS_JUMP, f"{FLAKINESS_JUMP}|ci-a|jumped|2026-W49"),
        (FLAKINESS_JUMP, f"{FLAKINESS_JUMP}|ci-a|exactly|2026-W49"),
    ]
    assert events[0].title == "jumped in ci-a got flakier: 25% (was 5% the week before)"
    assert events[0].text == "5 flips in 20 results over the last 7 days"
    assert events[0].url == f"{REPORT}/tests/jumped.html"
    next_week = flakiness_events(warehouse.query(flakiness_sql(rules)), rules, REPORT, NOW + timedelta(days=7))
    assert next_week[0].key == f"{FLAKINESS_JUMP}|ci-a|jumped|2026-W50"


def test_rules_parse_from_text_and_refuse_bad_names_and_values():
    assert AlertRules.parse("") == AlertRules()
    assert AlertRules.parse(" consecutive_failures=2, flakiness_jump=7.5,include_presubmits=yes ") == AlertRules(
        consecutive_failures=2, flakiness_jump=7.5, include_presubmits=True)
    for bad, message in [("nope=1", "unknown alert rule 'nope'"), ("cluster_min_failures=x", "must be a int"),
                         ("flakiness_min=-1", "must not be negative"), ("consecutive_failures=0", "at least 1"),
                         ("include_presubmits=maybe", "must be a bool")]:
        with pytest.raises(ValueError, match=message):
            AlertRules.parse(bad)


def test_events_round_trip_through_json():
    event = AlertEvent("k|1", JOB_FAILING, "t", "x\ny", "file:///r/jobs/a.html", {"n": 1, "s": "é"})
    assert AlertEvent.from_json(event.to_json()) == event
