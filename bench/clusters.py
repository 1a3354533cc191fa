"""Benchmark of `failure_clusters`: generated failures in a real DuckDB, the asset run through
Dagster from scratch, then a daily increment (one more day of failures, the oldest day leaving
the 14-day window). Each scale runs in its own process so its peak RSS is its own.

    python bench/clusters.py --failures 50000            # one scale, prints a JSON line
    python bench/clusters.py --scales 50000,200000 --write-results   # table into bench/results.md
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def _load(home: Path, failures: list, builds: dict) -> None:
    import duckdb
    import pyarrow as pa

    from kettle_assets.project import duckdb_warehouse

    duckdb_warehouse(home).ensure_tables()
    with duckdb.connect(str(home / "warehouse.duckdb")) as conn:
        conn.execute("""CREATE TABLE IF NOT EXISTS test_results (path VARCHAR NOT NULL, job VARCHAR, number BIGINT,
                        started TIMESTAMP, finished TIMESTAMP, pr BIGINT, "commit" VARCHAR, name VARCHAR,
                        time DOUBLE, failed BOOLEAN NOT NULL, failure_text VARCHAR)""")
        rows = pa.table({
            "path": [f.path for f in failures], "job": [f.job for f in failures],
            "number": [f.number for f in failures], "started": [f.started for f in failures],
            "commit": [f"c{f.number % 97}" for f in failures], "name": [f.test for f in failures],
            "failure_text": [f.text for f in failures],
        })
        conn.register("incoming", rows)
        conn.execute("""INSERT INTO test_results SELECT path, job, number, make_timestamp(started * 1000000),
                        make_timestamp(started * 1000000), NULL, "commit", name, 1.0, TRUE, failure_text FROM incoming""")
        conn.unregister("incoming")
        new_builds = [b for b in builds.values()]
        table = pa.table({"path": [b.path for b in new_builds], "job": [b.job for b in new_builds],
                          "number": [b.number for b in new_builds], "started": [b.started for b in new_builds]})
        conn.register("incoming", table)
        conn.execute("""INSERT INTO "all" (path, job, number, started, finished, elapsed, tests_run, tests_failed,
                        result, executor)
                        SELECT path, job, number, make_timestamp(started * 1000000),
                               make_timestamp(started * 1000000), 600, 100, 1, 'FAILURE', 'prow'
                        FROM incoming WHERE path NOT IN (SELECT path FROM "all")""")
        conn.unregister("incoming")


def _run(home: Path, **config) -> tuple[float, dict]:
    import dagster as dg

    from kettle_assets.assets.failure_clusters import failure_clusters
    from kettle_assets.project import Settings, duckdb_warehouse, settings_resource
    from kettle_assets.resources.staging import StagingStore

    settings = settings_resource(Settings(home=str(home), buckets_file=str(BENCH.parent / "buckets.yaml")))
    start = time.monotonic()
    result = dg.materialize(
        [failure_clusters],
        resources={"warehouse": duckdb_warehouse(home), "staging": StagingStore(home=str(home)), "settings": settings},
        run_config={"ops": {"failure_clusters": {"config": config}}},
        instance=dg.DagsterInstance.ephemeral(),
    )
    wall = time.monotonic() - start
    assert result.success
    meta = result.asset_materializations_for_node("failure_clusters")[0].metadata
    return wall, {k: v.value for k, v in meta.items() if k != "top_clusters"}


def _days(corpus):
    day = {id(f): datetime.fromtimestamp(f.started, tz=timezone.utc).date() for f in corpus}
    last = max(day.values())
    return [f for f in corpus if day[id(f)] < last], [f for f in corpus if day[id(f)] == last]


def stage(name: str, failures: int, workdir: Path) -> dict:
    """One step in its own process: load (history and the next day, generated), cold, increment."""
    home = workdir / f"home-{failures}"
    if name in ("load", "load_day"):
        import failure_corpus

        if name == "load":
            shutil.rmtree(home, ignore_errors=True)
            home.mkdir(parents=True)
        corpus = failure_corpus.generate(failures + failures // 14, days=15, seed=1,
                                         start=datetime(2026, 11, 1, tzinfo=timezone.utc))
        history, new_day = _days(corpus)
        rows = history if name == "load" else new_day
        _load(home, rows, {f.path: f for f in rows})
        return {"text_mb": round(sum(len(f.text) for f in rows) / 1e6, 1)}
    wall, meta = _run(home, full=(name == "cold"))
    meta["wall"] = round(wall, 1)
    own, workers = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU of the whole stage process (imports included) and of its normalising workers. Not the
    # workers' peak RSS: a child's ru_maxrss counts the parent's pages between fork and exec.
    meta["cpu"] = round(own.ru_utime + own.ru_stime + workers.ru_utime + workers.ru_stime, 1)
    meta["rss_mb"] = round(own.ru_maxrss * 1024 / 1e6)
    return meta


def one_scale(failures: int, workdir: Path, reuse_load: bool = False) -> dict:
    def run(name: str) -> dict:
        out = subprocess.run([sys.executable, __file__, "--failures", str(failures), "--stage", name,
                              "--workdir", str(workdir)], capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(f"stage {name} failed:\n{out.stderr[-4000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    done = workdir / f"home-{failures}" / "loaded.json"
    if reuse_load and done.exists():
        loaded = json.loads(done.read_text())
    else:
        loaded = run("load")
        done.write_text(json.dumps(loaded))
    cold = run("cold")
    run("load_day")
    inc = run("increment")
    return {
        "failures": cold["failures"], "text_mb": loaded["text_mb"],
        "cold_wall": cold["wall"], "cold_cpu": cold["cpu"], "cold_clustering": cold["clustering_seconds"],
        "cold_summary": cold["summary_seconds"], "cold_render": cold["render_seconds"],
        "cold_rss_mb": cold["rss_mb"],
        "clusters": cold["clusters"], "clusters_in_triage": cold["clusters_in_triage"],
        "distance_checks": cold["distance_checks"], "bound_hits": cold["bound_hits"],
        "failure_data_mb": round(cold["failure_data_bytes"] / 1e6, 2),
        "largest_slice_mb": round(cold["largest_slice_bytes"] / 1e6, 2),
        "increment_new": inc["new_failures"], "increment_kept": inc["kept_failures"],
        "increment_wall": inc["wall"], "increment_cpu": inc["cpu"], "increment_clustering": inc["clustering_seconds"],
        "increment_summary": inc["summary_seconds"], "increment_render": inc["render_seconds"],
        "increment_tokenized": inc["tokenized_failures"],
        "increment_rss_mb": inc["rss_mb"], "mode": inc["mode"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--failures", type=int)
    parser.add_argument("--stage", choices=("load", "cold", "load_day", "increment"))
    parser.add_argument("--scales", default="50000")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--write-results", action="store_true")
    parser.add_argument("--reuse-load", action="store_true", help="keep a home loaded by an earlier run in --workdir")
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="kettle-clusters-"))
    if args.stage:
        print(json.dumps(stage(args.stage, args.failures, workdir)))
        return
    rows = []
    for n in ([args.failures] if args.failures else (int(s) for s in args.scales.split(","))):
        rows.append(one_scale(n, workdir, args.reuse_load))
        print(json.dumps(rows[-1]), flush=True)
        shutil.rmtree(workdir / f"home-{n}", ignore_errors=True)
    if args.write_results:
        write_results(rows, args.scales)


LABELS = [
    ("failures", "failures in the 14-day window"), ("text_mb", "failure text (MB)"),
    ("cold_wall", "from scratch: wall (s), asset run through Dagster"), ("cold_cpu", "from scratch: CPU (s), with workers"),
    ("cold_clustering", "  of which clustering (s)"), ("cold_summary", "  of which describing the clusters (s)"),
    ("cold_render", "  writing failure_data.json and slices, beside the tables (s)"),
    ("cold_rss_mb", "from scratch: peak RSS (MB)"),
    ("clusters", "clusters (all / in failure_data.json)"),
    ("distance_checks", "exact edit distances computed"), ("bound_hits", "texts that hit the size bound"),
    ("failure_data_mb", "failure_data.json (MB)"), ("largest_slice_mb", "largest slice (MB)"),
    ("increment_new", "daily increment: new / kept failures"), ("increment_wall", "daily increment: wall (s)"),
    ("increment_cpu", "daily increment: CPU (s)"), ("increment_clustering", "  of which clustering (s)"),
    ("increment_summary", "  of which describing the clusters (s)"),
    ("increment_tokenized", "  failures tokenised for the spans"),
    ("increment_render", "  writing failure_data.json and slices, beside the tables (s)"),
    ("increment_rss_mb", "daily increment: peak RSS (MB)"),
]


def write_results(rows: list[dict], scales: str) -> None:
    lines = ["", "## Failure clusters", "",
             f"Machine: {platform.machine()}, 2 cores (shared), Python {platform.python_version()}. "
             f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC. Command: `python bench/clusters.py --scales {scales} --write-results`.",
             "", "| measure | " + " | ".join(f"{r['failures']:,}" for r in rows) + " |",
             "|---|" + "---|" * len(rows)]
    for key, label in LABELS:
        if key == "clusters":
            cells = [f"{r['clusters']} / {r['clusters_in_triage']}" for r in rows]
        elif key == "increment_new":
            cells = [f"{r['increment_new']} / {r['increment_kept']}" for r in rows]
        else:
            cells = [str(r[key]) for r in rows]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    with open(BENCH / "results.md", "a") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
