"""The code location's shape: what monitors the tables, what runs by itself."""

import re
from datetime import datetime, timedelta, timezone

import dagster as dg

from kettle_assets.project import Settings, build_definitions, build_resources
from kettle_assets.resources.bigquery import BigQueryWarehouse
from kettle_assets.resources.warehouse import DuckDBWarehouse

from .conftest import BUCKETS, Kettle


def test_freshness_replaces_monitor_py_and_automation_runs_by_default(sample_tree, tmp_path):
    defs = build_definitions(Kettle(sample_tree, tmp_path).settings)
    graph = defs.resolve_asset_graph()
    for asset in ("build_all", "build_week", "build_day"):
        policy = graph.get(dg.AssetKey(asset)).freshness_policy
        assert policy.fail_window.to_timedelta() == timedelta(hours=6), asset
    checks = {key.name for key in graph.asset_check_keys}
    assert {"schema_matches_contract", "one_row_per_path", "tests_failed_within_tests_run", "malformed_junit_share"} <= checks
    assert {s.name: s.default_status for s in defs.sensors} == {
        "stream_finished_builds": dg.DefaultSensorStatus.RUNNING,
        "publish_affected_days": dg.DefaultSensorStatus.RUNNING,
        "failure_clusters_automation": dg.DefaultSensorStatus.RUNNING,
        "refresh_metrics_on_new_rows": dg.DefaultSensorStatus.RUNNING,
        "alert_on_new_failures": dg.DefaultSensorStatus.RUNNING,
    }
    assert all(s.default_status == dg.DefaultScheduleStatus.RUNNING for s in defs.schedules)
    assert defs.resolve_job_def("stream_builds").executor_def is dg.in_process_executor


def test_the_warehouse_follows_kettle_warehouse_not_only_the_environment(tmp_path, monkeypatch):
    for name in ("KETTLE_BQ_PROJECT", "KETTLE_STORAGE_ROOT", "KETTLE_ENV", "KETTLE_WAREHOUSE"):
        monkeypatch.delenv(name, raising=False)
    home = str(tmp_path / "home")
    gcs_local = Settings.from_env(home=home, warehouse="duckdb")
    assert gcs_local.env == "gcp" and isinstance(build_resources(gcs_local)["warehouse"], DuckDBWarehouse)
    local_bq = Settings.from_env(home=home, storage_root=str(tmp_path), warehouse="bigquery", bq_project="p")
    assert local_bq.env == "local" and isinstance(build_resources(local_bq)["warehouse"], BigQueryWarehouse)
    assert Settings.from_env(home=home).warehouse_kind == "bigquery"


def test_descriptions_render_in_the_ui_without_html_eating_them(tmp_path):
    """The UI renders descriptions as Markdown: `<day>` would vanish as an HTML tag."""
    settings = Settings(buckets_file=str(BUCKETS), storage_root=str(tmp_path), home=str(tmp_path / "home"),
                        start_date="2026-10-01")
    defs = build_definitions(settings)
    graph = defs.resolve_asset_graph()
    texts = [graph.get(key).description or "" for key in graph.get_all_asset_keys()]
    texts += [check.description or "" for a in graph.assets_defs for check in a.check_specs]
    texts += [s.description or "" for s in [*defs.sensors, *defs.schedules]]
    assert texts and not [t for t in texts if re.search(r"<[A-Za-z/!]", t)]


def test_reconcile_buckets_asks_for_every_bucket_one_run_at_a_time_each(tmp_path):
    settings = Settings(buckets_file=str(BUCKETS), storage_root=str(tmp_path), home=str(tmp_path / "home"),
                        start_date="2026-10-01")
    defs = build_definitions(settings)
    with dg.build_schedule_context(
        scheduled_execution_time=datetime(2026, 12, 4, tzinfo=timezone.utc),
        resources={"settings": build_resources(settings)["settings"]}, repository_def=defs.get_repository_def(),
    ) as context:
        requests = defs.resolve_schedule_def("reconcile_buckets").evaluate_tick(context).run_requests
    keys = build_resources(settings)["settings"].buckets.keys
    assert [r.partition_key for r in requests] == keys
    assert [r.tags["kettle/bucket"] for r in requests] == keys  # dagster.yaml: one run per bucket at a time


def test_each_stage_file_defines_its_assets_and_the_home_narrows_their_partitions(tmp_path):
    """Assets are module-level objects of their stage's file; a home's code location gives them
    its buckets and days starting at its first staged day, without touching the declarations."""
    from kettle_assets.assets import build_all, build_rows, collection, junit_results, partitions, test_results
    from kettle_assets.core.config import load_buckets

    declared = {
        "build_listing": collection.build_listing, "build_metadata": collection.build_metadata,
        "junit_results": junit_results.junit_results, "build_rows": build_rows.build_rows,
        "build_all": build_all.build_all,
        "test_results": test_results.test_results,
    }
    for name, asset in declared.items():
        assert asset.key == dg.AssetKey(name)
        assert asset.partitions_def in (partitions.BUCKETS, partitions.DAYS)
    assert partitions.BUCKETS.get_partition_keys() == load_buckets(BUCKETS).keys  # the repository's buckets.yaml

    home = tmp_path / "home"
    own_buckets = tmp_path / "buckets.yaml"
    own_buckets.write_text('gs://our-ci/logs/:\n  contact: "us"\n  prefix: ""\n')
    settings = Settings(buckets_file=str(own_buckets), storage_root=str(tmp_path), home=str(home), start_date="2026-10-03")
    defs = build_definitions(settings)
    graph = defs.resolve_asset_graph()
    for name in ("junit_results", "build_rows", "build_all", "test_results"):
        days = graph.get(dg.AssetKey(name)).partitions_def
        assert days.get_first_partition_window().start.date().isoformat() == "2026-10-03"
    for name in ("build_listing", "build_metadata"):
        assert graph.get(dg.AssetKey(name)).partitions_def.get_partition_keys() == ["our-ci/logs"]
    assert partitions.DAYS.start.date().isoformat() == partitions.EARLIEST_START_DATE  # declarations untouched
