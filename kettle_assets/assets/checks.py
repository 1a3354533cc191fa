"""Asset checks guarding the row contract in every warehouse table (they fail visibly in the UI)."""

import dagster as dg

from ..resources.warehouse import Warehouse

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
