"""The whole pipeline on the embedded default: sample tree -> Dagster runs -> DuckDB + exports."""

import json
import re
import time
from pathlib import Path

import dagster as dg
import duckdb

from kettle_assets.assets.checks import make_contract_checks
from kettle_assets.automation import DAILY_SELECTION
from kettle_assets.project import build_assets, build_resources

from .conftest import SAMPLE_NOW

EXCLUDED = re.compile(r"-canary$|^maintenance-")


def finished_paths_in(tree: Path) -> set[str]:
    """Independent oracle: every build folder holding a finished.json, minus excluded jobs."""
    paths = set()
    for f in tree.rglob("finished.json"):
        folder = f.parent
        if EXCLUDED.search(folder.parent.name):
            continue
        paths.add("gs://" + folder.relative_to(tree).as_posix())
    return paths


def test_cold_sync_loads_every_finished_build_once(synced):
    expected = finished_paths_in(synced.tree)
    rows = synced.query('SELECT path FROM "all"')
    paths = [r[0] for r in rows]
    assert len(paths) == len(set(paths)), "duplicate paths in all"
    assert set(paths) == expected
    assert synced.first_summary.rows_loaded == len(expected)


def test_unfinished_given_up_and_excluded_builds_have_no_row(synced):
    paths = {r[0] for r in synced.query('SELECT path FROM "all"')}
    assert not any("canary" in p or "maintenance-" in p for p in paths)
    assert "gs://kubernetes-jenkins/logs/ci-kubernetes-odd/124" not in paths  # started 9 days ago, never finished
    assert "gs://kubernetes-jenkins/logs/ci-kubernetes-unit/30" not in paths  # started, not finished yet
    meta = synced.first_summary.buckets["kubernetes-jenkins/logs"]
    assert meta["given_up"] == 1
    assert meta["unfinished"] == 4


def test_prefixes_jobs_and_numbers(synced):
    rows = dict(synced.query('SELECT path, job FROM "all"'))
    pr = [p for p in rows if "/pr-logs/" in p]
    assert pr and all(rows[p].startswith("pr:pull-kubernetes-") for p in pr)
    juju = [p for p in rows if "canonical-kubernetes-tests" in p]
    assert juju and all(rows[p] == "juju:conformance-juju-aws" for p in juju)
    numbers = dict(synced.query('SELECT path, number FROM "all" WHERE job = \'juju:conformance-juju-aws\''))
    assert set(numbers.values()) == {None}  # timestamped folder names are not numbers


def test_exports_are_kettle_make_json_lines(synced):
    days = sorted(p.name[: -len(".json.gz")] for p in (synced.home / "export" / "all").glob("*.json.gz"))
    assert days == sorted({d.isoformat() for (d,) in synced.query('SELECT DISTINCT CAST(finished AS DATE) FROM "all"')})
    for day in days:
        for line in synced.export_lines(f"all/{day}.json.gz"):
            row = json.loads(line)
            assert line == json.dumps(row, sort_keys=True)  # sorted keys, default separators, ASCII
            assert {"path", "job", "test", "tests_run", "tests_failed"} <= row.keys()
            assert None not in row.values()
            assert isinstance(row["finished"], int) and isinstance(row["started"], int)
            assert time.strftime("%Y-%m-%d", time.gmtime(row["finished"])) == day
    exported = {r["path"] for r in synced.all_export_rows()}
    assert exported == {r[0] for r in synced.query('SELECT path FROM "all"')}


