"""The code location's shape: what monitors the tables, what runs by itself."""

from datetime import timedelta

import dagster as dg

from kettle_assets.project import build_definitions

from .conftest import Kettle


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
