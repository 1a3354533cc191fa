"""The benchmark: `python bench/run.py` (about half an hour at the default size on 2 cores).

Measures, in one run on this machine, at 1x, 2x and 4x the history:
  cold `kettle sync` (wall, builds/s, JUnit bytes/s, peak RSS), a sync with 1% new builds,
  a sync with nothing new; the cold sync through a GCS API server (1x); JUnit-to-rows
  throughput against a plain ElementTree reference; Dagster's overhead per run and partition.
Writes bench/results.md. Options: --builds N (1x size, default 20000), --scales 1,2,4,
--no-gcs, --profile (py-spy the 1x cold sync), --out DIR (trees and homes; default bench/out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

from tree import BUCKETS_YAML, add_new_builds, junit_pool, write_tree  # noqa: E402

NOW = 1_795_000_000  # a fixed "now" (2026-11-19) so every run sees the same windows


def run_sync(tree: Path, home: Path, buckets: Path, extra_env: dict | None = None, profile: Path | None = None) -> dict:
    """`kettle sync` in a child process; wall time and the child's peak RSS."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KETTLE_", "DAGSTER_HOME"))}
    env.update({"KETTLE_BUCKETS": str(buckets), "KETTLE_HOME": str(home), "KETTLE_STORAGE_ROOT": str(tree)})
    env.update(extra_env or {})
    cmd = [sys.executable, "-m", "kettle_assets.cli", "sync", "--as-of", str(NOW)]
    if profile:
        cmd = [str(Path(sys.executable).with_name("py-spy")), "record", "--format", "raw", "-o", str(profile),
               "--subprocesses", "--rate", "50", "--", *cmd]
    log = open(home.parent / f"{home.name}.log", "ab")
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    log.close()
    if status != 0:
        raise RuntimeError(f"kettle sync failed ({status}); see {log.name}")
    return {"wall": wall, "rss_mb": usage.ru_maxrss / 1024, "cpu": usage.ru_utime + usage.ru_stime}


STAGES = {  # the sync's steps, grouped as the results table reports them
    "collecting": ("build_listing", "build_metadata"), "junit_results": ("junit_results",),
    "build_rows": ("build_rows",), "build_all": ("build_all",), "test_results": ("test_results",),
}


def run_stats(home: Path, since: float, until: float = float("inf")) -> dict:
    """From the sync's Dagster instance (runs started between `since` and `until`): JUnit bytes and
    seconds, runs, per-run overhead, seconds by stage, and when the last rows were in `all`."""
    import dagster as dg
    from dagster._core.instance.ref import InstanceRef

    instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home / "dagster")))
    runs = [r for r in instance.get_runs() if since <= (instance.get_run_stats(r.run_id).start_time or 0) <= until]
    junit_bytes = junit_seconds = steps = overhead = 0.0
    partitions = 0
    stage_seconds = dict.fromkeys([*STAGES, "the rest"], 0.0)
    published = since
    for run in runs:
        stats = instance.get_run_stats(run.run_id)
        step_stats = instance.get_run_step_stats(run.run_id)
        step_time = sum((s.end_time or 0) - (s.start_time or 0) for s in step_stats)
        overhead += (stats.end_time - stats.start_time) - step_time
        steps += len(step_stats)
        for s in step_stats:
            stage = next((k for k, keys in STAGES.items() if s.step_key in keys), "the rest")
            stage_seconds[stage] += (s.end_time or 0) - (s.start_time or 0)
            if s.step_key == "build_all":
                published = max(published, s.end_time or 0)
    for rec in instance.fetch_materializations(dg.AssetKey("junit_results"), limit=10_000).records:
        if not since <= rec.timestamp <= until:
            continue
        md = rec.asset_materialization.metadata
        partitions += 1
        if rec.asset_materialization.partition and md.get("partitions_in_run"):
            # run totals are repeated on each partition of a range run: count them once
            share = 1 / md["partitions_in_run"].value
            junit_bytes += md["junit_bytes"].value * share
            junit_seconds += md["seconds"].value * share
    return {
        "runs": len(runs), "steps": int(steps), "partitions": partitions,
        "overhead_per_run": overhead / max(1, len(runs)), "junit_bytes": junit_bytes, "junit_seconds": junit_seconds,
        "stage_seconds": stage_seconds, "published_seconds": published - since,
    }


