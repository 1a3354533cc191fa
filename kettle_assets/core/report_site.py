"""The CI report as a static site: the queries it needs, the pages made from their rows, and
their rendering with Jinja2 templates (package data `kettle_assets/report_templates/`).

Plots are plotly figure specs drawn by plotly.js, which is written once into `assets/` and
loaded by a relative path, so the site works opened from disk and from any static host.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Callable, Sequence

import jinja2
import orjson
from markupsafe import Markup

from . import report_data as rd
from . import report_links as links

STATIC_FILES = ("report.css", "report.js")
PLOTLY_JS = "assets/plotly.min.js"


@dataclass(frozen=True)
class SiteOptions:
    grid_builds: int = 30  # builds (columns) in a job's grid
    page_rows: int = 100  # rows of a list per page file
    history: int = 100  # latest results shown on a test's page
    cluster_failures: int = 100  # latest failures listed on a cluster's page


def report_queries(window: rd.ReportWindow, bucket_urls: Sequence[str], options: SiteOptions,
                   with_clusters: bool) -> dict[str, str]:
    """Name -> query (DuckDB's dialect) of every set of rows the site is made from."""
    queries = {
        "overview": rd.overview_sql(window, bucket_urls),
        "unstarted": rd.unstarted_builds_sql(),
        "jobs": rd.jobs_sql(window),
        "job_days": rd.job_days_sql(window),
        "grid_builds": rd.grid_builds_sql(window, options.grid_builds),
        "grid_results": rd.grid_results_sql(window, options.grid_builds),
        "grid_passing": rd.grid_passing_sql(window, options.grid_builds),
        "unnamed_tests": rd.unnamed_tests_sql(window),
        "flaky_tests": rd.flaky_tests_sql(),
        "flaky_jobs": rd.flaky_jobs_sql(),
        "history": rd.test_history_sql(window, options.history, with_clusters),
    }
    if with_clusters:
        queries.update({
            "clusters": rd.clusters_sql(), "cluster_days": rd.cluster_days_sql(),
            "cluster_failures": rd.cluster_failures_sql(options.cluster_failures),
            "cluster_tests": rd.cluster_tests_sql(),
        })
    return queries


@dataclass
class Page:
    path: str  # relative to the report's root
    template: str
    kind: str  # index, jobs, job, flakes, clusters, cluster, test
    context: dict = field(default_factory=dict)


class Linker:
    """Relative links between pages; a job, test or cluster links only if it has a page."""

    def __init__(self, jobs: set[str], tests: set[str], clusters: set[str], artifact_url: Callable[[str], str | None]):
        self.jobs, self.tests, self.clusters = jobs, tests, clusters
        self.artifact_url = artifact_url

    def job(self, name: str | None) -> str | None:
        return links.job_page(name) if name in self.jobs else None

    def test(self, name: str | None) -> str | None:
        return links.test_page(name) if name in self.tests else None

    def cluster(self, cluster_id: str | None) -> str | None:
        return links.cluster_page(cluster_id) if cluster_id in self.clusters else None

    def build(self, path: str | None) -> str | None:
        return self.artifact_url(path) if path else None


def _when(value) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    return "" if value is None else str(value)


def site_pages(rows: dict[str, list[dict]], window: rd.ReportWindow, options: SiteOptions,
               artifact_url: Callable[[str], str | None], spans: dict[str, list[int]] | None = None) -> tuple[list[Page], dict]:
    """Every page of the site from the rows of `report_queries`, and counts for the metadata.

    `spans`: triage's common-text spans per cluster id (from its failure_data.json), for the
    highlighting; a cluster without them is shown as all common."""
    days = rd.day_range(window)
    history = rd.group_by(rows["history"], "name")
    jobs = rows["jobs"]
    clusters = rows.get("clusters", [])
    linker = Linker({j["job"] for j in jobs}, set(history), {c["cluster_id"] for c in clusters}, artifact_url)
    per_page = options.page_rows
    pages: list[Page] = []

    overview = rd.overview(rows["overview"], days)
    series = rd.job_series(rows["job_days"], days)
    flaky_tests = [{**t, "trend_word": rd.trend_word(t["trend"])} for t in rows["flaky_tests"]]
    flaky_jobs = rows["flaky_jobs"]
    failing_now = [j for j in jobs if j["latest_result"] != "SUCCESS"]
    pages.append(Page(links.INDEX, "index.html", "index", {
        "title": "Overview", "overview": overview, "figures": rd.overview_figures(overview),
        "jobs_count": len(jobs), "failing_now": failing_now[:10], "failing_now_count": len(failing_now),
        "worst_jobs": jobs[:10], "flaky_tests": flaky_tests[:10], "flaky_tests_count": len(flaky_tests),
        "clusters": clusters[:5], "clusters_count": len(clusters), "with_clusters": "clusters" in rows,
    }))

    job_pages = rd.pages_of(jobs, per_page)
    for n, chunk in enumerate(job_pages, 1):
        pages.append(Page(links.paged(links.JOBS, n), "jobs.html", "jobs", {
            "title": "Job health", "jobs": chunk, "page": n, "pages": len(job_pages), "base": links.JOBS,
            "figures": rd.jobs_figures(jobs, series) if n == 1 else [], "total": len(jobs),
        }))

    builds_by_job = rd.group_by(rows["grid_builds"], "job")
    results_by_job = rd.group_by(rows["grid_results"], "job")
    passing = {r["job"]: r["tests"] for r in rows["grid_passing"]}
    for job in jobs:
        name = job["job"]
        grid = rd.grid(builds_by_job.get(name, []), results_by_job.get(name, []))
        chunks = rd.pages_of(grid["tests"], per_page)
        base = links.job_page(name)
        for n, chunk in enumerate(chunks, 1):
            pages.append(Page(links.paged(base, n), "job.html", "job", {
                "title": name, "job": job, "builds": grid["builds"], "tests": chunk, "page": n, "pages": len(chunks),
                "base": base, "failing_tests": len(grid["tests"]), "passing_tests": passing.get(name, 0),
                "figures": rd.job_figures(name, series.get(name) or _no_series(days)) if n == 1 else [],
            }))

    flake_pages = rd.pages_of(flaky_tests, per_page)
    for n, chunk in enumerate(flake_pages, 1):
        pages.append(Page(links.paged(links.FLAKES, n), "flakes.html", "flakes", {
            "title": "Flakes", "tests": chunk, "jobs": flaky_jobs if n == 1 else [], "page": n,
            "pages": len(flake_pages), "base": links.FLAKES, "total": len(flaky_tests),
            "figures": rd.flaky_figures(flaky_tests, flaky_jobs) if n == 1 and (flaky_tests or flaky_jobs) else [],
        }))

    if "clusters" in rows:
        spans = spans or {}
        days_by_cluster: dict[str, dict[str, int]] = {}
        for r in rows["cluster_days"]:
            days_by_cluster.setdefault(r["cluster_id"], {})[rd.iso_day(r["day"])] = r["failures"]
        cluster_days = sorted({d for c in days_by_cluster.values() for d in c}) or days
        for c in clusters:
            c["pieces"] = rd.highlight(c["text"] or "", spans.get(c["cluster_id"]))
        cluster_list = rd.pages_of(clusters, per_page)
        for n, chunk in enumerate(cluster_list, 1):
            pages.append(Page(links.paged(links.CLUSTERS, n), "clusters.html", "clusters", {
                "title": "Failure clusters", "clusters": chunk, "page": n, "pages": len(cluster_list),
                "base": links.CLUSTERS, "total": len(clusters),
                "figures": [rd.clusters_figure(clusters[:10], days_by_cluster, cluster_days)] if n == 1 and clusters else [],
            }))
        failures = rd.group_by(rows["cluster_failures"], "cluster_id")
        tests = rd.group_by(rows["cluster_tests"], "cluster_id")
        for c in clusters:
            cid = c["cluster_id"]
            shown = failures.get(cid, [])
            by_test, by_job = Counter(), Counter()
            for r in tests.get(cid, []):
                by_test[r["name"]] += r["failures"]
                by_job[r["job"]] += r["failures"]
            pages.append(Page(links.cluster_page(cid), "cluster.html", "cluster", {
                "title": f"Cluster {cid}", "cluster": c, "failures": shown,
                "failures_total": shown[0]["total"] if shown else 0,
                "tests": by_test.most_common(per_page), "tests_total": len(by_test),
                "jobs": by_job.most_common(per_page), "jobs_total": len(by_job),
                "figures": [rd.cluster_figure(cluster_days, days_by_cluster.get(cid, {}), "failures per day")],
            }))
    else:
        pages.append(Page(links.CLUSTERS, "clusters.html", "clusters", {
            "title": "Failure clusters", "clusters": [], "page": 1, "pages": 1, "base": links.CLUSTERS, "total": 0,
            "figures": [], "unavailable": True,
        }))

    for name, results in history.items():
        for r in results:
            r["job_href"], r["build_href"] = linker.job(r["job"]), linker.build(r["path"])
        pages.append(Page(links.test_page(name), "test.html", "test", {
            "title": name, "name": name, "results": results, "total": results[0]["total"],
            "failed": sum(1 for r in results if r["failed"]), "jobs": sorted({r["job"] for r in results if r["job"]}),
            "figures": [rd.test_history_figure(name, results)],
        }))

    counts = {
        "unstarted_builds": int(rows["unstarted"][0]["n"]) if rows["unstarted"] else 0,
        "unnamed_tests": int(rows["unnamed_tests"][0]["n"]) if rows["unnamed_tests"] else 0,
        "jobs": len(jobs), "tests_with_history": len(history), "flaky_tests": len(flaky_tests),
        "clusters": len(clusters), "builds": overview["builds"],
    }
    for page in pages:
        page.context["linker"] = linker
    return pages, counts


def _no_series(days: list[str]) -> dict:
    return {"days": days, "runs": [0] * len(days), "failure_rate": [None] * len(days),
            "p50": [None] * len(days), "p99": [None] * len(days)}


_CELL = {state: Markup(f'<td class="cell {state}" title="{state or "no result"}"></td>')
         for state in (rd.PASS, rd.FAIL, rd.FLAKY, "")}


def _cells(cells: list[str]) -> Markup:
    """A grid row's cells (the grids are the bulk of the HTML: no per-cell template work)."""
    return Markup("".join(_CELL[c] for c in cells))


def _plain(value):
    """JSON for what warehouses return beside plain numbers (DECIMAL columns)."""
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"{type(value).__name__} in a figure")


