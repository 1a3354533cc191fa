"""`ci_report`: the static CI report under $KETTLE_HOME/report/, made from the metric tables,
the failure clusters, `all` and `test_results` whenever they change."""


import time
from datetime import datetime, timezone
from typing import Optional

import dagster as dg
import orjson
from pydantic import Field

from ..core.report_data import ReportWindow
from ..core.report_site import SiteOptions, render_site, report_queries, site_pages
from ..resources.settings import KettleSettings
from ..resources.staging import StagingStore
from ..resources.warehouse import DuckDBWarehouse, Warehouse
from .links import artifact_url, report_folder, report_link
from .metrics import AFTER_NEW_ROWS

REPORT_GROUP = "report"
REPORT_DEPS = [
    dg.AssetKey(name) for name in (
        "metric_flakes", "metric_job_health", "metric_job_health_weekly", "metric_failures", "test_flakiness",
        "failure_clusters",
    )
]


class ReportConfig(dg.Config):
    as_of: Optional[float] = None  # epoch seconds the window ends at; default: now
    days: int = Field(default=14, ge=1)  # builds started in the last `days` days
    grid_builds: int = Field(default=30, ge=1)  # builds (columns) of each job's grid
    page_rows: int = Field(default=100, ge=1)  # rows of a list per page file


def _triage_spans(staging: StagingStore, log) -> dict[str, list[int]]:
    """Triage's common-text spans per cluster id, from the clusters' failure_data.json."""
    path = staging.export_dir / "triage" / "failure_data.json"
    if not path.exists():
        return {}
    try:
        return {c["id"]: c.get("spans") or [] for c in orjson.loads(path.read_bytes()).get("clustered", [])}
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError) as exc:
        log.warning(f"ci_report: {path} is not triage's format ({exc}); cluster texts shown without highlighting")
        return {}


@dg.asset(
    name="ci_report",
    group_name=REPORT_GROUP,
    deps=REPORT_DEPS,
    kinds={"html"},
    pool="warehouse",
    code_version="1",
    automation_condition=AFTER_NEW_ROWS,
    description=(
        "Static CI report under $KETTLE_HOME/report/ (open index.html from disk or serve the folder): "
        "pass rates per day and bucket, job health and grids, flakes, failure clusters, each test's history."
    ),
)
def ci_report(
    context: dg.AssetExecutionContext, config: ReportConfig, staging: StagingStore, warehouse: Warehouse,
    settings: KettleSettings,
) -> dg.MaterializeResult:
    started = time.perf_counter()
    as_of = datetime.fromtimestamp(config.as_of if config.as_of is not None else time.time(), tz=timezone.utc)
    window = ReportWindow.last_days(config.days, as_of)
    options = SiteOptions(grid_builds=config.grid_builds, page_rows=config.page_rows)
    if not isinstance(warehouse, DuckDBWarehouse):
        raise NotImplementedError(
            f"ci_report reads the DuckDB warehouse only; {type(warehouse).__name__} is not supported yet"
        )
    with_clusters = bool(
        warehouse.query("SELECT count(*) AS n FROM information_schema.tables WHERE table_name = 'failure_clusters'")[0]["n"]
    )
    if not with_clusters:
        context.log.warning("ci_report: no failure_clusters table in the warehouse; the clusters page says so")
    rows = warehouse.query_all(report_queries(window, [b.url for b in settings.buckets], options, with_clusters))
    queried = time.perf_counter()
    pages, counts = site_pages(rows, window, options, lambda path: artifact_url(path, settings.artifact_url),
                               _triage_spans(staging, context.log) if with_clusters else None)
    stats = render_site(pages, report_folder(staging), window)
    for what, n in (("unstarted_builds", "builds without a start time"), ("unnamed_tests", "test results without a name")):
        if counts[what]:
            context.log.warning(f"ci_report: {counts[what]} {n} left out")
    index = report_link(settings, staging)
    context.log.info(f"ci_report: {stats.pages} pages, {stats.bytes} bytes in {stats.seconds:.1f}s: {index.value}")
    return dg.MaterializeResult(
        metadata={
            "dagster/uri": index,
            "report": index,
            "folder": str(report_folder(staging)),
            "pages": stats.pages,
            "bytes": stats.bytes,
            "pages_by_kind": dg.MetadataValue.json(stats.pages_by_kind),
            "window_start": window.start.isoformat(),
            "window_end": window.end.isoformat(),
            "query_seconds": round(queried - started, 2),
            "render_seconds": round(stats.seconds, 2),
            **counts,
        }
    )
