"""Metrics end to end: `kettle sync` on the sample, and the automation that refreshes them."""

import json
from datetime import datetime, timezone

import dagster as dg

from kettle_assets.core.metrics import METRICS
from kettle_assets.project import build_definitions
from kettle_assets.resources.staging import StagingStore
from kettle_assets.sync import ANSWERS_PENDING, run_sync

from .conftest import SAMPLE_NOW


def test_sync_writes_every_metric_and_test_results(synced):
    folder = synced.home / "export" / "metrics"
    day = datetime.fromtimestamp(SAMPLE_NOW, tz=timezone.utc).date().isoformat()
    for name in [*METRICS, "test-flakiness"]:
        latest = json.loads((folder / f"{name}-latest.json").read_text())
        assert json.loads((folder / name / f"daily-{day}.json").read_text()) == latest
    assert set(synced.first_summary.metrics) == {m.table for m in METRICS.values()} | {"test_flakiness"}
    # one row per entry of `all.test`, never doubled
    (tests,) = synced.query('SELECT sum(tests_run) FROM "all"')[0]
    assert synced.query("SELECT count(*) FROM test_results")[0][0] == tests > 0
    failed = synced.query('SELECT sum(tests_failed) FROM "all"')[0][0]
    assert synced.query("SELECT count(*) FROM test_results WHERE failed")[0][0] == failed
    stats = json.loads((folder / "build-stats-latest.json").read_text())
    assert stats and set(stats[0]) == {"day", "invocations", "passes", "rate"}
    for name in METRICS:
        assert synced.query(f'SELECT count(*) FROM "{METRICS[name].table}"')[0][0] >= 0


def test_publishing_a_day_requests_test_results_and_the_metrics(synced, tmp_path):
    defs = build_definitions(synced.settings)
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        day = datetime.fromtimestamp(SAMPLE_NOW, tz=timezone.utc).date().isoformat()
        # nothing published yet: nothing to recompute
        assert result.total_requested == 0
        # a day published: `all` and `test_results` of that day (one stage_and_publish run)
        for asset in ("build_all", "test_results"):
            instance.report_runless_asset_event(dg.AssetMaterialization(asset, partition=day))
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
        keys = defs.resolve_asset_graph().get_all_asset_keys()
        requested = {k.path[-1] for k in keys if result.get_num_requested(k)}
        # and the failure clusters, which read test_results too
        assert requested == {m.table for m in METRICS.values()} | {"test_flakiness", "failure_clusters"}
        # once handled, nothing more until the next publication
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
        assert result.total_requested == 0


def test_a_sync_redoes_the_answers_only_after_new_rows_even_across_a_crash(own_kettle):
    own_kettle.sync()
    lines: list[str] = []
    run_sync(own_kettle.settings, instance=own_kettle.instance, as_of=SAMPLE_NOW, echo=lines.append)
    assert "[metrics] no new rows: unchanged" in lines and "[clusters] no new rows: unchanged" in lines
    # a sync killed after publishing, before the metrics ran, leaves the marker: the next one redoes them
    staging = StagingStore(home=str(own_kettle.home))
    staging.write_marker(ANSWERS_PENDING, "yes")
    lines.clear()
    run_sync(own_kettle.settings, instance=own_kettle.instance, as_of=SAMPLE_NOW, echo=lines.append)
    assert any(line.startswith("[metrics] flakes") for line in lines)
    assert any(line.startswith("[clusters] failure clusters") for line in lines)
    assert staging.read_marker(ANSWERS_PENDING) == "no"
