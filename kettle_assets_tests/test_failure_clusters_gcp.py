"""failure_clusters on BigQuery's API (bqemulator): the same tables and the same bytes as on DuckDB,
from scratch and for a day's increment."""

from collections import defaultdict
from datetime import date, datetime, timezone
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kettle_assets.assets.failure_clusters import failure_clusters
from kettle_assets.project import Settings, build_resources, duckdb_warehouse, settings_resource
from kettle_assets.resources.cluster_tables import CLUSTERS, DAYS, FAILURES, TEST_KEYS
from kettle_assets.core.schema import ROW_SCHEMA
from kettle_assets.resources.staging import StagingStore

from .conftest import BUCKETS
from .support.servers import bq_emulator
from .test_failure_clusters import _corpus_module

pytestmark = pytest.mark.servers

START = datetime(2026, 11, 16, tzinfo=timezone.utc)


def _day(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).date().isoformat()


def rows_by_day() -> dict[str, list[dict]]:
    """One failing build per generated failure (with a passing test beside it), and for every fourth
    one a passing build of the same test at the same commit, which makes that failure flaky."""
    days = defaultdict(list)

    def build(path, job, number, started, tests, version):
        failed = sum(1 for t in tests if t["failed"])
        days[_day(started + 600)].append({
            "path": path, "job": job, "number": number, "started": started, "finished": started + 600,
            "elapsed": 600, "passed": not failed, "result": "FAILURE" if failed else "SUCCESS", "version": version,
            "executor": "prow", "repo_commit": None, "repos": None, "metadata": [], "test": tests,
            "tests_run": len(tests), "tests_failed": failed, "_json": None, "_finished_hash": None})

    for n, f in enumerate(_corpus_module().generate(160, days=3, seed=21, start=START)):
        version = f"v{n % 5}"
        tests = [{"name": f.test, "time": 1.0, "failed": True, "failure_text": f.text},
                 {"name": "TestFine", "time": 1.0, "failed": None, "failure_text": None}]
        if n % 7 == 0:  # the same test failing again in the build: ordinals by failure text
            tests.append({"name": f.test, "time": 1.0, "failed": True, "failure_text": "again: " + f.text[::-1]})
        build(f.path, f.job, f.number, f.started, tests, version)
        if n % 4 == 0:
            build(f"{f.path}9", f.job, f.number * 10 + 9, f.started + 60,
                  [{"name": f.test, "time": 1.0, "failed": None, "failure_text": None}], version)
    return dict(days)


def publish(warehouses, folder: Path, day: str, rows: list[dict]) -> None:
    staged = folder / f"{day}.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=ROW_SCHEMA), staged)
    for warehouse in warehouses:
        warehouse.replace_day(day, staged)
        warehouse.replace_test_results(day)


def materialize(warehouse, home: Path, **config) -> dict:
    result = dg.materialize([failure_clusters], resources={"warehouse": warehouse, "staging": StagingStore(home=str(home)),
                                                        "settings": settings_resource(Settings(buckets_file=str(BUCKETS)))},
                            run_config={"ops": {"failure_clusters": {"config": config}}})
    assert result.success
    return {k: v.value for k, v in result.asset_materializations_for_node("failure_clusters")[0].metadata.items()}


def plain(value):
    if isinstance(value, datetime):
        return int((value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp())
    if isinstance(value, date):
        return value.isoformat()
    return value


def table_rows(warehouse, table: str) -> list[tuple]:
    if hasattr(warehouse, "duckdb"):
        with warehouse.duckdb.get_connection() as conn:
            cursor = conn.execute(f"SELECT * FROM {table}")
            names = [d[0] for d in cursor.description]
            rows = [dict(zip(names, r)) for r in cursor.fetchall()]
    else:
        with warehouse.bigquery.get_client() as client:
            rows = [dict(r.items()) for r in client.query(f"SELECT * FROM `{warehouse._table(table)}`").result()]
    return sorted(tuple(sorted((k, plain(v)) for k, v in r.items())) for r in rows)


def cluster_ids(warehouse) -> dict[str, str]:
    """key_hash -> cluster_id"""
    rows = [dict(r) for r in table_rows(warehouse, CLUSTERS)]
    return {r["key_hash"]: r["cluster_id"] for r in rows}


def triage_files(home: Path) -> dict[str, bytes]:
    folder = home / "export" / "triage"
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.json"))}


@pytest.fixture(scope="module")
def warehouses(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clusters-bq")
    with bq_emulator() as endpoint:
        settings = Settings(buckets_file=str(BUCKETS), storage_root=None, home=str(folder / "bq"), env="gcp",
                            bq_project="test-project", bq_dataset="clusters", bq_endpoint=endpoint)
        yield folder, duckdb_warehouse(folder), build_resources(settings)["warehouse"]


def test_bigquery_cluster_tables_equal_duckdb_from_scratch_and_incrementally(warehouses):
    folder, duck, bq = warehouses
    days = rows_by_day()
    *history, last = sorted(days)
    for day in history:
        publish((duck, bq), folder, day, days[day])

    runs = {}
    for name, warehouse in (("duck", duck), ("bq", bq)):
        runs[name] = materialize(warehouse, folder / name, full=True)
    assert runs["bq"]["mode"] == "full" and runs["bq"]["flaky_failures"] > 0 and runs["bq"]["clusters_in_triage"] > 3
    assert runs["bq"]["failure_data_sha1"] == runs["duck"]["failure_data_sha1"]
    assert triage_files(folder / "bq") == triage_files(folder / "duck")
    for table in (CLUSTERS, FAILURES, DAYS, TEST_KEYS):
        assert table_rows(bq, table) == table_rows(duck, table), table
    ids_before = cluster_ids(bq)

    publish((duck, bq), folder, last, days[last])
    for name, warehouse in (("duck", duck), ("bq", bq)):
        runs[name] = materialize(warehouse, folder / name)
    assert runs["bq"]["mode"] == "incremental"
    assert runs["bq"]["new_failures"] == runs["duck"]["new_failures"] > 0
    assert triage_files(folder / "bq") == triage_files(folder / "duck")
    for table in (CLUSTERS, FAILURES, DAYS, TEST_KEYS):
        assert table_rows(bq, table) == table_rows(duck, table), table
    ids_after = cluster_ids(bq)
    kept = ids_before.keys() & ids_after.keys()
    assert kept and all(ids_after[k] == ids_before[k] for k in kept)

    # Builds leaving a day inside the window: their groups' texts are read again, on both.
    middle = history[-1]
    publish((duck, bq), folder, middle, days[middle][::2])
    for name, warehouse in (("duck", duck), ("bq", bq)):
        runs[name] = materialize(warehouse, folder / name)
    assert runs["bq"]["mode"] == "incremental" and runs["bq"]["new_failures"] == 0
    assert runs["bq"]["groups_read_again"] == runs["duck"]["groups_read_again"] > 0
    assert triage_files(folder / "bq") == triage_files(folder / "duck")
    for table in (CLUSTERS, FAILURES, DAYS, TEST_KEYS):
        assert table_rows(bq, table) == table_rows(duck, table), table
    # the scratch tables are gone
    with bq.bigquery.get_client() as client:
        names = {t.table_id for t in client.list_tables(f"{bq.bigquery.project}.{bq.dataset}")}
    assert not {n for n in names if n.startswith("_kettle")}