def test_odd_build_rows(synced):
    rows = {r["path"]: r for r in synced.all_export_rows()}
    odd = rows["gs://kubernetes-jenkins/logs/ci-kubernetes-odd/123"]
    assert [t["name"] for t in odd["test"]] == [
        "caf\ufffd \ufffd",  # non-UTF-8 bytes replaced, the file kept
        "errored",
        "bare failure",
        "only body",
        "flaky #2",
        "outer a",
        "outer inner b",
        "outer inner <unspecified>",
        "<unspecified> nameless suite case",
    ]
    by_name = {t["name"]: t for t in odd["test"]}
    assert by_name["errored"] == {"name": "errored", "time": 3.0, "failed": True, "failure_text": "panic: boom\ngoroutine 1"}
    assert by_name["bare failure"]["failure_text"] == "No Failure Message Found"
    assert by_name["outer inner b"] == {"name": "outer inner b", "time": 0.0}
    assert odd["tests_run"] == 9 and odd["tests_failed"] == 5
    assert odd["metadata"][-1] == {"key": "\u00e9", "value": '["\\u00fcn\\u00efcode", 1]'}
    # Build 12 sits beside 123 and gets only its own JUnit file.
    twelve = rows["gs://kubernetes-jenkins/logs/ci-kubernetes-odd/12"]
    assert all(t["name"].startswith("[sig-") for t in twelve["test"])
    # Bootstrap metadata: empty repo and job-version equal to version dropped, non-strings JSON-encoded.
    keys = [m["key"] for m in twelve["metadata"]]
    assert keys == ["infra-commit", "repos", "retries"]
    assert twelve["repos"] == '{"k8s.io/kubernetes": "master", "k8s.io/release": "master"}'


def test_junit_metrics_count_malformed_files(synced):
    rows = synced.query('SELECT sum(tests_run), sum(tests_failed), count(*) FROM "all"')[0]
    assert rows[1] <= rows[0]
    # empty, malformed and truncated files of build 123 are counted; its other files still count
    junit = synced.instance.fetch_materializations(dg.AssetKey("junit_results"), limit=100).records
    # each day partition reports its own files: the day of build 123 has the 3, the others none
    per_day = {r.asset_materialization.partition: r.asset_materialization.metadata["junit_malformed"].value for r in junit}
    assert sum(per_day.values()) == 3 and sorted(per_day.values())[-1] == 3


def test_duckdb_tables_are_nested_and_queryable(synced):
    total = synced.query('SELECT count(*) FROM "all", UNNEST(test) AS t(test_row)')[0][0]
    assert total == synced.query('SELECT sum(tests_run) FROM "all"')[0][0]
    failed = synced.query(
        'SELECT count(*) FROM "all", UNNEST(test) AS t(tr) WHERE tr.failed'
    )[0][0]
    assert failed == synced.query('SELECT sum(tests_failed) FROM "all"')[0][0]
    cols = dict(synced.query("SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'all'"))
    assert cols["started"] == "TIMESTAMP"
    assert cols["test"].startswith("STRUCT(") and cols["test"].endswith("[]")
    assert cols["metadata"] == "STRUCT(\"key\" VARCHAR, \"value\" VARCHAR)[]"


def test_week_and_day_hold_exactly_their_windows(synced):
    finished = dict(synced.query('SELECT path, epoch(finished) FROM "all"'))
    for table, days in (("week", 7), ("day", 1)):
        want = {p for p, f in finished.items() if f >= SAMPLE_NOW - days * 86400}
        got = {r[0] for r in synced.query(f'SELECT path FROM "{table}"')}
        assert got == want and want, table
        assert {r["path"] for r in synced.export_rows(f"build_{table}.json.gz")} == want


def test_second_sync_fetches_nothing(own_kettle):
    own_kettle.sync()
    again = own_kettle.sync()
    assert again.days == []
    for meta in again.buckets.values():
        assert meta["new_finished"] == 0 and meta["updated"] == 0
    assert again.buckets["kubernetes-jenkins/pr-logs"]["candidates"] == 0


def test_new_build_is_collected_incrementally(own_kettle):
    own_kettle.sync()
    before = own_kettle.query('SELECT count(*) FROM "all"')[0][0]
    folder = own_kettle.tree / "kubernetes-jenkins/logs/ci-kubernetes-unit/30"  # the unfinished one
    finished_at = int(SAMPLE_NOW) - 600
    (folder / "finished.json").write_text(json.dumps({"timestamp": finished_at, "result": "SUCCESS"}))
    summary = own_kettle.sync()
    assert summary.days == [time.strftime("%Y-%m-%d", time.gmtime(finished_at))]
    assert summary.rows_loaded == 1  # the day's one new build upserted, not the day reloaded
    assert own_kettle.query('SELECT count(*) FROM "all"')[0][0] == before + 1
    junit = own_kettle.instance.fetch_materializations(dg.AssetKey("junit_results"), limit=1).records[0]
    assert junit.asset_materialization.metadata["fetched"].value == 1


