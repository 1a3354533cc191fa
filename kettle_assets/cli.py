"""`kettle`: headless use of the same assets as the Dagster UI.

Bad settings, a bad buckets.yaml, a full disk or an unreadable warehouse end a command with
exit code 2 and one line naming the setting, path or file; never a Python traceback.
"""

from __future__ import annotations

import argparse
import errno
import logging
import shutil
import sys
from pathlib import Path

from .core.config import BucketConfigError, load_buckets

MIN_FREE_BYTES = 64 * 1024 * 1024  # a sync writes staging, exports and run history under KETTLE_HOME


def _settings(args):
    from .project import Settings

    return Settings.from_env(
        buckets_file=args.buckets, storage_root=args.storage_root, home=args.home, fetch_threads=args.threads,
        env=args.env,
    )


def _free_bytes(folder: Path) -> int:
    """Free space of the file system `folder` is (or will be) on."""
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            return shutil.disk_usage(candidate).free
    return shutil.disk_usage(Path.cwd()).free


def _megabytes(n: int) -> str:
    return f"{n / 1048576:.1f} MB"


def explain_failure(exc: BaseException, home: Path) -> str | None:
    """One line for the failures a person can fix (full disk, a corrupt warehouse), else None."""
    text = ""
    seen = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            where = seen.filename or home
            return (f"no space left on device writing {where}: {_megabytes(_free_bytes(home))} free under {home}; "
                    f"free at least {_megabytes(MIN_FREE_BYTES)} there (or point KETTLE_HOME elsewhere) and sync again")
        text += f" {type(seen).__name__}: {seen}"
        seen = seen.__cause__ or seen.__context__
    return explain_failure_text(text, home)


def explain_failure_text(text: str, home: Path) -> str | None:
    lowered = text.lower()
    if "no space left on device" in lowered or "database or disk is full" in lowered or "disk i/o error" in lowered:
        free = _free_bytes(home)
        if "disk i/o error" not in lowered or free < MIN_FREE_BYTES:
            return (f"no space left on device under {home} ({_megabytes(free)} free); free at least "
                    f"{_megabytes(MIN_FREE_BYTES)} there (or point KETTLE_HOME elsewhere) and sync again")
    warehouse = home / "warehouse.duckdb"
    if "duckdb" in lowered and ("not a valid duckdb database" in lowered or "corrupt" in lowered
                                or "could not read enough bytes" in lowered or "checksum" in lowered):
        return (f"the warehouse file {warehouse} is not a readable DuckDB database: move it aside, then "
                f"rebuild `all` from staging with `kettle sync --rebuild-warehouse`")
    return None


