"""Metrics and the CI report end to end: `kettle sync` on the sample, and the automation that refreshes them."""

import json
import os
import re
import shutil
import sys
import time
from datetime import datetime, timezone

import dagster as dg
import pytest

from kettle_assets import cli
from kettle_assets.core import report_links as links
from kettle_assets.core.metrics import METRICS
from kettle_assets.project import build_definitions
from kettle_assets.resources.staging import StagingStore
from kettle_assets.sync import ANSWERS_PENDING, run_sync

from .conftest import SAMPLE_NOW
from .support.browser import chromium_page
from .support.report_files import broken_links


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
        # and the failure clusters, which read test_results too, and the report after them (same tick)
        assert requested == {m.table for m in METRICS.values()} | {"test_flakiness", "failure_clusters", "ci_report"}
        # once handled, nothing more until the next publication
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
        assert result.total_requested == 0


def test_a_sync_redoes_the_answers_only_after_new_rows_even_across_a_crash(own_kettle):
    own_kettle.sync()
    lines: list[str] = []
    run_sync(own_kettle.settings, instance=own_kettle.instance, as_of=SAMPLE_NOW, echo=lines.append)
    assert "[metrics] no new rows: unchanged" in lines and "[clusters] no new rows: unchanged" in lines
    assert "[report] no new rows: unchanged" in lines
    # a sync killed after publishing, before the metrics ran, leaves the marker: the next one redoes them
    staging = StagingStore(home=str(own_kettle.home))
    staging.write_marker(ANSWERS_PENDING, "yes")
    lines.clear()
    run_sync(own_kettle.settings, instance=own_kettle.instance, as_of=SAMPLE_NOW, echo=lines.append)
    assert any(line.startswith("[metrics] flakes") for line in lines)
    assert any(line.startswith("[clusters] failure clusters") for line in lines)
    assert "[report] CI report" in lines
    assert staging.read_marker(ANSWERS_PENDING) == "no"


# --- the CI report, rendered by the same sync ------------------------------------------------

def _latest_metadata(instance, asset: str) -> dict:
    record = instance.fetch_materializations(dg.AssetKey(asset), limit=1, ascending=False).records[0]
    return {k: getattr(v, "value", v) for k, v in record.asset_materialization.metadata.items()}