def test_rerunning_a_day_partition_replaces_rows(own_kettle):
    own_kettle.sync()
    day = own_kettle.query('SELECT CAST(max(finished) AS DATE) FROM "all"')[0][0].isoformat()
    before = own_kettle.query('SELECT count(*), sum(tests_run) FROM "all"')[0]
    assets = build_assets(own_kettle.settings)
    for _ in range(2):
        result = dg.materialize(
            assets, selection=DAILY_SELECTION, partition_key=day,
            resources=build_resources(own_kettle.settings), instance=own_kettle.instance,
        )
        assert result.success
    assert own_kettle.query('SELECT count(*), sum(tests_run) FROM "all"')[0] == before
    assert own_kettle.query('SELECT count(*) - count(DISTINCT path) FROM "all"')[0][0] == 0


def test_changed_finished_json_updates_the_row(own_kettle):
    own_kettle.sync()
    path = "gs://kubernetes-jenkins/logs/ci-kubernetes-e2e-gce/3"
    folder = own_kettle.tree / path[len("gs://"):]
    old = json.loads((folder / "finished.json").read_text())
    old_day = time.strftime("%Y-%m-%d", time.gmtime(old["timestamp"]))
    new_ts = old["timestamp"] + 3 * 86400  # moves to another day
    (folder / "finished.json").write_text(json.dumps({"timestamp": new_ts, "result": "ABORTED"}))
    summary = own_kettle.sync(recheck_paths=[path])
    new_day = time.strftime("%Y-%m-%d", time.gmtime(new_ts))
    assert set(summary.days) == {old_day, new_day}
    assert own_kettle.query('SELECT result, epoch(finished) FROM "all" WHERE path = ?', path) == [("ABORTED", new_ts)]
    assert path not in {r["path"] for r in own_kettle.export_rows(f"all/{old_day}.json.gz")}
    assert path in {r["path"] for r in own_kettle.export_rows(f"all/{new_day}.json.gz")}


def test_contract_checks_pass_then_fail_visibly(own_kettle):
    own_kettle.sync()
    for asset in ("build_all", "build_week", "build_day"):
        key = dg.AssetCheckKey(dg.AssetKey(asset), "one_row_per_path")
        record = own_kettle.instance.event_log_storage.get_latest_asset_check_execution_by_key([key])[key]
        assert record.status.value == "SUCCEEDED", asset
    # a duplicated row is caught
    with duckdb.connect(str(own_kettle.home / "warehouse.duckdb")) as conn:
        conn.execute('INSERT INTO "all" SELECT * FROM "week" LIMIT 1')  # the week is a view of all
    result = dg.materialize(
        [*build_assets(own_kettle.settings), *make_contract_checks()],
        selection=dg.AssetSelection.checks_for_assets("build_week"),
        resources=build_resources(own_kettle.settings), instance=own_kettle.instance,
    )
    evaluations = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert evaluations == {
        "schema_matches_contract": True, "one_row_per_path": False, "tests_failed_within_tests_run": True
    }


def test_staging_retention_prunes_old_days_without_losing_rows(own_kettle):
    import dataclasses

    own_kettle.settings = dataclasses.replace(own_kettle.settings, retention_days=3)
    first = own_kettle.sync()
    cutoff = time.strftime("%Y-%m-%d", time.gmtime(SAMPLE_NOW - 3 * 86400))
    staging = own_kettle.home / "staging"
    assert first.pruned and all(p.split("/")[-1].split(".")[0] < cutoff for p in first.pruned)
    assert all(f.stem >= cutoff for f in (staging / "rows").glob("*.parquet"))
    before = own_kettle.query('SELECT count(*) FROM "all"')[0][0]
    assert before == len(finished_paths_in(own_kettle.tree))  # the warehouse keeps pruned days
    again = own_kettle.sync()
    assert again.days == [] and all(m["new_finished"] == 0 for m in again.buckets.values())
    assert own_kettle.query('SELECT count(*) FROM "all"')[0][0] == before