def cmd_sync(args) -> int:
    from .project import SettingError

    try:
        settings = _settings(args)
        load_buckets(settings.buckets_file)
    except (BucketConfigError, SettingError) as exc:
        print(f"kettle: bad configuration: {exc}", file=sys.stderr)
        return 2
    if settings.env == "local" and settings.storage_root is None:
        print(
            "kettle: bad configuration: KETTLE_ENV=local needs KETTLE_STORAGE_ROOT or --storage-root "
            "(`kettle sample DIR` writes one)",
            file=sys.stderr,
        )
        return 2
    if settings.warehouse_kind == "bigquery" and not settings.bq_project:
        print(
            "kettle: bad configuration: the BigQuery warehouse needs KETTLE_BQ_PROJECT "
            "(or KETTLE_WAREHOUSE=duckdb for a local one)", file=sys.stderr,
        )
        return 2
    if settings.env == "local" and not Path(settings.storage_root).is_dir():
        print(f"kettle: bad configuration: storage root {settings.storage_root} is not a folder", file=sys.stderr)
        return 2
    home = Path(settings.home).resolve()
    free = _free_bytes(home)
    if free < MIN_FREE_BYTES:
        print(f"kettle: not enough disk space under {home}: {_megabytes(free)} free, a sync needs at least "
              f"{_megabytes(MIN_FREE_BYTES)} (KETTLE_HOME)", file=sys.stderr)
        return 2
    if settings.warehouse_kind == "duckdb":
        from .resources.warehouse import CorruptWarehouseError, check_duckdb_file

        try:
            check_duckdb_file(home / "warehouse.duckdb")
        except CorruptWarehouseError:
            print(f"kettle: {explain_failure_text('duckdb: not a valid DuckDB database', home)}", file=sys.stderr)
            return 2
    if not args.verbose:
        logging.getLogger("dagster").setLevel(logging.WARNING)
    from .sync import run_sync

    where = settings.storage_root if settings.env == "local" else "GCS"
    print(f"kettle sync ({settings.env}): buckets {settings.buckets_file}, artifacts {where}, home {settings.home}")
    try:
        summary = run_sync(settings, as_of=args.as_of, recheck_paths=args.recheck, verbose=args.verbose,
                           rebuild_warehouse=args.rebuild_warehouse)
    except Exception as exc:  # noqa: BLE001 - one line for a person, the details with -v
        explained = explain_failure(exc, home)
        if explained is not None:
            print(f"kettle: {explained}", file=sys.stderr)
            return 2
        if args.verbose:
            raise
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        print(f"kettle: sync failed: {type(exc).__name__}: {first} (run with -v for the details)", file=sys.stderr)
        return 1
    print()
    print(f"summary: {len(summary.buckets)} buckets, {len(summary.days)} days published, "
          f"{summary.rows_loaded} rows loaded into all, week={summary.windows.get('week', 0)}, "
          f"day={summary.windows.get('day', 0)}, {summary.runs} Dagster runs in {summary.seconds:.1f}s")
    print(f"exports: {Path(settings.home).resolve() / 'export'}")
    if summary.report_url:
        print(f"report: {summary.report_url}")
    if summary.failures:
        for failure in summary.failures:
            explained = explain_failure_text(failure, home)
            if explained is not None:
                print(f"kettle: {explained}", file=sys.stderr)
                return 2
        print("failures:\n  " + "\n  ".join(summary.failures), file=sys.stderr)
        return 1
    return 0


def cmd_report(args) -> int:
    """Where the CI report is; with --open, open it in a browser."""
    from .core import report_links
    from .project import SettingError

    try:
        settings = _settings(args)
    except SettingError as exc:
        print(f"kettle: bad configuration: {exc}", file=sys.stderr)
        return 2
    folder = Path(settings.home).resolve() / "report"
    index = folder / report_links.INDEX
    if not index.is_file():
        print(f"kettle: no CI report under {folder} yet: run `kettle sync` (it renders one), or materialize "
              f"the ci_report asset", file=sys.stderr)
        return 2
    url = report_links.page_url(settings.report_url or folder.as_uri(), report_links.INDEX)
    print(f"report: {index}")
    print(f"url: {url}")
    if args.open:
        import webbrowser

        if not webbrowser.open(url):
            print(f"kettle: no browser could be started here; open {url} yourself", file=sys.stderr)
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
    sync.add_argument("--threads", type=int, help="fetch threads (env KETTLE_FETCH_THREADS, default 16 local, 64 gcp)")
    sync.add_argument("--as-of", type=float, help="epoch seconds the week/day windows end at (default: now)")
    sync.add_argument("--recheck", action="append", default=[], metavar="PATH",
                      help="gs:// build folder to fetch again even if known (repeatable)")
    sync.add_argument("--rebuild-warehouse", action="store_true",
                      help="publish every staged day again (after losing or deleting warehouse.duckdb)")
    sync.add_argument("-v", "--verbose", action="store_true", help="show Dagster's own debug events")
    sync.set_defaults(func=cmd_sync)

    report = sub.add_parser("report", help="print where the CI report is (and open it)")
    report.add_argument("--home", help="data folder holding report/ (env KETTLE_HOME, default ./.kettle)")
    report.add_argument("--open", action="store_true", help="open the report in a web browser")
    report.set_defaults(func=cmd_report, buckets=None, storage_root=None, threads=None, env=None)

    sample = sub.add_parser("sample", help="write the bundled sample artifact tree")
    sample.add_argument("dir", help="folder to write (its sub-folders are buckets)")
    sample.add_argument("--now", type=float, help="epoch seconds the two weeks end at (default: now)")
    sample.add_argument("--seed", type=int, default=7)
    sample.set_defaults(func=cmd_sample)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