def test_the_sync_renders_the_ci_report_and_the_metrics_link_to_it(synced):
    report = synced.home / "report"
    index = report / "index.html"
    pages = list(report.rglob("*.html"))
    assert synced.first_summary.report_pages == len(pages) > 0
    assert synced.first_summary.report_url == index.as_uri()
    meta = _latest_metadata(synced.instance, "ci_report")
    assert meta["dagster/uri"] == meta["report"] == index.as_uri()
    assert meta["pages"] == len(pages)
    assert meta["bytes"] == sum(f.stat().st_size for f in report.rglob("*") if f.is_file())
    start = datetime.fromtimestamp(SAMPLE_NOW - 14 * 86400, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    end = datetime.fromtimestamp(SAMPLE_NOW, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    window = f"started >= TIMESTAMP '{start}' AND started < TIMESTAMP '{end}'"
    assert meta["builds"] == synced.query(f'SELECT count(*) FROM "all" WHERE {window}')[0][0] > 0
    # a page per job that ran, per test that failed, per cluster
    jobs = {r[0] for r in synced.query(f'SELECT DISTINCT job FROM "all" WHERE {window}')}
    assert {links.job_page(j) for j in jobs} <= {str(p.relative_to(report)) for p in pages}
    failed = {r[0] for r in synced.query(f"SELECT DISTINCT name FROM test_results WHERE failed AND {window}")}
    assert meta["pages_by_kind"]["test"] == meta["tests_with_history"] >= len(failed) > 0
    assert all((report / links.test_page(name)).is_file() for name in failed)
    assert meta["pages_by_kind"]["cluster"] == synced.query("SELECT count(*) FROM failure_clusters")[0][0] > 0
    assert broken_links(report) == []
    # the metrics and the clusters link to the page that shows them
    assert _latest_metadata(synced.instance, "metric_flakes")["report"] == (report / "flakes.html").as_uri()
    assert _latest_metadata(synced.instance, "metric_job_health")["report"] == (report / "jobs.html").as_uri()
    assert _latest_metadata(synced.instance, "failure_clusters")["report"] == (report / "clusters.html").as_uri()


def test_the_report_follows_the_metrics_and_the_clusters(synced, tmp_path):
    defs = build_definitions(synced.settings)
    report = dg.AssetKey("ci_report")
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        assert result.get_num_requested(report) == 0
        for asset in [m.table for m in METRICS.values()] + ["test_flakiness", "failure_clusters"]:
            instance.report_runless_asset_event(dg.AssetMaterialization(asset))
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
        assert result.get_num_requested(report) == 1
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
        assert result.get_num_requested(report) == 0
    assert "ci_report" in {k.path[-1] for k in defs.resolve_job_def("refresh_report").asset_layer.selected_asset_keys}


def test_kettle_report_says_where_the_report_is_and_opens_it(synced, tmp_path, monkeypatch, capsys):
    index = synced.home / "report" / "index.html"
    for name in [k for k in os.environ if k.startswith("KETTLE_")]:
        monkeypatch.delenv(name)
    opened = tmp_path / "opened"
    # webbrowser runs $BROWSER with the URL: here a real program that writes down what it was given
    monkeypatch.setenv("BROWSER", f"{sys.executable} -c \"import sys; open(sys.argv[1], 'w').write(sys.argv[2])\" {opened} %s")
    assert cli.main(["report", "--home", str(synced.home), "--open"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"report: {index}", f"url: {index.as_uri()}"]
    assert opened.read_text() == index.as_uri()
    monkeypatch.setenv("KETTLE_HOME", str(synced.home))
    monkeypatch.setenv("KETTLE_REPORT_URL", "https://ci.example.org/kettle/")
    assert cli.main(["report"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "url: https://ci.example.org/kettle/index.html"
    assert cli.main(["report", "--home", str(tmp_path / "empty")]) == 2
    missing = capsys.readouterr()
    assert missing.out == "" and len(missing.err.splitlines()) == 1 and "kettle sync" in missing.err


def _wait_for(page, expression: str, timeout: float = 20):
    deadline = time.monotonic() + timeout
    while True:
        value = page.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


# plots drawn by plotly.js (an SVG with its data traces), once every embedded figure is drawn
PLOTS_DRAWN = ("(() => { const drawn = Array.from(document.querySelectorAll('.plot.js-plotly-plot'))"
               ".filter(p => p.querySelector('svg.main-svg .trace')).length;"
               " return drawn === document.querySelectorAll('script[data-plot]').length ? drawn : 0; })()")


@pytest.mark.ui
def test_every_kind_of_report_page_shows_data_and_plots_in_a_browser(synced, tmp_path):
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if not binary:
        pytest.skip("Chromium is not installed: run .ci/test-deps.sh (the README's test command does)")
    report = synced.home / "report"
    (cluster_id,) = synced.query("SELECT cluster_id FROM failure_clusters ORDER BY failures DESC LIMIT 1")[0]
    (job,) = synced.query("SELECT job FROM \"all\" ORDER BY started DESC LIMIT 1")[0]
    (test,) = synced.query("SELECT name FROM failure_cluster_failures WHERE cluster_id = ? LIMIT 1", cluster_id)[0]
    pages = {  # page -> text it must show, plots it must draw at least
        links.INDEX: (r"builds[\s\S]*passed", 2), links.JOBS: (re.escape(job), 2), links.FLAKES: ("Flakiest tests", 1),
        links.CLUSTERS: (cluster_id, 1), links.job_page(job): ("Grid: the last", 2),
        links.test_page(test): (r"of the latest \d+ results failed", 1), links.cluster_page(cluster_id): ("Latest failures", 1),
    }
    runs_column = ("Array.from(document.querySelectorAll('table.sortable')[0].tBodies[0].rows)"
                   ".map(r => Number(r.cells[1].textContent))")
    with chromium_page(binary, tmp_path / "profile", 1400, 900) as page:
        for path, (text, plots) in pages.items():
            page.open((report / path).as_uri(), text, timeout=20)
            assert _wait_for(page, PLOTS_DRAWN) >= plots, path
            rows = page.call("Runtime.evaluate", expression="document.querySelectorAll('tbody tr').length",
                             returnByValue=True)["result"]["value"]
            assert rows > 0, path
            if path == links.JOBS:  # a click on a column header sorts the table
                page.call("Runtime.evaluate", expression="document.querySelectorAll('table.sortable th')[1].click()")
                runs = page.call("Runtime.evaluate", expression=runs_column, returnByValue=True)["result"]["value"]
                assert runs == sorted(runs, reverse=True) and len(runs) > 1
        assert page.problems == []
