"""Wall and sampled peak RSS of each step of one cold local `kettle sync`.

`python bench/steps.py --builds 3600 --days 28` writes a bench tree (once) and syncs it from
the local folder, then prints every step of every run in order with its seconds and the
sync's peak RSS while it ran: the measurement behind the per-step figures in
docs/performance.md. Everything runs in the sync's one process, so a step's peak includes the
heap the steps before it left.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from gcs_path import ChildRss  # noqa: E402
from run import NOW, run_sync  # noqa: E402
from tree import BUCKETS_YAML, write_tree  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--builds", type=int, default=3600)
    ap.add_argument("--days", type=int, default=28, help="at least this many days of history")
    ap.add_argument("--out", type=Path, default=HERE / "out-steps")
    args = ap.parse_args()
    out = args.out.resolve()
    tree, home, buckets = out / f"tree-{args.builds}-{args.days}", out / "home", out / "buckets.yaml"
    out.mkdir(parents=True, exist_ok=True)
    buckets.write_text(BUCKETS_YAML)
    if not tree.exists():
        write_tree(tree, args.builds, NOW, min_days=args.days)
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir()
    with ChildRss() as rss:
        result = run_sync(tree, home, buckets)
    print(f"sync: {result['wall']:.1f} s, cpu {result['cpu']:.1f} s, peak {result['rss_mb']:.0f} MB")

    import dagster as dg
    from dagster._core.instance.ref import InstanceRef

    instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home / "dagster")))
    steps = sorted(
        (s.start_time, s.step_key, s.end_time - s.start_time, rss.peak(s.start_time, s.end_time))
        for run in instance.get_runs() for s in instance.get_run_step_stats(run.run_id)
    )
    for _, key, seconds, mb in steps:
        print(f"{key:28s} {seconds:6.1f} s {mb:5.0f} MB" if mb else f"{key:28s} {seconds:6.1f} s   (too short to sample)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
