"""Staging: the row contract derived from schema.json, and no import-time side effects."""

import json
import os
import subprocess
import sys

import dagster as dg
import duckdb
import pyarrow as pa

from kettle_assets.core.schema import CONTRACT_COLUMNS, ROW_SCHEMA, STAGING_EXTRAS, bigquery_schema, duckdb_columns
from kettle_assets.resources.staging import StagingStore

from .conftest import REPO


def test_the_staged_row_schema_and_duckdb_columns_come_from_schema_json():
    names = [f["name"] for f in json.loads((REPO / "kettle_assets/schema.json").read_text())]
    assert CONTRACT_COLUMNS == names == [f["name"] for f in bigquery_schema()]
    assert ROW_SCHEMA.names == names + [name for name, _ in STAGING_EXTRAS]
    with duckdb.connect() as conn:
        conn.execute(f"CREATE TABLE t ({duckdb_columns()})")
        assert [d[0] for d in conn.execute("SELECT * FROM t").description] == names
    assert ROW_SCHEMA.field("finished").type == pa.int64()  # Kettle's JSON: epoch seconds
    assert ROW_SCHEMA.field("test").type.value_type.field("time").type == pa.float64()


def test_importing_the_code_location_leaves_arrows_allocator_alone():
    probe = "import pyarrow as pa; {}print(pa.default_memory_pool().backend_name)"
    plain = subprocess.run([sys.executable, "-c", probe.format("")], capture_output=True, text=True, check=True)
    loaded = subprocess.run(
        [sys.executable, "-c", probe.format("import kettle_assets.definitions, kettle_assets.resources.staging; ")],
        capture_output=True, text=True, check=True, cwd=REPO,
    )
    assert loaded.stdout == plain.stdout


def test_a_process_that_loads_the_code_location_first_gives_arrows_own_code_one_allocator():
    """Arrow's C++ code takes its pool from ARROW_DEFAULT_MEMORY_POOL when pyarrow loads; a run
    worker imports the code location first, so the Parquet writer shares the staging resource's
    jemalloc instead of a mimalloc pool beside it. A value set by the user wins."""
    probe = "import kettle_assets.definitions, pyarrow as pa; print(pa.default_memory_pool().backend_name)"
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    first = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO, env=env)
    chosen = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO,
                            env={**env, "ARROW_DEFAULT_MEMORY_POOL": "system"})
    assert first.stdout.strip() in ("jemalloc", "system")  # system: a pyarrow built without jemalloc
    assert first.stdout.strip() != "mimalloc"
    assert chosen.stdout.strip() == "system"


def test_a_run_with_the_staging_resource_uses_jemalloc(tmp_path):
    @dg.asset
    def pool_in_use(staging: StagingStore) -> str:
        return pa.default_memory_pool().backend_name

    result = dg.materialize([pool_in_use], resources={"staging": StagingStore(home=str(tmp_path))})
    assert result.output_for_node("pool_in_use") in ("jemalloc", "system")  # system: a pyarrow without jemalloc
