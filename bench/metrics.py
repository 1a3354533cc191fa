"""The metrics' cost: `python bench/metrics.py [--builds N]` (default 20000; minutes on 2 cores).

On the benchmark tree: a cold `kettle sync` (which now also builds `test_results` and every
metric), then, in a child process of its own, a full metrics refresh (`test_results` of every
day rebuilt, every metric recomputed: wall and peak RSS), then a sync after 1% new builds.
From each sync's Dagster runs it sums the step times of `test_results` and of the metric
assets, so the 1%-new refresh can be compared with the full one. Appends to bench/results.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

from run import NOW, run_sync  # noqa: E402
from tree import BUCKETS_YAML, add_new_builds, junit_pool, write_tree  # noqa: E402


def env_for(tree: Path, home: Path, buckets: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KETTLE_", "DAGSTER_HOME"))}
    env.update({"KETTLE_BUCKETS": str(buckets), "KETTLE_HOME": str(home), "KETTLE_STORAGE_ROOT": str(tree)})
    return env


def step_seconds(home: Path, since: float) -> dict:
    """Seconds spent in the test_results steps and in the metric steps of runs started after `since`."""
    import dagster as dg
    from dagster._core.instance.ref import InstanceRef

    instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home / "dagster")))
    out = {"test_results": 0.0, "metrics": 0.0}
    for run in instance.get_runs():
        if (instance.get_run_stats(run.run_id).start_time or 0) < since:
            continue
        for step in instance.get_run_step_stats(run.run_id):
            seconds = (step.end_time or 0) - (step.start_time or 0)
            if step.step_key == "test_results":
                out["test_results"] += seconds
            elif step.step_key.startswith("metric_") or step.step_key == "test_flakiness":
                out["metrics"] += seconds
    return out


def full_refresh() -> None:
    """In this (child) process: every day of test_results, then every metric."""
    import dagster as dg

    from kettle_assets.automation import METRICS_SELECTION
    from kettle_assets.project import Settings, build_assets, build_resources

    settings = Settings.from_env()
    assets = build_assets(settings)
    resources = build_resources(settings)
    days = resources["staging"].row_days()
    with dg.instance_for_test() as instance:
        for selection, tags in (
            (dg.AssetSelection.assets("test_results"),
             {"dagster/asset_partition_range_start": days[0], "dagster/asset_partition_range_end": days[-1]}),
            (METRICS_SELECTION, {}),
        ):
            config = {"ops": {k.path[-1]: {"config": {"as_of": float(NOW)}} for k in METRICS_SELECTION.resolve(assets)}}
            result = dg.materialize(assets, selection=selection, resources=resources, instance=instance, tags=tags,
                                    run_config=config if selection is METRICS_SELECTION else None)
            assert result.success


def timed_child(args: list[str], env: dict) -> dict:
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise RuntimeError(f"{args} failed ({status})")
    return {"wall": time.perf_counter() - started, "rss_mb": usage.ru_maxrss / 1024}


def main() -> int:
    if sys.argv[1:] == ["--full-refresh"]:
        full_refresh()
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--builds", type=int, default=20_000)
    ap.add_argument("--out", type=Path, default=HERE / "out-metrics")
    args = ap.parse_args()
    out = args.out.resolve()
    tree, home, buckets = out / "tree", out / "home", out / "buckets.yaml"
    for d in (tree, junit_pool(tree), home):
        shutil.rmtree(d, ignore_errors=True)
    home.mkdir(parents=True)
    buckets.write_text(BUCKETS_YAML)
    write_tree(tree, args.builds, NOW)
    since = time.time()
    cold = run_sync(tree, home, buckets)
    cold_steps = step_seconds(home, since)
    print(f"cold sync {cold['wall']:.1f}s; steps {cold_steps}", flush=True)
    refresh = timed_child([str(Path(__file__)), "--full-refresh"], env_for(tree, home, buckets))
    print(f"full metrics refresh {refresh['wall']:.1f}s, peak {refresh['rss_mb']:.0f} MB", flush=True)
    added = add_new_builds(tree, 0.01, NOW)
    since = time.time()
    new = run_sync(tree, home, buckets)
    new_steps = step_seconds(home, since)
    print(f"1% new ({added} builds): sync {new['wall']:.1f}s; steps {new_steps}", flush=True)
    import duckdb

    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as conn:
        tests = conn.execute("SELECT count(*) FROM test_results").fetchone()[0]
    cold_cost = cold_steps["test_results"] + cold_steps["metrics"]
    new_cost = new_steps["test_results"] + new_steps["metrics"]
    report = f"""
## Metrics ({args.builds} builds, {tests} test results)

Measured by `bench/metrics.py --builds {args.builds}` on this machine.

| | value |
|---|---|
| cold sync wall, with test_results and metrics | {cold['wall']:.1f} s, peak {cold['rss_mb']:.0f} MB |
| in it: test_results (every day) / metrics steps | {cold_steps['test_results']:.1f} s / {cold_steps['metrics']:.1f} s |
| full metrics refresh alone (own process: test_results of every day, then every metric) | {refresh['wall']:.1f} s, peak {refresh['rss_mb']:.0f} MB |
| sync after 1% new builds ({added}) | {new['wall']:.1f} s |
| in it: test_results (affected days) / metrics steps | {new_steps['test_results']:.1f} s / {new_steps['metrics']:.1f} s |
| metric refresh after 1% new, share of the full one (step time) | {100 * new_cost / cold_cost:.0f}% |

`test_results` is replaced per day partition, so 1% new builds touch only their days; the
metrics are recomputed from the tables each time (one pass of SQL over `all`/`test_results`).
"""
    with open(HERE / "results.md", "a") as f:
        f.write(report)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