def junit_to_rows_ratio(pool: Path) -> dict:
    """JUnit bytes -> rows: kettle's parser and row builder vs a plain ElementTree parse-and-walk."""
    import junit_reference
    from kettle_assets.core.junit import parse_junit
    from kettle_assets.core.rows import build_row

    files = [p.read_bytes() for p in sorted(pool.glob("*.xml"))]
    total = sum(len(f) for f in files)

    def best(fn, repeat=3):
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            for data in files:
                fn(data)
            times.append(time.perf_counter() - t)
        return min(times)

    ours = best(lambda d: build_row("gs://b/logs/j/1", "", {"timestamp": 1}, {"timestamp": 2}, [parse_junit(d).tests]))
    ref = best(lambda d: build_row("gs://b/logs/j/1", "", {"timestamp": 1}, {"timestamp": 2}, [junit_reference.parse(d)]))
    return {"bytes": total, "ours_mb_s": total / ours / 1e6, "ref_mb_s": total / ref / 1e6, "ratio": ref / ours}


def gcs_cold_sync(tree: Path, out: Path, buckets: Path) -> dict:
    from kettle_assets_tests.support.servers import gcs_emulator, upload_tree

    home = out / "home-gcs"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    with gcs_emulator() as endpoint:
        t = time.perf_counter()
        files = upload_tree(endpoint, tree)
        upload = time.perf_counter() - t
        result = run_sync(tree, home, buckets, {
            "KETTLE_ENV": "gcp", "KETTLE_WAREHOUSE": "duckdb", "KETTLE_STORAGE_ROOT": "",
            "STORAGE_EMULATOR_HOST": endpoint, "KETTLE_BQ_PROJECT": "bench",
        })
    result.update({"uploaded_files": files, "upload_seconds": upload})
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--builds", type=int, default=20_000)
    ap.add_argument("--scales", default="1,2,4")
    ap.add_argument("--no-gcs", action="store_true")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--out", type=Path, default=HERE / "out")
    args = ap.parse_args()
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    buckets = out / "buckets.yaml"
    buckets.write_text(BUCKETS_YAML)
    scales = [int(s) for s in args.scales.split(",")]
    results = {}
    for scale in scales:
        tree, home = out / f"tree-{scale}x", out / f"home-{scale}x"
        shutil.rmtree(tree, ignore_errors=True)
        shutil.rmtree(junit_pool(tree), ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(parents=True)
        print(f"[{scale}x] writing {args.builds * scale} builds ...", flush=True)
        shape = write_tree(tree, args.builds * scale, NOW)
        since = time.time()
        profile = out / "profile-cold-1x.txt" if args.profile and scale == 1 else None
        cold = run_sync(tree, home, buckets, profile=profile)
        cold_stats = run_stats(home, since)
        print(f"[{scale}x] cold sync {cold['wall']:.1f}s, peak {cold['rss_mb']:.0f} MB", flush=True)
        added = add_new_builds(tree, 0.01, NOW)
        since = time.time()
        new = run_sync(tree, home, buckets)
        new_stats = run_stats(home, since)
        print(f"[{scale}x] 1% new ({added} builds) {new['wall']:.1f}s", flush=True)
        since = time.time()
        noop = run_sync(tree, home, buckets)
        noop_stats = run_stats(home, since)
        print(f"[{scale}x] no-op {noop['wall']:.1f}s", flush=True)
        results[scale] = dict(shape=shape, cold=cold, cold_stats=cold_stats, new=new, new_stats=new_stats,
                              added=added, noop=noop, noop_stats=noop_stats)
        (out / "results.json").write_text(json.dumps(results, indent=1))  # kept if a later step fails
    ratio = junit_to_rows_ratio(junit_pool(out / f"tree-{scales[0]}x"))
    print(f"JUnit to rows: {ratio['ratio']:.2f}x the ElementTree reference", flush=True)
    gcs = None
    if not args.no_gcs:
        print("[gcs] uploading the 1x tree to a GCS API server and syncing through it ...", flush=True)
        gcs_tree = out / f"tree-{scales[0]}x"
        gcs = gcs_cold_sync(gcs_tree, out, buckets)
        print(f"[gcs] cold sync {gcs['wall']:.1f}s", flush=True)
    report = render(results, ratio, gcs, args)
    (HERE / "results.md").write_text(report + later_sections(HERE / "results.md"))
    print(report)
    return 0


def later_sections(results_md: Path) -> str:
    """The sections after ours (other benchmarks', notes), kept as they are: ours are the
    preamble and "Targets", which this run writes again."""
    if not results_md.exists():
        return ""
    sections = re.split(r"(?m)^(?=## )", results_md.read_text())[1:]
    return "".join("\n" + s.rstrip() + "\n" for s in sections if not s.startswith("## Targets\n"))


def render(results: dict, ratio: dict, gcs: dict | None, args) -> str:
    base = min(results)
    b = results[base]
    lines = [
        "# Benchmark results",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.platform()}. Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC. "
        f"Command: `python bench/run.py --builds {args.builds} --scales {args.scales}`.",
        "",
        "| measure | " + " | ".join(f"{s}x" for s in results) + " |",
        "|---|" + "---|" * len(results),
    ]

    def row(label, fn):
        lines.append(f"| {label} | " + " | ".join(fn(r) for r in results.values()) + " |")

    row("builds / jobs / days of history", lambda r: f"{r['shape']['builds']} / {r['shape']['jobs']} / {r['shape']['days']}")
    row("JUnit bytes in the tree", lambda r: f"{r['shape']['junit_bytes'] / 1e9:.2f} GB")
    row("cold sync wall", lambda r: f"{r['cold']['wall']:.1f} s")
    row("cold sync builds/s", lambda r: f"{r['shape']['builds'] / r['cold']['wall']:.0f}")
    # a cold sync reads every JUnit file of the tree, in the junit_results steps
    row("JUnit fetched and parsed (MB/s, in junit_results)",
        lambda r: f"{r['shape']['junit_bytes'] / max(1e-9, r['cold_stats']['stage_seconds']['junit_results']) / 1e6:.1f}"
        if "stage_seconds" in r["cold_stats"] else "")
    row("cold sync until the rows are in `all` (Kettle's make_db+make_json)",
        lambda r: f"{r['cold_stats']['published_seconds']:.1f} s" if "published_seconds" in r["cold_stats"] else "")
    row("cold sync seconds: " + " / ".join(STAGES) + " / the rest (windows, metrics, clusters, report)",
        lambda r: " / ".join(f"{v:.0f}" for v in r["cold_stats"]["stage_seconds"].values())
        if "stage_seconds" in r["cold_stats"] else "")
    row("cold sync peak RSS", lambda r: f"{r['cold']['rss_mb']:.0f} MB")
    row("1% new builds: wall (share of cold)", lambda r: f"{r['new']['wall']:.1f} s ({r['new']['wall'] / r['cold']['wall']:.1%})")
    row("no-op sync: wall (share of cold)", lambda r: f"{r['noop']['wall']:.1f} s ({r['noop']['wall'] / r['cold']['wall']:.1%})")
    row("no-op sync peak RSS", lambda r: f"{r['noop']['rss_mb']:.0f} MB")
    row("Dagster runs in the cold sync", lambda r: f"{r['cold_stats']['runs']}")
    row("Dagster overhead per run (run time minus step time)", lambda r: f"{r['cold_stats']['overhead_per_run']:.2f} s")
    row("Dagster runs / overhead per run, no-op sync",
        lambda r: f"{r['noop_stats']['runs']} / {r['noop_stats']['overhead_per_run']:.2f} s")
    lines += [
        "",
        f"JUnit to rows on the tree's JUnit files ({ratio['bytes'] / 1e6:.1f} MB): kettle "
        f"{ratio['ours_mb_s']:.1f} MB/s, ElementTree reference (`bench/junit_reference.py`) "
        f"{ratio['ref_mb_s']:.1f} MB/s: **{ratio['ratio']:.2f}x** (target 2.5x).",
    ]
    if gcs:
        lines += [
            "",
            f"Cold sync through a GCS API server (gcp-storage-emulator, {gcs['uploaded_files']} objects uploaded in "
            f"{gcs['upload_seconds']:.0f} s): {gcs['wall']:.1f} s, peak {gcs['rss_mb']:.0f} MB, "
            f"{b['shape']['builds'] / gcs['wall']:.0f} builds/s (local folder: {b['cold']['wall']:.1f} s). "
            "The emulator serves one request at a time, so this measures the client's request pattern more than GCS.",
        ]
    else:
        lines += ["", "Not synced through a GCS API server in this run (`--no-gcs`): see \"GCS path\" below."]
    top = max(results)
    t = results[top]
    lines += [
        "",
        "## Targets",
        "",
        f"- no-op sync at most 10% of a cold sync: {b['noop']['wall'] / b['cold']['wall']:.1%} at {base}x.",
        f"- 1%-new sync at most 15%: {b['new']['wall'] / b['cold']['wall']:.1%} at {base}x.",
        f"- peak memory under 1 GiB at {b['shape']['builds']} builds: {b['cold']['rss_mb']:.0f} MB; "
        f"within 20% of that at {top}x: {t['cold']['rss_mb']:.0f} MB ({t['cold']['rss_mb'] / b['cold']['rss_mb'] - 1:+.0%}).",
        f"- cold sync time growth {base}x -> {top}x: {t['cold']['wall'] / b['cold']['wall']:.2f}x for "
        f"{t['shape']['builds'] / b['shape']['builds']:.0f}x the builds; no-op growth "
        f"{t['noop']['wall'] / b['noop']['wall']:.2f}x.",
        f"- JUnit to rows at least 2.5x the reference: {ratio['ratio']:.2f}x.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
