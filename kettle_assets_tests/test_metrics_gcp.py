"""The same metric SQL on BigQuery's API (bqemulator) gives DuckDB's answers on the hand-built rows."""

import math
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kettle_assets.core.alerts import AlertRules, job_events, job_runs_sql
from kettle_assets.core.metrics import METRICS, Window, flakiness_sql, metric_sql
from kettle_assets.project import Settings, build_resources, duckdb_warehouse
from kettle_assets.core.schema import ROW_SCHEMA

from .conftest import BUCKETS
from .support.servers import bq_emulator
from .test_metrics import AS_OF, CI, hand_built_rows


def plain(value):
    if isinstance(value, datetime):
        return int((value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp())
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 6)
    return value


def normalised(rows):
    return sorted((tuple((k, plain(v)) for k, v in sorted(r.items())) for r in rows), key=repr)


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    folder = tmp_path_factory.mktemp("metrics-bq")
    duck = duckdb_warehouse(folder)
    with bq_emulator() as endpoint:
        settings = Settings(buckets_file=str(BUCKETS), storage_root=None, home=str(folder), env="gcp",
                            bq_project="test-project", bq_dataset="metrics", bq_endpoint=endpoint)
        bq = build_resources(settings)["warehouse"]
        for day, rows in hand_built_rows().items():
            f = folder / f"{day}.parquet"
            pq.write_table(pa.Table.from_pylist(rows, schema=ROW_SCHEMA), f)
            for wh in (duck, bq):
                wh.replace_day(day, f)
                wh.replace_test_results(day)
        yield duck, bq


def test_test_results_match(both):
    duck, bq = both
    sql = 'SELECT path, pr, "commit", name, failed, failure_text FROM test_results'
    assert normalised(bq.query(sql)) == normalised(duck.query(sql))
    assert bq.count("test_results") == 17


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
