"""The CI report's core on hand-made data: its queries in a real DuckDB, the page data, the
rendered site (files, links, paging, one plotly.js)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timezone

import duckdb
import pytest

from kettle_assets.core import report_data as rd
from kettle_assets.core import report_links as links
from kettle_assets.core.report_site import SiteOptions, render_site, report_queries, site_pages

from .support.report_files import broken_links

WINDOW = rd.ReportWindow(datetime(2026, 11, 1, tzinfo=timezone.utc), datetime(2026, 11, 4, tzinfo=timezone.utc))
BUCKETS = ["gs://b/logs/", "gs://b/pr-logs/"]

BUILDS = [  # path, job, number, started, elapsed, result
    ("gs://b/logs/ci-a/0", "ci-a", 0, "2026-10-30 10:00:00", 600, "SUCCESS"),  # before the window
    ("gs://b/logs/ci-a/1", "ci-a", 1, "2026-11-01 10:00:00", 600, "SUCCESS"),
    ("gs://b/logs/ci-a/2", "ci-a", 2, "2026-11-02 10:00:00", 1200, "FAILURE"),
    ("gs://b/logs/ci-a/3", "ci-a", 3, "2026-11-03 10:00:00", 1800, "SUCCESS"),
    ("gs://b/pr-logs/pull/1/pr-b/7", "pr:pr-b", 7, "2026-11-02 11:00:00", 300, "FAILURE"),
    ("gs://other/x/9", "ci-c", 9, "2026-11-03 12:00:00", 60, "SUCCESS"),
    ("gs://b/logs/ci-a/5", "ci-a", 5, None, None, None),  # no start time: counted, not shown
]
TESTS = [  # path, name, failed, failure text
    ("gs://b/logs/ci-a/1", "t1", False, None), ("gs://b/logs/ci-a/1", "t2", False, None),
    ("gs://b/logs/ci-a/1", "t3", False, None),
    ("gs://b/logs/ci-a/2", "t1", True, "boom at 0x1f"), ("gs://b/logs/ci-a/2", "t2", True, "flake"),
    ("gs://b/logs/ci-a/2", "t2", False, None), ("gs://b/logs/ci-a/2", "t3", False, None),
    ("gs://b/logs/ci-a/2", None, True, "no name"),
    ("gs://b/logs/ci-a/3", "t1", False, None), ("gs://b/logs/ci-a/3", "t3", False, None),
]


@pytest.fixture
def warehouse(tmp_path):
    conn = duckdb.connect(str(tmp_path / "w.duckdb"))
    conn.execute("""CREATE TABLE "all" (path VARCHAR, job VARCHAR, number BIGINT, started TIMESTAMP,
                    elapsed DOUBLE, result VARCHAR)""")
    conn.executemany('INSERT INTO "all" VALUES (?, ?, ?, ?, ?, ?)', BUILDS)
    conn.execute("""CREATE TABLE test_results AS SELECT t.path, a.job, a.number, a.started, t.name,
                    1.5 AS time, t.failed, t.failure_text
                    FROM (VALUES """ + ", ".join("(?, ?, ?, ?)" for _ in TESTS) + """) AS t(path, name, failed, failure_text)
                    JOIN "all" AS a USING (path)""", [v for row in TESTS for v in row])
    conn.execute("""CREATE TABLE test_flakiness AS SELECT * FROM (VALUES
                    ('ci-a', 't2', 3, 1, 33.33, NULL, NULL), ('ci-a', 't1', 3, 1, 33.33, 50.0, -16.67),
                    ('ci-a', 't3', 3, 0, 0.0, 0.0, 0.0))
                    AS f(job, name, considered, flips, flakiness, previous_flakiness, trend)""")
    conn.execute("""CREATE TABLE metric_flakes AS SELECT * FROM (VALUES
                    ('ci-a', 1.0, 0.5, 1, 3, 2, 't1', 1, 1), ('ci-a', 1.0, 0.5, 1, 3, 2, 't2', 1, 2))
                    AS f(job, build_consistency, commit_consistency, flakes, runs, commits, test, test_flakes, test_rank)""")
    conn.execute("""CREATE TABLE failure_clusters AS SELECT * FROM (VALUES
                    ('c1', 'boom at 0x1f', 'sig-a', 1, 0, 1, 1, TIMESTAMP '2026-11-02 10:00:00',
                     TIMESTAMP '2026-11-02 10:00:00'))
                    AS c(cluster_id, text, owner, failures, flaky_failures, tests, jobs, first_seen, last_seen)""")
    conn.execute("""CREATE TABLE failure_cluster_days AS SELECT 'c1' AS cluster_id, DATE '2026-11-02' AS day,
                    1 AS failures""")
    conn.execute("""CREATE TABLE failure_cluster_failures AS SELECT * FROM (VALUES
                    ('c1', 'gs://b/logs/ci-a/2', 'ci-a', 2, 't1', 0, TIMESTAMP '2026-11-02 10:00:00'),
                    ('c1', 'gs://b/logs/ci-a/0', 'ci-a', 0, 't9', 0, TIMESTAMP '2026-10-30 10:00:00'))
                    AS f(cluster_id, path, job, number, name, seq, started)""")
    yield conn
    conn.close()


def _rows(conn, sql: str) -> list[dict]:
    cursor = conn.execute(sql)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, r)) for r in cursor.fetchall()]


def _all_rows(conn, options: SiteOptions) -> dict[str, list[dict]]:
    return {name: _rows(conn, sql) for name, sql in report_queries(WINDOW, BUCKETS, options, True).items()}


def test_overview_counts_builds_and_passes_per_day_and_bucket(warehouse):
    rows = _rows(warehouse, rd.overview_sql(WINDOW, BUCKETS))
    data = rd.overview(rows, rd.day_range(WINDOW))
    assert data["days"] == ["2026-11-01", "2026-11-02", "2026-11-03"]
    by_bucket = {b["bucket"]: b for b in data["buckets"]}
    assert by_bucket["gs://b/logs/"]["daily_builds"] == [1, 1, 1]
    assert by_bucket["gs://b/logs/"]["daily_pass_rate"] == [1.0, 0.0, 1.0]
    assert by_bucket["gs://b/pr-logs/"]["daily_builds"] == [0, 1, 0]
    assert by_bucket["gs://b/pr-logs/"]["daily_pass_rate"] == [None, 0.0, None]
    assert by_bucket["gs://other/"]["pass_rate"] == 1.0  # a path under no buckets.yaml entry: its gs:// bucket
    assert (data["builds"], data["passes"], data["pass_rate"]) == (5, 3, 0.6)
    assert _rows(warehouse, rd.unstarted_builds_sql()) == [{"n": 1}]


def test_jobs_have_failure_rate_durations_and_latest_build(warehouse):
    jobs = _rows(warehouse, rd.jobs_sql(WINDOW))
    assert [j["job"] for j in jobs] == ["pr:pr-b", "ci-a", "ci-c"]  # failing most first
    a = jobs[1]
    assert (a["runs"], a["failures"], a["failure_rate"]) == (3, 1, 0.333)
    assert (a["p50_minutes"], a["p99_minutes"]) == (20.0, 29.8)  # 600/1200/1800 s: p99 = 1788 s
    assert (a["latest_path"], a["latest_result"]) == ("gs://b/logs/ci-a/3", "SUCCESS")
    assert a["latest_pass"] == datetime(2026, 11, 3, 10)
    series = rd.job_series(_rows(warehouse, rd.job_days_sql(WINDOW)), rd.day_range(WINDOW))
    assert series["ci-a"]["failure_rate"] == [0.0, 1.0, 0.0]
    assert series["pr:pr-b"]["runs"] == [0, 1, 0] and series["pr:pr-b"]["p50"] == [None, 5.0, None]


def test_grid_shows_the_failing_tests_of_the_last_builds_with_flaky_cells(warehouse):
    builds = [b for b in _rows(warehouse, rd.grid_builds_sql(WINDOW, 2)) if b["job"] == "ci-a"]
    assert [b["number"] for b in builds] == [3, 2]  # newest first, only the last 2
    results = [r for r in _rows(warehouse, rd.grid_results_sql(WINDOW, 2)) if r["job"] == "ci-a"]
    grid = rd.grid(builds, results)
    assert [(t["name"], t["cells"]) for t in grid["tests"]] == [
        ("t1", [rd.PASS, rd.FAIL]),  # most failures first
        ("t2", ["", rd.FLAKY]),  # failed and passed in build 2; did not run in build 3
    ]
    assert _rows(warehouse, rd.grid_passing_sql(WINDOW, 2)) == [{"job": "ci-a", "tests": 1}]  # t3
    assert _rows(warehouse, rd.unnamed_tests_sql(WINDOW)) == [{"n": 1}]


def test_history_keeps_the_latest_results_of_failed_and_clustered_tests(warehouse):
    rows = _rows(warehouse, rd.test_history_sql(WINDOW, 2, with_clusters=True))
    by_name = rd.group_by(rows, "name")
    assert sorted(by_name) == ["t1", "t2"]  # t3 never failed; t9 (clustered) has no result in the window
    assert [(r["number"], r["failed"], r["total"]) for r in by_name["t1"]] == [(3, False, 3), (2, True, 3)]
    assert [(r["number"], r["failed"]) for r in by_name["t2"]] == [(2, False), (2, True)]


def test_highlight_cuts_text_by_triage_spans():
    assert rd.highlight("abc def ghi", [4, 3, 4]) == [("abc ", True), ("def", False), (" ghi", True)]
    assert rd.highlight("xyz", [0, 1, 2]) == [("x", False), ("yz", True)]
    assert rd.highlight("only", None) == [("only", True)]
    assert rd.highlight("", []) == []


def test_paging_and_small_helpers():
    assert [list(p) for p in rd.pages_of(list(range(5)), 2)] == [[0, 1], [2, 3], [4]]
    assert [list(p) for p in rd.pages_of([], 2)] == [[]]
    assert links.paged(links.JOBS, 1) == "jobs.html" and links.paged(links.JOBS, 3) == "jobs-p3.html"
    assert links.paged(links.job_page("ci-a"), 2) == "jobs/ci-a-p2.html"
    assert [rd.trend_word(t) for t in (None, 2.0, -1.0, 0.0)] == ["new", "worse", "better", "same"]
    assert rd.rate(1, 3) == 0.333 and rd.rate(1, 0) is None


def test_site_renders_every_page_kind_with_working_links_and_one_plotly(warehouse, tmp_path):
    options = SiteOptions(grid_builds=3, page_rows=1)
    pages, counts = site_pages(_all_rows(warehouse, options), WINDOW, options,
                               lambda p: "https://gcsweb.example/gcs/" + p[len("gs://"):] + "/", {"c1": [5, 2, 5]})
    assert counts["unstarted_builds"] == 1 and counts["unnamed_tests"] == 1
    folder = tmp_path / "report"
    (folder / "stale.html").parent.mkdir()
    (folder / "stale.html").write_text("old")
    stats = render_site(pages, folder, WINDOW)
    assert not (folder / "stale.html").exists()  # the new report replaces the old one whole
    files = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
    assert {"index.html", "jobs.html", "jobs-p2.html", "jobs-p3.html", "flakes.html", "flakes-p2.html",
            "clusters.html", "jobs/ci-a.html", "jobs/ci-a-p2.html", "jobs/ci-c.html", "tests/t1.html",
            "tests/t2.html", "clusters/c1.html", "assets/plotly.min.js", "assets/report.js",
            "assets/report.css"} <= files
    assert not any(f.startswith("tests/t3") or f.startswith("tests/t9") for f in files)
    assert stats.pages == len([f for f in files if f.endswith(".html")])
    assert stats.bytes == sum((folder / f).stat().st_size for f in files)
    assert broken_links(folder) == []
    job = (folder / "jobs/ci-a.html").read_text()
    assert 'src="../assets/plotly.min.js"' in job and 'href="../tests/t1.html"' in job
    assert 'href="https://gcsweb.example/gcs/b/logs/ci-a/2/"' in job  # every build links to its artifacts
    assert job.count('<td class="cell fail"') == 1 and job.count('<td class="cell pass"') == 2  # t1: 1 row a page
    assert job.count("data-plot=") == 2
    assert "<mark>boom </mark>at<mark> 0x1f</mark>" in (folder / "clusters/c1.html").read_text()
    assert len(list((folder / "assets").glob("plotly*"))) == 1


def test_hostile_names_are_escaped_and_get_safe_file_names(tmp_path):
    window = WINDOW
    name = '<script>alert(1)</script> ../../etc/passwd'
    rows = {k: [] for k in ("overview", "jobs", "job_days", "grid_builds", "grid_results", "grid_passing",
                            "flaky_tests", "flaky_jobs")}
    rows.update({"unstarted": [{"n": 0}], "unnamed_tests": [{"n": 0}], "history": [
        {"name": name, "job": "j", "path": "gs://b/j/1", "number": 1, "started": datetime(2026, 11, 2),
         "time": 1.0, "failed": True, "failure_text": "</script><b>x</b>", "total": 1}]})
    pages, _ = site_pages(rows, window, SiteOptions(), lambda p: None)
    render_site(pages, tmp_path / "r", window)
    page = tmp_path / "r" / links.test_page(name)
    assert page.parent == tmp_path / "r" / "tests"
    html = page.read_text()
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<b>x</b>" not in html


def test_a_render_killed_midway_leaves_nothing_behind_after_the_next(tmp_path):
    # a render SIGKILLed between its steps leaves its half-written and swapped-out folders
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    leftovers = [tmp_path / f".report.new-{gone.pid}", tmp_path / f".report.old-{gone.pid}"]
    for path in leftovers:
        (path / "jobs").mkdir(parents=True)
    living = tmp_path / f".report.new-{os.getppid()}"  # a render still going in another process
    living.mkdir()
    pages, _ = site_pages({k: [] for k in ("overview", "jobs", "job_days", "grid_builds", "grid_results",
                                           "grid_passing", "flaky_tests", "flaky_jobs", "history")}
                          | {"unstarted": [{"n": 0}], "unnamed_tests": [{"n": 0}]}, WINDOW, SiteOptions(), lambda p: None)
    render_site(pages, tmp_path / "report", WINDOW)
    assert (tmp_path / "report" / "index.html").exists()
    assert not any(p.exists() for p in leftovers)
    assert living.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["report", living.name])
