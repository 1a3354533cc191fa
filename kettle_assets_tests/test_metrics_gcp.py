"""The same metric SQL on BigQuery's API (bqemulator) gives DuckDB's answers on the hand-built rows."""

import math
from datetime import datetime, timezone

import pytest

from kettle_assets.core.alerts import AlertRules, job_events, job_runs_sql
from kettle_assets.core.metrics import METRICS, Window, flakiness_sql, metric_sql
from kettle_assets.project import Settings, build_resources, duckdb_warehouse

from .conftest import BUCKETS
from .support.servers import bq_emulator
from .test_metrics import AS_OF, CI, DAY2, build, hand_built_rows
from .test_metrics import publish as publish_one


def plain(value):
    if isinstance(value, datetime):
        return int((value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp())
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 6)
    return value


def normalised(rows):
    return sorted((tuple((k, plain(v)) for k, v in sorted(r.items())) for r in rows), key=repr)


@pytest.fixture(scope="module")
def endpoint():
    with bq_emulator() as url:
        yield url


def bigquery_warehouse(endpoint, folder, dataset):
    settings = Settings(buckets_file=str(BUCKETS), storage_root=None, home=str(folder), env="gcp",
                        bq_project="test-project", bq_dataset=dataset, bq_endpoint=endpoint)
    return build_resources(settings)["warehouse"]


def publish(warehouses, folder, day, rows):
    for wh in warehouses:
        publish_one(wh, folder, day, rows)


@pytest.fixture(scope="module")
def both(endpoint, tmp_path_factory):
    folder = tmp_path_factory.mktemp("metrics-bq")
    duck, bq = duckdb_warehouse(folder), bigquery_warehouse(endpoint, folder, "metrics")
    for day, rows in hand_built_rows().items():
        publish((duck, bq), folder, day, rows)
    return duck, bq


def test_test_results_match(both):
    duck, bq = both
    sql = 'SELECT path, pr, "commit", name, failed, failure_text FROM test_results'
    assert normalised(bq.query(sql)) == normalised(duck.query(sql))
    assert bq.count("test_results") == 17


def test_moved_build_leaves_its_old_day_as_on_duckdb_in_a_dataset_made_before_test_result_days(endpoint, tmp_path):
    duck, bq = duckdb_warehouse(tmp_path), bigquery_warehouse(endpoint, tmp_path, "moved")
    for day, rows in hand_built_rows().items():
        publish((duck, bq), tmp_path, day, rows)
    with bq.bigquery.get_client() as client:
        client.delete_table(bq._table("test_result_days"))
    bq = bigquery_warehouse(endpoint, tmp_path, "moved")  # a new process on a dataset made before the table
    moved = build(f"{CI}/2", "ci-kubernetes-e2e", DAY2, 5, "FAILURE", [("A", True), ("B", False)])
    publish((duck, bq), tmp_path, DAY2, hand_built_rows()[DAY2] + [moved])
    sql = f"SELECT CAST(finished AS DATE) AS day, name FROM test_results WHERE path = '{CI}/2'"
    assert normalised(bq.query(sql)) == normalised(duck.query(sql))
    assert {r["day"].isoformat() for r in bq.query(sql)} == {DAY2}
    assert bq.count("test_results") == duck.count("test_results") == 17
    assert normalised(bq.query("SELECT path, day FROM test_result_days")) == normalised(
        duck.query("SELECT path, day FROM test_result_days"))


@pytest.mark.parametrize("name", sorted(METRICS))
def test_metric_matches_duckdb(both, name):
    duck, bq = both
    window = Window(datetime(2026, 11, 20, tzinfo=timezone.utc), AS_OF)
    sql = metric_sql(name, window)
    assert normalised(bq.query(sql)) == normalised(duck.query(sql))
    assert bq.replace_table(METRICS[name].table, sql) == len(duck.query(sql))


def test_flakiness_matches_duckdb(both):
    duck, bq = both
    sql = flakiness_sql(Window(datetime(2026, 12, 2, tzinfo=timezone.utc), AS_OF))
    assert normalised(bq.query(sql)) == normalised(duck.query(sql))


def test_alert_job_runs_match_duckdb(both):
    duck, bq = both
    rules = AlertRules(consecutive_failures=1, include_presubmits=True)
    sql = job_runs_sql(rules, AS_OF)
    found = duck.query(sql)
    # the PR job's latest build passed; a build without a result has passed = false
    assert [(r["job"], r["failures"], r["passes_before"]) for r in found] == [
        ("ci-kubernetes-e2e", 2, 2), ("ci-kubernetes-null", 1, 0)]
    assert normalised(bq.query(sql)) == normalised(found)
    assert [e.key for e in job_events(bq.query(sql), rules, "https://r")] == [
        f"job_failing|ci-kubernetes-e2e|{CI}/5", f"job_failing|ci-kubernetes-null|{CI.replace('e2e', 'null')}/11"]
