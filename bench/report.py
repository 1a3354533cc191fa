"""The CI report's cost: `python bench/report.py [--builds N] [--reuse]` (default 20000 builds).

On the benchmark tree (bench/tree.py, synced by `kettle sync` as bench/run.py does; --reuse keeps
an already synced home in --out): `ci_report` rendered alone, three times, in process (wall,
query and render seconds, pages, bytes, the largest page, peak RSS of this process); what the
site's figures would cost with the other ways of making plots (plotly's Python figures, and
matplotlib SVG); then each kind of page opened from disk in headless Chromium (time from
navigation until every plot is drawn, median of three). Appends a section to bench/results.md.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

from run import NOW, run_sync
from tree import BUCKETS_YAML, junit_pool, write_tree

from kettle_assets_tests.support.browser import chromium_page

DRAWN = ("(() => { const drawn = Array.from(document.querySelectorAll('.plot.js-plotly-plot'))"
         ".filter(p => p.querySelector('svg.main-svg .trace')).length;"
         " return drawn === document.querySelectorAll('script[data-plot]').length ? 1 : 0; })()")


def render_report(tree: Path, home: Path, buckets: Path) -> dict:
    """`ci_report` materialized alone, three times: the median run's numbers."""
    import dagster as dg

    from kettle_assets.project import Settings, build_assets, build_resources

    settings = Settings(buckets_file=str(buckets), storage_root=str(tree), home=str(home))
    assets, resources = build_assets(settings), build_resources(settings)
    runs = []
    with dg.instance_for_test() as instance:
        for _ in range(3):
            started = time.perf_counter()
            result = dg.materialize(assets, selection=dg.AssetSelection.assets("ci_report"), resources=resources,
                                    instance=instance, run_config={"ops": {"ci_report": {"config": {"as_of": float(NOW)}}}})
            wall = time.perf_counter() - started
            assert result.success
            (mat,) = result.asset_materializations_for_node("ci_report")
            runs.append({"wall": wall, **{k: getattr(v, "value", v) for k, v in mat.metadata.items()}})
    runs.sort(key=lambda r: r["wall"])
    median = runs[1]
    report = home / "report"
    largest = max((p for p in report.rglob("*.html")), key=lambda p: p.stat().st_size)
    median["largest_page"] = (str(largest.relative_to(report)), largest.stat().st_size)
    median["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return median


def plot_libraries(home: Path, figures_in_site: int) -> dict:
    """Seconds per figure of a job page's two figures, three ways, scaled to the site's figure count."""
    import orjson

    from kettle_assets.core import report_data as rd

    days = [f"2026-11-{d:02d}" for d in range(1, 15)]
    series = {"days": days, "runs": list(range(14)), "failure_rate": [i / 14 for i in range(14)],
              "p50": [20 + i for i in range(14)], "p99": [40 + i for i in range(14)]}
    figures = rd.job_figures("ci-kubernetes-e2e-00", series)
    out = {}

    def per_figure(fn, repeat: int) -> float:
        started = time.perf_counter()
        for _ in range(repeat):
            for figure in figures:
                fn(figure)
        return (time.perf_counter() - started) / (repeat * len(figures))

    out["plotly.js spec (ours)"] = per_figure(lambda f: orjson.dumps(f), 200)
    import plotly.graph_objects as go

    out["plotly Python figure"] = per_figure(lambda f: go.Figure(f).to_json(), 20)
    try:
        import io

        import matplotlib

        matplotlib.use("svg")
        import matplotlib.pyplot as plt

        def svg(figure):
            fig, ax = plt.subplots(figsize=(6, 3))
            for trace in figure["data"]:
                ys = [v if v is not None else float("nan") for v in trace["y"]]
                (ax.bar if trace["type"] == "bar" else ax.plot)(trace["x"], ys)
            buf = io.StringIO()
            fig.savefig(buf, format="svg")
            plt.close(fig)

        out["matplotlib SVG"] = per_figure(svg, 5)
    except ImportError:
        out["matplotlib SVG"] = None
    return {k: (v, v * figures_in_site if v is not None else None) for k, v in out.items()}


def page_loads(home: Path, profile: Path) -> list[tuple[str, int, float]]:
    """Each kind of page opened from disk: (page, bytes, median seconds until every plot is drawn)."""
    report = home / "report"
    pick = {
        "index.html": report / "index.html", "jobs.html": report / "jobs.html", "flakes.html": report / "flakes.html",
        "clusters.html": report / "clusters.html",
        "largest job page": max(report.glob("jobs/*.html"), key=lambda p: p.stat().st_size),
        "largest test page": max(report.glob("tests/*.html"), key=lambda p: p.stat().st_size),
        "largest cluster page": max(report.glob("clusters/*.html"), key=lambda p: p.stat().st_size),
    }
    out = []
    shutil.rmtree(profile, ignore_errors=True)
    profile.mkdir(parents=True)
    with chromium_page(shutil.which("chromium") or "chromium", profile, 1400, 900) as page:
        for label, path in pick.items():
            times = []
            for _ in range(3):
                page.call("Page.navigate", url="about:blank")
                started = time.perf_counter()
                page.call("Page.navigate", url=path.as_uri())
                while not page.call("Runtime.evaluate", expression=f"document.readyState === 'complete' && {DRAWN}",
                                    returnByValue=True)["result"].get("value"):
                    time.sleep(0.005)
                times.append(time.perf_counter() - started)
            assert not page.problems, page.problems
            out.append((f"{label} ({path.relative_to(report)})", path.stat().st_size, statistics.median(times)))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--builds", type=int, default=20_000)
    ap.add_argument("--out", type=Path, default=HERE / "out-report")
    ap.add_argument("--reuse", action="store_true", help="keep the tree and synced home already in --out")
    args = ap.parse_args()
    out = args.out.resolve()
    tree, home, buckets = out / "tree", out / "home", out / "buckets.yaml"
    if not (args.reuse and (home / "warehouse.duckdb").exists()):
        for d in (tree, junit_pool(tree), home):
            shutil.rmtree(d, ignore_errors=True)
        home.mkdir(parents=True)
        buckets.write_text(BUCKETS_YAML)
        write_tree(tree, args.builds, NOW)
        sync = run_sync(tree, home, buckets)
        print(f"cold sync {sync['wall']:.1f}s", flush=True)
    rendered = render_report(tree, home, buckets)
    print(f"report: {rendered['pages']} pages, {rendered['bytes']} bytes, {rendered['wall']:.1f}s", flush=True)
    figures = sum(p.read_text().count("data-plot=") for p in (home / "report").rglob("*.html"))
    libraries = plot_libraries(home, figures)
    loads = page_loads(home, out / "chromium-profile")
    import duckdb

    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as conn:
        builds, tests = (conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ('"all"', "test_results"))
    kinds = ", ".join(f"{v} {k}" for k, v in sorted(rendered["pages_by_kind"].items()))
    name, size = rendered["largest_page"]
    base = libraries["plotly.js spec (ours)"][0]
    lines = [
        f"\n## CI report ({builds} builds, {tests} test results)\n",
        f"Measured by `bench/report.py --builds {args.builds}` on this machine (2 cores shared with other work).\n",
        "| | value |", "|---|---|",
        f"| `ci_report` alone, median of 3 (wall, in process, Dagster run included) | {rendered['wall']:.1f} s |",
        f"| in it: queries / page data and HTML | {rendered['query_seconds']:.1f} s / {rendered['render_seconds']:.1f} s |",
        f"| pages | {rendered['pages']} ({kinds}) |",
        f"| bytes in all (plotly.min.js written once: {(home / 'report/assets/plotly.min.js').stat().st_size} of them) "
        f"| {rendered['bytes']} |",
        f"| largest page | {name}, {size} bytes |",
        f"| peak RSS of the process | {rendered['rss_mb']:.0f} MB |",
        "", f"Plots: the Python-side cost per figure of a job page's figures, and for the site's {figures} figures "
        "(ours and plotly's Python figures leave the drawing to plotly.js in the browser; matplotlib draws here):\n",
        "| way | per figure | the site's figures | ratio to ours |", "|---|---|---|---|",
    ]
    for label, (each, total) in libraries.items():
        if each is None:
            lines.append(f"| {label} | not installed | | |")
        else:
            lines.append(f"| {label} | {each * 1e6:,.0f} µs | {total:.2f} s | {each / base:,.0f}× |")
    lines += ["", "Page loads from disk in headless Chromium (navigation until every plot is drawn, median of 3):\n",
              "| page | bytes | seconds |", "|---|---|---|"]
    lines += [f"| {label} | {size} | {seconds:.2f} |" for label, size, seconds in loads]
    text = "\n".join(lines) + "\n"
    print(text)
    with open(HERE / "results.md", "a") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
