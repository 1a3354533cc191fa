"""The row contract's schema, read from the project's own schema.json.

One source for BigQuery (the file itself), DuckDB DDL and the staging
Parquet layout, so the three cannot drift apart.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

_DUCKDB_TYPES = {
    "STRING": "VARCHAR",
    "INTEGER": "BIGINT",
    "FLOAT": "DOUBLE",
    "BOOLEAN": "BOOLEAN",
    "TIMESTAMP": "TIMESTAMP",
}


@lru_cache(maxsize=1)
def bigquery_schema() -> list[dict]:
    return json.loads(resources.files("kettle_assets").joinpath("schema.json").read_text())


def field_names() -> list[str]:
    return [f["name"] for f in bigquery_schema()]


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