def _figure_json(figure: dict) -> Markup:
    """A figure as JSON safe inside <script> (no `</` can close it)."""
    return Markup(orjson.dumps(figure, default=_plain).decode().replace("</", "<\\/"))


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("kettle_assets", "report_templates"),
        autoescape=True, trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined,
    )
    env.filters["figure_json"] = _figure_json
    env.filters["cells"] = _cells
    env.filters["when"] = _when
    env.filters["pct"] = lambda v: "" if v is None else f"{100 * v:.1f}%"
    env.filters["num"] = lambda v: "" if v is None else (f"{v:g}" if isinstance(v, float) else str(v))
    return env


@dataclass
class RenderStats:
    pages: int
    bytes: int
    pages_by_kind: dict[str, int]
    seconds: float


def plotly_js() -> bytes:
    """plotly.js as the plotly package ships it (no CDN)."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs().encode()


def _remove_leftovers(folder: Path) -> None:
    """The half-written or swapped-out folders of renders killed midway (their process is gone)."""
    for path in folder.parent.glob(f".{folder.name}.*-*"):
        kind, _, pid = path.name[len(folder.name) + 2:].partition("-")
        if kind in ("new", "old") and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def render_site(pages: list[Page], folder: Path, window: rd.ReportWindow, generated: datetime | None = None) -> RenderStats:
    """Write every page, the static files and plotly.js into a new folder, then swap it in for
    `folder`: readers see the old report or the new one, never a mix of both."""
    started = time.perf_counter()
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(folder)
    fresh = folder.with_name(f".{folder.name}.new-{os.getpid()}")
    shutil.rmtree(fresh, ignore_errors=True)
    (fresh / "assets").mkdir(parents=True)
    for sub in ("jobs", "tests", "clusters"):
        (fresh / sub).mkdir()
    (fresh / PLOTLY_JS).write_bytes(plotly_js())
    static = Path(__file__).resolve().parent.parent / "report_templates" / "assets"
    for name in STATIC_FILES:
        shutil.copyfile(static / name, fresh / "assets" / name)
    env = environment()
    generated = generated or datetime.now(timezone.utc)
    shared = {"window_start": _when(window.start), "window_end": _when(window.end), "generated": _when(generated),
              "links": links}
    templates: dict[str, jinja2.Template] = {}
    total, kinds = 0, Counter()
    for page in pages:
        template = templates.get(page.template) or templates.setdefault(page.template, env.get_template(page.template))
        root = "../" * page.path.count("/")
        html = template.render(**shared, **page.context, root=root, kind=page.kind).encode()
        (fresh / page.path).write_bytes(html)
        total += len(html)
        kinds[page.kind] += 1
    total += sum(f.stat().st_size for f in (fresh / "assets").iterdir())
    old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
    if folder.exists():
        folder.rename(old)
    fresh.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return RenderStats(pages=len(pages), bytes=total, pages_by_kind=dict(kinds), seconds=time.perf_counter() - started)
