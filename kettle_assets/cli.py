"""`kettle`: headless use of the same assets (DESIGN §8)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .core.config import BucketConfigError, load_buckets


def _settings(args):
    from .project import Settings

    return Settings.from_env(
        buckets_file=args.buckets, storage_root=args.storage_root, home=args.home, fetch_threads=args.threads,
        env=args.env,
    )


def cmd_sync(args) -> int:
    settings = _settings(args)
    try:
        load_buckets(settings.buckets_file)
    except BucketConfigError as exc:
        print(f"kettle: bad configuration: {exc}", file=sys.stderr)
        return 2
    if settings.env == "local" and settings.storage_root is None:
        print(
            "kettle: bad configuration: KETTLE_ENV=local needs KETTLE_STORAGE_ROOT or --storage-root "
            "(`kettle sample DIR` writes one)",
            file=sys.stderr,
        )
        return 2
    if settings.env == "gcp" and not settings.bq_project:
        print("kettle: bad configuration: KETTLE_ENV=gcp needs KETTLE_BQ_PROJECT", file=sys.stderr)
        return 2
    if settings.env == "local" and not Path(settings.storage_root).is_dir():
        print(f"kettle: bad configuration: storage root {settings.storage_root} is not a folder", file=sys.stderr)
        return 2
    if not args.verbose:
        logging.getLogger("dagster").setLevel(logging.WARNING)
    from .sync import run_sync

    where = settings.storage_root if settings.env == "local" else "GCS"
    print(f"kettle sync ({settings.env}): buckets {settings.buckets_file}, artifacts {where}, home {settings.home}")
    summary = run_sync(settings, as_of=args.as_of, recheck_paths=args.recheck, rebuild_warehouse=args.rebuild_warehouse)
    print()
    print(f"summary: {len(summary.buckets)} buckets, {len(summary.days)} days published, "
          f"{summary.rows_loaded} rows loaded into all, week={summary.windows.get('week', 0)}, "
          f"day={summary.windows.get('day', 0)}, {summary.runs} Dagster runs in {summary.seconds:.1f}s")
    print(f"exports: {Path(settings.home).resolve() / 'export'}")
    if summary.failures:
        print("failures:\n  " + "\n  ".join(summary.failures), file=sys.stderr)
        return 1
    return 0


def cmd_sample(args) -> int:
    from .sample import write_sample

    counts = write_sample(Path(args.dir), now=args.now, seed=args.seed)
    print(f"wrote sample artifacts to {args.dir}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    print(f"next: KETTLE_STORAGE_ROOT={args.dir} kettle sync")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kettle", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sync = sub.add_parser("sync", help="one full cycle: list, collect, stage, publish, refresh windows")
    sync.add_argument("--env", choices=["local", "gcp"],
                      help="local: folder + DuckDB; gcp: GCS + BigQuery (env KETTLE_ENV)")
    sync.add_argument("--buckets", help="buckets.yaml (env KETTLE_BUCKETS, default ./buckets.yaml)")
    sync.add_argument("--storage-root", help="local folder standing for gs:// (env KETTLE_STORAGE_ROOT)")
    sync.add_argument("--home", help="data folder: staging, DuckDB, exports (env KETTLE_HOME, default ./.kettle)")
    sync.add_argument("--threads", type=int, help="fetch threads (env KETTLE_FETCH_THREADS, default 16)")
    sync.add_argument("--as-of", type=float, help="epoch seconds the week/day windows end at (default: now)")
    sync.add_argument("--recheck", action="append", default=[], metavar="PATH",
                      help="gs:// build folder to fetch again even if known (repeatable)")
    sync.add_argument("--rebuild-warehouse", action="store_true",
                      help="publish every staged day again (after losing or deleting warehouse.duckdb)")
    sync.add_argument("-v", "--verbose", action="store_true", help="show Dagster's own debug events")
    sync.set_defaults(func=cmd_sync)

    sample = sub.add_parser("sample", help="write the bundled sample artifact tree")
    sample.add_argument("dir", help="folder to write (its sub-folders are buckets)")
    sample.add_argument("--now", type=float, help="epoch seconds the two weeks end at (default: now)")
    sample.add_argument("--seed", type=int, default=7)
    sample.set_defaults(func=cmd_sample)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
