"""`test_results`: one row per test of every published build, per day partition of `all`."""

import dagster as dg

from ..resources.warehouse import Warehouse
from .partitions import DAYS
from .common import DAYS_PER_BACKFILL_RUN, WAREHOUSE_GROUP, md_table

METRICS_GROUP = "metrics"


@dg.asset(
    name="test_results",
    partitions_def=DAYS,
    group_name=WAREHOUSE_GROUP,
    deps=["build_all"],
    backfill_policy=DAYS_PER_BACKFILL_RUN,
    kinds={"duckdb", "bigquery"},
    pool="warehouse",
    code_version="1",
    automation_condition=dg.AutomationCondition.eager(),
    description=(
        "Warehouse table `test_results`: every test of every build of `all`, flattened with the "
        "build's job, PR and commit; each day partition is replaced from that day of `all`."
    ),
)
def test_results(context: dg.AssetExecutionContext, warehouse: Warehouse) -> dg.MaterializeResult:
    per_day = []
    for day in context.partition_keys:
        n = warehouse.replace_test_results(day)
        per_day.append({"day": day, "tests": n})
        context.log.info(f"test_results {day}: {n} test results")
    loaded = sum(d["tests"] for d in per_day)
    return dg.MaterializeResult(
        metadata={
            "rows_loaded": loaded,
            "dagster/row_count": warehouse.count("test_results"),
            "partitions_in_run": len(per_day),
            "per_day": dg.MetadataValue.md(md_table(per_day[-20:], ["day", "tests"])),
            "table": warehouse.describe("test_results"),
        }
    )

