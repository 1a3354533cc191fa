"""Asset checks: the row contract in every warehouse table, and anomalies of builds and days
(they fail visibly in the UI)."""

from datetime import datetime, timezone

import dagster as dg

from ..core.anomalies import sharp_test_drops, thin_days
from ..resources.settings import KettleSettings
from ..resources.staging import StagingStore
from ..resources.warehouse import Warehouse
from .common import md_table
from .links import md_link

TABLE_ASSETS = {"all": "build_all", "week": "build_week", "day": "build_day"}


def make_contract_checks() -> list[dg.AssetChecksDefinition]:
    checks = []
    for table, asset in TABLE_ASSETS.items():
        checks.append(_contract_check(table, asset))
    return checks


def _contract_check(table: str, asset: str) -> dg.AssetChecksDefinition:
    specs = [
        dg.AssetCheckSpec("schema_matches_contract", asset=asset, description="Columns and types are schema.json's."),
        dg.AssetCheckSpec("one_row_per_path", asset=asset, description="No build appears twice."),
        dg.AssetCheckSpec("tests_failed_within_tests_run", asset=asset, description="tests_failed <= tests_run."),
    ]

    @dg.multi_asset_check(specs=specs, name=f"{asset}_contract", can_subset=False)
    def contract(warehouse: Warehouse):
        found = warehouse.contract_findings(table)
        yield dg.AssetCheckResult(
            asset_key=asset, check_name="schema_matches_contract", passed=not found["schema_differences"],
            metadata={"differences": dg.MetadataValue.json(found["schema_differences"])},
        )
        yield dg.AssetCheckResult(
            asset_key=asset, check_name="one_row_per_path", passed=found["duplicate_rows"] == 0,
            metadata={"duplicate_rows": found["duplicate_rows"], "rows": found["rows"]},
        )
        yield dg.AssetCheckResult(
            asset_key=asset, check_name="tests_failed_within_tests_run", passed=found["failed_over_run"] == 0,
            metadata={"rows_with_more_failures_than_tests": found["failed_over_run"]},
        )

    return contract


# Days of staged rows the build checks look at: four weeks of history before the latest week.
CHECK_HISTORY_DAYS = 35


def make_build_checks() -> list[dg.AssetChecksDefinition]:
    """Checks that look at builds, not tables: a build that lost most of its tests, a thin day."""
    specs = [
        dg.AssetCheckSpec(
            "no_sharp_test_count_drop", asset="build_rows",
            description=(
                "No build ran under half the tests of its job's median over the 5 builds before it "
                "(jobs with a median under 10 tests are not judged). Warns: a job may shrink on purpose."
            ),
        ),
        dg.AssetCheckSpec(
            "no_thin_day", asset="build_rows",
            description=(
                "No day has under half the builds of the same weekday's median over the 4 weeks before "
                "(today, still filling, is not judged). Warns: an outage, or a holiday."
            ),
        ),
    ]

    @dg.multi_asset_check(specs=specs, name="build_rows_anomalies", can_subset=True)
    def anomalies(context: dg.AssetCheckExecutionContext, staging: StagingStore, settings: KettleSettings):
        days = staging.row_days()[-CHECK_HISTORY_DAYS:]
        builds: list[dict] = []
        per_day: dict[str, int] = {}
        for day in days:
            rows = staging.read_rows(day, ["path", "job", "started", "tests_run"]).to_pylist()
            builds.extend(rows)
            per_day[day] = len(rows)
        today = datetime.now(timezone.utc).date().isoformat()
        wanted = {key.name for key in context.selected_asset_check_keys}
        if "no_sharp_test_count_drop" in wanted:
            drops = sharp_test_drops(builds)
            for d in drops[:20]:
                context.log.warning(f"{d['path']}: {d['tests_run']} tests, its job's typical is {d['typical']}")
            yield dg.AssetCheckResult(
                check_name="no_sharp_test_count_drop", passed=not drops, severity=dg.AssetCheckSeverity.WARN,
                metadata={
                    "builds_checked": len(builds), "days_checked": len(days), "builds_with_drop": len(drops),
                    "drops": dg.MetadataValue.md(md_table(
                        [{**d, "path": md_link(d["path"], settings.artifact_url)} for d in drops[:20]],
                        ["path", "job", "tests_run", "typical"], raw=("path",),
                    )),
                },
            )
        if "no_thin_day" in wanted:
            thin = thin_days(per_day, before=today)
            yield dg.AssetCheckResult(
                check_name="no_thin_day", passed=not thin, severity=dg.AssetCheckSeverity.WARN,
                metadata={"days_checked": len(days), "thin_days": len(thin),
                          "days": dg.MetadataValue.md(md_table(thin, ["day", "builds", "typical"]))},
            )

    return [anomalies]
