"""Rows over BigQuery's size limit are trimmed, with the trim recorded, never dropped."""

import dataclasses

import dagster as dg

from kettle_assets.core.rows import build_row, row_json, trim_row


def big_row(failures: int, passes: int, text_len: int) -> dict:
    tests = [{"name": f"fail {i}", "time": 1.0, "failed": True, "failure_text": "x" * text_len} for i in range(failures)]
    tests += [{"name": f"pass {i}", "time": 0.5} for i in range(passes)]
    return build_row("gs://b/logs/job/1", "", {"timestamp": 1}, {"timestamp": 2, "result": "FAILURE"}, [tests])


def test_small_rows_are_untouched():
    row = big_row(2, 2, 10)
    before = row_json(row)
    assert trim_row(row, 10_000) is None
    assert row_json(row) == before


def test_failure_texts_are_cut_first():
    row = big_row(5, 10, 50_000)
    note = trim_row(row, 100_000)
    assert note and "failure texts cut" in note and "dropped" not in note
    assert len(row_json(row)) <= 100_000
    assert len(row["test"]) == 15 and all(t["failure_text"] for t in row["test"][:5])
    assert row["tests_run"] == 15 and row["tests_failed"] == 5


def test_then_passing_tests_are_dropped_and_counts_kept():
    row = big_row(3, 5_000, 10)
    note = trim_row(row, 50_000)
    assert "passing tests dropped" in note and "failing" not in note
    assert len(row_json(row)) <= 50_000
    assert sum(1 for t in row["test"] if t.get("failed")) == 3  # every failure kept
    assert row["tests_run"] == 5_003 and row["tests_failed"] == 3


def test_sync_trims_and_records_it(own_kettle):
    own_kettle.settings = dataclasses.replace(own_kettle.settings, max_row_bytes=4_000)
    summary = own_kettle.sync()
    rows = own_kettle.all_export_rows()
    assert len(rows) == summary.rows_loaded  # nothing dropped
    assert max(len(row_json(r)) for r in rows) <= 4_000
    records = own_kettle.instance.fetch_materializations(dg.AssetKey("build_rows"), limit=100).records
    trimmed = {r.run_id: r.asset_materialization.metadata["rows_trimmed"].value for r in records}
    assert sum(trimmed.values()) > 0
