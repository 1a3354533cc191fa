"""The row contract, generated from the project's own schema.json, the one source.

BigQuery takes the file itself; DuckDB's DDL, the staged rows' Arrow schema and the list of
contract columns are derived from it here, so none of them can drift from the others.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

import pyarrow as pa

_DUCKDB_TYPES = {
    "STRING": "VARCHAR",
    "INTEGER": "BIGINT",
    "FLOAT": "DOUBLE",
    "BOOLEAN": "BOOLEAN",
    "TIMESTAMP": "TIMESTAMP",
}
_ARROW_TYPES = {
    "STRING": pa.string(),
    "INTEGER": pa.int64(),
    "FLOAT": pa.float64(),
    "BOOLEAN": pa.bool_(),
}
# Staged rows hold what Kettle's JSON holds: these columns as whole epoch seconds.
STAGED_AS_SECONDS = ("started", "finished", "elapsed")
# Staged beside the contract, never loaded: the exact make_json line (exports are these lines,
# never re-serialised) and the finished.json (and row-logic version) the row was built from.
STAGING_EXTRAS = [("_json", pa.string()), ("_finished_hash", pa.string())]


@lru_cache(maxsize=1)
def bigquery_schema() -> list[dict]:
    return json.loads(resources.files("kettle_assets").joinpath("schema.json").read_text())


def _duckdb_type(field: dict) -> str:
    if field["type"] == "RECORD":
        inner = ", ".join(f'"{f["name"]}" {_duckdb_type(f)}' for f in field["fields"])
        base = f"STRUCT({inner})"
    else:
        base = _DUCKDB_TYPES[field["type"]]
    return base + "[]" if field.get("mode") == "REPEATED" else base


def duckdb_columns() -> str:
    """Column definitions for CREATE TABLE, in contract order."""
    cols = []
    for f in bigquery_schema():
        not_null = " NOT NULL" if f.get("mode") == "REQUIRED" else ""
        cols.append(f'"{f["name"]}" {_duckdb_type(f)}{not_null}')
    return ", ".join(cols)


def _arrow_type(field: dict) -> pa.DataType:
    if field["type"] == "RECORD":
        base = pa.struct([(f["name"], _arrow_type(f)) for f in field["fields"]])
    elif field["name"] in STAGED_AS_SECONDS:
        base = pa.int64()
    else:
        base = _ARROW_TYPES[field["type"]]
    return pa.list_(base) if field.get("mode") == "REPEATED" else base


def _contract_field(name: str) -> dict:
    return next(f for f in bigquery_schema() if f["name"] == name)


CONTRACT_COLUMNS = [f["name"] for f in bigquery_schema()]
TIMESTAMP_COLUMNS = [f["name"] for f in bigquery_schema() if f["type"] == "TIMESTAMP"]


def duckdb_select_staged() -> str:
    """The SELECT list that turns staged rows into the contract's DuckDB types (epoch seconds
    to TIMESTAMP, whole seconds to DOUBLE)."""
    cols = []
    for f in bigquery_schema():
        name = f["name"]
        if f["type"] == "TIMESTAMP":
            cols.append(f"make_timestamp({name} * 1000000) AS {name}")
        elif name in STAGED_AS_SECONDS:
            cols.append(f"CAST({name} AS {_DUCKDB_TYPES[f['type']]}) AS {name}")
        else:
            cols.append(name)
    return ", ".join(cols)
# Contract rows as staged: the contract's columns (timestamps and elapsed as epoch seconds) + extras.
ROW_SCHEMA = pa.schema([(f["name"], _arrow_type(f)) for f in bigquery_schema()] + STAGING_EXTRAS)
# One test of a build, as the contract's `test` records hold it.
TEST_TYPE = _arrow_type({**_contract_field("test"), "mode": "NULLABLE"})
