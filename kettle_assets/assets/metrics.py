"""Flake and health metrics, and per-test flakiness, recomputed from `all` and `test_results`.

Each metric is a warehouse table (`metric_<name>`, the query's rows) and two files under
export/metrics/: `<metric>-latest.json` and `<metric>/daily-<date>.json`, shaped as the
files consumers read today. The window defaults to the metric's (7 days, 30 days, ...)
ending now; run config can ask for any range.
"""


import time
from datetime import datetime, timezone
from typing import Optional

import dagster as dg

from ..core import report_links
from ..core.metrics import METRICS, Window, flakiness_sql, metric_sql, shape, to_json
from ..resources.settings import KettleSettings
from ..resources.staging import StagingStore
from ..resources.warehouse import Warehouse
from .common import md_table
from .links import report_link
from .test_results import METRICS_GROUP

FLAKINESS_TABLE = "test_flakiness"

# After any day of `all` (or `test_results`) is published, once no upstream run is in flight.
# Not eager(): that waits for every upstream day partition to exist, back to the start date.
AFTER_NEW_ROWS = (
    dg.AutomationCondition.any_deps_updated().since_last_handled()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
).with_label("after_new_rows")


class MetricWindowConfig(dg.Config):
    as_of: Optional[float] = None  # epoch seconds the window ends at; default: now
    days: Optional[int] = None  # window length; default: the metric's own
    start: Optional[str] = None  # ISO date or time: the window starts here instead ("since the fix")
    end: Optional[str] = None  # ISO date or time: the window ends here instead of as_of


def _instant(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def window_of(config: MetricWindowConfig, default_days: int) -> Window:
    end = _instant(config.end) if config.end else datetime.fromtimestamp(
        config.as_of if config.as_of is not None else time.time(), tz=timezone.utc
    )
    if config.start:
        return Window(_instant(config.start), end)
    return Window.last_days(config.days or default_days, end)


def _write_exports(staging: StagingStore, name: str, text: str, day: str) -> str:
    folder = staging.export_dir / "metrics"
    (folder / name).mkdir(parents=True, exist_ok=True)
    latest = folder / f"{name}-latest.json"
    for path in (latest, folder / name / f"daily-{day}.json"):
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return str(latest)


def _preview(rows: list[dict], limit: int = 10) -> str:
    return md_table(rows[:limit], list(rows[0].keys())) if rows else "_nothing_"


# The page of the CI report (`ci_report`) that shows each metric.
REPORT_PAGE = {
    "flakes": report_links.FLAKES, "flakes-daily": report_links.FLAKES, "build-stats": report_links.INDEX,
    "failures": report_links.JOBS, "job-health": report_links.JOBS, "job-health-weekly": report_links.JOBS,
    "presubmit-health": report_links.JOBS,
}


def _metric_asset(name: str, deps: list) -> dg.AssetsDefinition:
    metric = METRICS[name]

    @dg.asset(
        name=metric.table,
        group_name=METRICS_GROUP,
        deps=deps,
        kinds={"duckdb", "bigquery", "json"},
        pool="warehouse",
        code_version="1",
        automation_condition=AFTER_NEW_ROWS,
        description=f"{metric.description} Table `{metric.table}`, export metrics/{name}-latest.json.",
    )
    def metric_asset(
        context: dg.AssetExecutionContext, config: MetricWindowConfig, staging: StagingStore, warehouse: Warehouse,
        settings: KettleSettings,
    ) -> dg.MaterializeResult:
        window = window_of(config, metric.days)
        sql = metric_sql(name, window)
        count = warehouse.replace_table(metric.table, sql)
        rows = warehouse.query(f'SELECT * FROM "{metric.table}"')
        latest = _write_exports(staging, name, to_json(shape(name, rows)), window.end.date().isoformat())
        context.log.info(f"{name}: {count} rows from {window.start.isoformat()} to {window.end.isoformat()}; {latest}")
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": count,
                "window_start": window.start.isoformat(),
                "window_end": window.end.isoformat(),
                "export": latest,
                "table": warehouse.describe(metric.table),
                "top_rows": dg.MetadataValue.md(_preview(rows)),
                "report": report_link(settings, staging, REPORT_PAGE[name]),
            }
        )

    return metric_asset


@dg.asset(
    name=FLAKINESS_TABLE,
    group_name=METRICS_GROUP,
    deps=["test_results"],
    kinds={"duckdb", "bigquery", "json"},
    pool="warehouse",
    code_version="1",
    automation_condition=AFTER_NEW_ROWS,
    description=(
        "Per job and test over the window (7 days): flips (a pass then a failure, breaks of 3+ "
        "failures and infra failures left out) per result, and the trend against the window before."
    ),
)
def test_flakiness(
    context: dg.AssetExecutionContext, config: MetricWindowConfig, staging: StagingStore, warehouse: Warehouse,
    settings: KettleSettings,
) -> dg.MaterializeResult:
    window = window_of(config, 7)
    count = warehouse.replace_table(FLAKINESS_TABLE, flakiness_sql(window))
    # the export: the tests that flipped at least once (the table holds every test)
    rows = warehouse.query(f'SELECT * FROM "{FLAKINESS_TABLE}" WHERE flips > 0')
    top, flaky = rows[:10], len(rows)
    latest = _write_exports(staging, "test-flakiness", to_json(rows), window.end.date().isoformat())
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": count,
            "window_start": window.start.isoformat(),
            "window_end": window.end.isoformat(),
            "flaky_tests": flaky,
            "export": latest,
            "table": warehouse.describe(FLAKINESS_TABLE),
            "top_rows": dg.MetadataValue.md(_preview(top)),
            "report": report_link(settings, staging, report_links.FLAKES),
        }
    )


_USES_TESTS = {"flakes", "flakes-daily"}
METRIC_ASSETS = [
    *(_metric_asset(name, ["build_all", "test_results"] if name in _USES_TESTS else ["build_all"]) for name in METRICS),
    test_flakiness,
]
