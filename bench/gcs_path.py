"""The GCS-path benchmark: `python bench/gcs_path.py` (a few minutes on 2 cores).

A cold `kettle sync` through `bench/gcs_server.py` (threaded, paginated GCS JSON API over the
bench tree, `--latency` per request), at 1x and 4x history, fault-free and with `--fault-rate`
injected faults (503, 429, connection resets, stalls of `--stall-seconds`). Reports wall, the
client's CPU seconds and peak RSS, requests by kind and most requests in flight, checks that
the faulty sync lands the same builds once each, and writes the "GCS path" section of
bench/results.md.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from gcs_server import GCSServer  # noqa: E402
from run import NOW, run_sync  # noqa: E402
from tree import BUCKETS_YAML, write_tree  # noqa: E402

KETTLE_900 = {"wall": 65.6, "rss_mb": 313, "requests": 13559}  # the measurement of Kettle's own code


def landed(home: Path) -> list[str]:
    import duckdb

    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as conn:
        return [r[0] for r in conn.execute('SELECT path FROM "all" ORDER BY path').fetchall()]


def stage_seconds(home: Path) -> dict:
    """Wall seconds of the sync's runs by job (collect_bucket summed over buckets), from its Dagster instance."""
    import dagster as dg
    from dagster._core.instance.ref import InstanceRef

    instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home / "dagster")))
    out: dict = {}
    for run in instance.get_runs():
        stats = instance.get_run_stats(run.run_id)
        out[run.job_name] = out.get(run.job_name, 0.0) + (stats.end_time - stats.start_time)
    return out


def gcs_sync(tree: Path, out: Path, buckets: Path, name: str, latency: float, fault_rate: float, stall: float) -> dict:
    home = out / f"home-{name}"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    with GCSServer(tree, latency=latency, fault_rate=fault_rate, stall_seconds=stall) as srv:
        result = run_sync(tree, home, buckets, {
            "KETTLE_ENV": "gcp", "KETTLE_WAREHOUSE": "duckdb", "KETTLE_STORAGE_ROOT": "",
            "STORAGE_EMULATOR_HOST": srv.url, "KETTLE_BQ_PROJECT": "bench",
        })
        result.update(requests=dict(srv.requests), faults=dict(srv.faults), max_in_flight=srv.max_in_flight,
                      objects=srv.objects)
    paths = landed(home)
    result.update(rows=len(paths), distinct=len(set(paths)), paths=paths, stages=stage_seconds(home))
    print(f"[{name}] {result['wall']:.1f}s, cpu {result['cpu']:.1f}s, peak {result['rss_mb']:.0f} MB, "
          f"requests {result['requests']}, faults {result['faults']}", flush=True)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--builds", type=int, default=900)
    ap.add_argument("--latency", type=float, default=0.03)
    ap.add_argument("--fault-rate", type=float, default=0.10)
    ap.add_argument("--stall-seconds", type=float, default=20.0)
    ap.add_argument("--out", type=Path, default=HERE / "out-gcs")
    args = ap.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    buckets = out / "buckets.yaml"
    buckets.write_text(BUCKETS_YAML)
    runs = {}
    for scale in (1, 4):
        tree = out / f"tree-{scale}x"
        if not tree.exists():
            write_tree(tree, args.builds * scale, NOW, min_days=7 * scale)  # 4x the history: 4x the days
        runs[f"{scale}x"] = gcs_sync(tree, out, buckets, f"{scale}x", args.latency, 0.0, args.stall_seconds)
    runs["1x-faults"] = gcs_sync(out / "tree-1x", out, buckets, "1x-faults", args.latency, args.fault_rate,
                                 args.stall_seconds)
    section = render(runs, args)
    results = HERE / "results.md"
    text = results.read_text() if results.exists() else "# Benchmark results\n"
    text = re.sub(r"\n## GCS path\n.*?(?=\n## |\Z)", "", text, flags=re.S).rstrip() + "\n\n" + section
    results.write_text(text)
    print(section)
    return 0


def render(runs: dict, args) -> str:
    one, four, faulty = runs["1x"], runs["4x"], runs["1x-faults"]
    lines = [
        "## GCS path",
        "",
        f"Command: `python bench/gcs_path.py --builds {args.builds} --latency {args.latency} "
        f"--fault-rate {args.fault_rate} --stall-seconds {args.stall_seconds}`. Cold `kettle sync` "
        "(defaults) through `bench/gcs_server.py`, a threaded, paginated GCS JSON API server over the bench "
        f"tree with {args.latency * 1000:.0f} ms per request, on the same two cores as the client; "
        "the warehouse is DuckDB.",
        "",
        "| | 1x | 4x | 1x, faults |",
        "|---|---|---|---|",
    ]

    def row(label, fn):
        lines.append(f"| {label} | " + " | ".join(fn(r) for r in (one, four, faulty)) + " |")

    row("builds (objects)", lambda r: f"{r['rows']} ({r['objects']})")
    row("wall", lambda r: f"{r['wall']:.1f} s")
    row("client CPU", lambda r: f"{r['cpu']:.1f} s")
    row("peak RSS", lambda r: f"{r['rss_mb']:.0f} MB")
    row("  of which collecting (`collect_bucket` runs)", lambda r: f"{r['stages'].get('collect_bucket', 0):.1f} s")
    row("  of which JUnit to `all` (`stage_and_publish_days`)", lambda r: f"{r['stages'].get('stage_and_publish_days', 0):.1f} s")
    row("requests (list / list with matchGlob / media / stat)", lambda r: (
        f"{sum(r['requests'].values())} ({r['requests'].get('list', 0)} / {r['requests'].get('list_glob', 0)} / "
        f"{r['requests'].get('media', 0)} / {r['requests'].get('stat', 0)})"))
    row("faults injected", lambda r: ", ".join(f"{k} {v}" for k, v in sorted(r["faults"].items())) or "none")
    row("most requests in flight", lambda r: str(r["max_in_flight"]))
    same = faulty["paths"] == one["paths"] and faulty["distinct"] == faulty["rows"]
    lines += [
        "",
        f"- Against Kettle's own make_db+make_json (32 threads) on a {args.builds}-build tree at 30 ms a request, "
        f"as measured in the issue (not re-run here): {KETTLE_900['wall']} s, {KETTLE_900['rss_mb']} MB, "
        f"{KETTLE_900['requests']} requests. Ours: {one['wall']:.1f} s "
        f"(**{KETTLE_900['wall'] / one['wall']:.2f}x** Kettle's speed), {one['rss_mb']:.0f} MB, "
        f"{sum(one['requests'].values())} requests.",
        f"- Peak RSS 1x -> 4x: {one['rss_mb']:.0f} -> {four['rss_mb']:.0f} MB "
        f"({four['rss_mb'] / one['rss_mb'] - 1:+.0%}); wall {four['wall'] / one['wall']:.2f}x for 4x the builds.",
        f"- {args.fault_rate:.0%} faults: {faulty['wall'] / one['wall']:.2f}x the fault-free wall (target at most 3x); "
        f"every build landed once: {'yes' if same else 'NO'} ({faulty['distinct']} distinct of {faulty['rows']} rows, "
        f"{one['rows']} without faults).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
