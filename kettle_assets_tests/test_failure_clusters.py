"""Failure clusters: triage's normalisation, matching, ordering and output, deterministic and
incremental, on hand-made cases and a generated multi-day history, through a real DuckDB."""

import hashlib
import importlib.util
import json
import random
import shutil
import signal
import subprocess
import sys
import time
import zlib
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import duckdb
import pcre2
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dagster_duckdb import DuckDBResource

from kettle_assets.assets import failure_clusters as failure_clusters_module
from kettle_assets.assets.failure_clusters import failure_clusters
from kettle_assets.core import clustering as clustering_module
from kettle_assets.core import triage_text
from kettle_assets.core.parallel import sized_chunks
from kettle_assets.core.clustering import (
    ClusterOptions, Failure, Previous, cluster_failures, cluster_stream, failure_order, pairwise_agreement)
from kettle_assets.core.triage_output import BUILD_FIELDS, BuildColumns, Shown, describe, dumps, tally
from kettle_assets.core.triage_text import cluster_id, common_spans, ngram_counts, normalize, normalize_name
from kettle_assets.project import Settings, settings_resource
from kettle_assets.resources.staging import StagingStore
from kettle_assets.resources.warehouse import DuckDBWarehouse

from .conftest import BUCKETS

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _corpus_module():
    spec = importlib.util.spec_from_file_location("_bench_failure_corpus", BENCH / "failure_corpus.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def edit_distance(a: str, b: str) -> int:
    """Plain dynamic-programming Levenshtein, the reference for the bounded one."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def _random_text(seed: int, alphabet: str, size: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice(alphabet) for _ in range(size))


def failure(n: int, test: str, text: str, build: str | None = None) -> Failure:
    path = build or f"gs://b/logs/job/{n:04d}"
    return Failure((path, test, 0), test, path, text)


# --- normalisation -------------------------------------------------------------------------

def test_normalize_blanks_times_and_renumbers_noise_in_order_of_appearance():
    text = ("I1204 12:34:56.789 pod 0xc000a1 at 10.0.0.7:8080 then 0xc000a1 again, "
            "uid 6ba7b810-9dad-11d1-80b4-00c04fd430c8 digest 0123456789abcdef0123 "
            "on 2026-12-04T12:00:01.5Z and Mon, 02 Jan 2006 15:04:05 -0700 and Dec  4 01:02:03")
    assert normalize(text) == (
        "TIME pod UNIQ1 at UNIQ2 then UNIQ1 again, uid UNIQ3 digest UNIQ4 on TIMEZ and TIME and TIME")


def test_normalize_sorts_innermost_maps_and_node_names_by_rules():
    assert normalize("got map[b:2 a:1  c:map[z:1 y:2]]") == "got map[b:2 a:1  c:map[y:2 z:1]]"
    assert normalize("got map[b:2 a:1  c:3]") == "got map[a:1 b:2 c:3]"
    assert normalize("got map[b:2 a:1  c:3]", "go") == "got map[ a:1 b:2 c:3]"
    assert normalize("node gke-x-default-pool-ab12cd failed") == "node gke-x-default-pool-UNIQ1 failed"
    assert normalize("node gke-x-default-pool-ab12cd failed", "go") == "node gke-x-UNIQ1 failed"


def test_normalize_long_text_drops_repeated_lines_then_truncates():
    repeated = "start\n" + "same line again\n" * 1000 + "end"
    assert normalize(repeated) == "start\nsame line again\nend"
    long = "".join(f"line {i}\n" for i in range(3000))
    out = normalize(long)
    assert len(out) == 10_000 + len("\n...[truncated]...\n")
    assert out.startswith("line 0\n") and out.endswith("line 2999\n") and "\n...[truncated]...\n" in out


_NORMALIZE_PIECES = [
    "Mon, 02 Jan 2006 15:04:05 -0700", "Dec  4 01:02:03.5", "2026-12-04T12:00:01.5Z", " 2026 12:00:01", "12:3",
    "0x", "0xc0ffee", "10.0.0.7:8080", "10.0.0.7", "6ba7b810-9dad-11d1-80b4-00c04fd430c8-7", "0123456789abcdef01",
    "minion-group-", "default-pool-", "ab12-cd", "map[", "]", "b:2 ", "a:1", "\n", "\r", "\t", "\x0b", "\x0c", " ",
    "  ", "-", ".", ":", ",", "Z", "x", "_", "9", "line\n", "same\nsame\n",
]


def test_normalize_on_pcre2_matches_python_re_on_the_text_it_is_used_for():
    rng = random.Random(11)
    for n in range(2000):
        text = "".join(rng.choice(_NORMALIZE_PIECES) for _ in range(rng.randint(1, 60)))
        if n % 100 == 0:
            text = text * 300  # long: repeated lines dropped, then truncated
        for rules in ("python", "go"):
            assert triage_text._normalize(text, rules, triage_text._FAST) == triage_text._normalize(
                text, rules, triage_text._RE), (text, rules)


def test_normalize_keeps_python_re_where_pcre2_would_differ():
    # re counts \x1c-\x1f as white space, PCRE2 does not; beyond ASCII, re's classes are the rule
    assert triage_text._normalize("Dec\x1c 4 01:02:03", "python", triage_text._FAST) == "Dec\x1c 4 01:02:03"
    assert normalize("Dec\x1c 4 01:02:03") == "TIME"
    for text in ("Dec ٤ 01:02:03", "ﬁle at Dec  4 01:02:03 ½ 0xff", "Dec\u2028 4 01:02:03"):
        assert normalize(text) == triage_text._normalize(text, "python", triage_text._RE)


def test_normalize_of_huge_hostile_text_is_re_s_and_never_fails(monkeypatch):
    many_lines = "same line\n" * 200_000  # PCRE2's JIT stack runs out on the repeated-lines backreference
    many_matches = ("a" * 200_000 + "\n") * 10  # 62,500 digests: PCRE2 copies the text for each callback
    for text in (many_lines, many_matches):
        assert normalize(text) == triage_text._normalize(text, "python", triage_text._RE)
    # Should PCRE2 fail on text it is given, `re` takes over.
    monkeypatch.setattr(triage_text, "_FAST", triage_text._compiled(triage_text._pcre2))
    monkeypatch.setattr(triage_text, "FAST_TEXT", len(many_lines))
    with pytest.raises(pcre2.LibraryError):
        triage_text._normalize(many_lines, "python", triage_text._FAST)
    assert normalize(many_lines) == "same line\n"


def test_normalize_name_and_spans():
    assert normalize_name("[sig-node] Pods  should {run} [Conformance]") == "Pods should"
    assert common_spans("error in pod abc at 5", {"error", " ", "in", "pod", "at"}) == [13, 3, 4, 1]


def test_ngram_counts_and_id_follow_the_crc32_definition():
    every_ascii = _random_text(3, "".join(map(chr, range(128))), 2000)
    for text in ("", "abc", "abcd", "panic: boom\n\tat x.go:12", "ünïcödé text here", "x" * 300, every_ascii):
        expected = [0] * 64
        for i in range(len(text) - 3):
            expected[zlib.crc32(text[i:i + 4].encode()) & 63] += 1
        assert ngram_counts(text).tolist() == expected
        assert cluster_id(ngram_counts(text)) == hashlib.sha1(str(expected).encode()).hexdigest()[:20]


# --- matching ------------------------------------------------------------------------------

def _variant_at_distance(base: str, distance: int) -> str:
    return base[:-distance] + "#" * distance  # substitutions at the end only: edit distance = distance


@pytest.mark.parametrize("offset, joins", [(-1, True), (0, False)])
def test_a_failure_joins_only_under_ten_percent_edit_distance(offset, joins):
    base = _random_text(3, "abcdefghij klmnop\n", 400)
    limit = int((400 + 400) / 2 * 0.10)  # 40
    other = _variant_at_distance(base, limit + offset)
    assert edit_distance(base, other) == limit + offset
    bound = int(abs(ngram_counts(base) - ngram_counts(other)).sum()) // 4
    assert bound <= limit  # the cheap bound lets it through: the exact distance decides
    result = cluster_failures([failure(1, "t", base), failure(2, "t", other)])
    keys = {result.local_key[f.fid] for f in (failure(1, "t", base), failure(2, "t", other))}
    assert (len(keys) == 1) is joins


def test_short_texts_match_only_when_equal_after_normalisation():
    a, b, c = failure(1, "t", "boom 0x1"), failure(2, "t", "boom 0x2"), failure(3, "t", "boom 12")
    result = cluster_failures([a, b, c])
    assert result.local_key[a.fid] == result.local_key[b.fid] == "boom UNIQ1"
    assert result.local_key[c.fid] == "boom 12"


def test_first_candidate_by_lower_bound_then_key_wins_and_build_order_founds_keys():
    base = "x" * 10 + _random_text(5, "abcdefgh \n", 290)
    near = _variant_at_distance(base, 3)
    far = _variant_at_distance(base, 20)
    # `far` comes first in build order, so it is the key; `base` and `near` join it (distance < 30).
    fs = [failure(2, "t", base), failure(1, "t", far), failure(3, "t", near)]
    result = cluster_failures(fs)
    assert {result.local_key[f.fid] for f in fs} == {far}
    # Globally, the test with more failures is placed first and its key is the cluster's key.
    g = [failure(1, "small", near, "gs://b/logs/job/0001"),
         failure(2, "big", base, "gs://b/logs/job/0002"), failure(3, "big", base, "gs://b/logs/job/0003")]
    result = cluster_failures(g)
    assert {result.cluster_of(f) for f in g} == {base}


def test_work_is_bounded_by_size_and_the_bound_is_reported():
    base = _random_text(9, "abcdefgh \n", 300)
    near = _variant_at_distance(base, 5)
    # A key with the same histogram as `near` but a far edit distance sorts first and fails.
    fs = [failure(1, "t", base), failure(2, "t", near)]
    unbounded = cluster_failures(fs)
    assert unbounded.bound_hits == 0 and len(set(unbounded.local_key.values())) == 1
    decoy = near[len(near) // 2:] + near[: len(near) // 2]  # a rotation: similar n-grams, far apart
    fs = [failure(1, "t", decoy), failure(2, "t", base), failure(3, "t", near)]
    result = cluster_failures(fs, options=ClusterOptions(max_distance_checks=1))
    assert result.bound_hits >= 1
    assert cluster_failures(fs, options=ClusterOptions(max_distance_checks=1)).local_key == result.local_key


def test_same_input_in_any_order_gives_the_same_clusters():
    corpus = _corpus_module().generate(600, days=3, seed=4)
    fs = [Failure((f.path, f.test, 0), f.test, f.path, f.text) for f in corpus]
    first = cluster_failures(fs)
    shuffled = fs[:]
    random.Random(1).shuffle(shuffled)
    again = cluster_failures(shuffled)
    assert again.local_key == first.local_key and again.global_key == first.global_key


# --- incremental ---------------------------------------------------------------------------

def test_incremental_days_agree_with_a_full_run_and_keep_ids():
    corpus = _corpus_module().generate(2400, days=10, seed=7)
    day_of = {}
    fs = []
    for f in corpus:
        item = Failure((f.path, f.test, 0), f.test, f.path, f.text, f.started)
        day_of[item.fid] = datetime.fromtimestamp(f.started, tz=timezone.utc).date()
        fs.append(item)
    days = sorted(set(day_of.values()))

    def window(last: int):
        return [f for f in fs if days[last - 6] <= day_of[f.fid] <= days[last]]

    state = cluster_failures(window(6))
    for last in range(7, len(days)):
        previous = Previous(local_key=state.local_key, global_key=state.global_key)
        before = {f.fid: state.cluster_of(f) for f in window(last - 1)}
        state = cluster_failures(window(last), previous)
        assert state.new_failures == sum(1 for f in fs if day_of[f.fid] == days[last])
        full = cluster_failures(window(last))
        items = window(last)
        precision, recall = pairwise_agreement({f.fid: state.cluster_of(f) for f in items},
                                               {f.fid: full.cluster_of(f) for f in items})
        assert precision >= 0.99 and recall >= 0.99, (last, precision, recall)
        # A failure still in the window keeps its cluster and so its key and id (the key's hash).
        stayed = [f for f in items if f.fid in before]
        assert stayed and all(state.cluster_of(f) == before[f.fid] for f in stayed)
        assert len({before[f.fid] for f in stayed}) > 10
        dropped = {f.fid for f in fs if day_of[f.fid] < days[last - 6]}
        assert not dropped & set(state.local_key)


def test_pairwise_agreement_counts_pairs():
    assert pairwise_agreement({1: "a", 2: "a", 3: "b"}, {1: "x", 2: "x", 3: "x"}) == (1.0, 1 / 3)


def test_build_columns_keep_a_repeated_number_last_and_render_subsets_as_bytes():
    pr = "gs://k/pr-logs/pull/{}/pull-b/{}"
    rows = [  # (job, number, path) order
        ("gs://k/logs/a/1", "a", 1, 100), ("gs://k/logs/a/2", "a", 2, 200), ("gs://k/logs/a/3", "a", 3, 300),
        ("gs://k/logs/a/4", "a", None, 400),  # unnumbered: not listed
        (pr.format(7, 5), "pull-b", 5, 500), (pr.format(8, 5), "pull-b", 5, 600), (pr.format(9, 9), "pull-b", 9, 50),
    ]
    table = pa.table({"path": [r[0] for r in rows], "job": [r[1] for r in rows],
                      "number": pa.array([r[2] for r in rows], pa.int64()), "started": [r[3] for r in rows],
                      "elapsed": [10] * 7, "tests_run": [4] * 7, "tests_failed": [1, 1, 1, 1, None, 2, 3],
                      "result": ["FAILURE"] * 7, "executor": ["prow"] * 7}).select(list(BUILD_FIELDS))
    builds = BuildColumns(table)
    assert builds.latest == 600
    assert json.loads(dumps(builds.render())) == {
        # pull-b's 5 is its second row (the last with that number); the first stays in the columns
        "jobs": {"a": [1, 3, 0], "pull-b": {"5": 4, "9": 5}},
        "cols": {"started": [100, 200, 300, 500, 600, 50], "tests_failed": [1, 1, 1, None, 2, 3],
                 "elapsed": [10] * 6, "tests_run": [4] * 6, "result": ["FAILURE"] * 6, "executor": ["prow"] * 6,
                 "pr": [None, None, None, "7", "8", "9"]},
        "job_paths": {"a": "gs://k/logs/a", "pull-b": "gs://k/pr-logs/pull/7/pull-b"},
    }
    only_b = json.loads(dumps(builds.render({"pull-b", "not-a-job"})))
    assert only_b["jobs"] == {"pull-b": {"5": 1, "9": 2}} and only_b["cols"]["started"] == [500, 600, 50]
    empty = json.loads(dumps(builds.render([])))
    assert empty == {"jobs": {}, "cols": {c: [] for c in empty["cols"]}, "job_paths": {}}
    with pytest.raises(ValueError, match="together"):
        BuildColumns(pa.concat_tables([table, table.slice(0, 1)]))


def test_describe_orders_tests_and_picks_the_owner_by_recent_builds_then_older():
    jobs = [{"builds": ["9", "3"], "name": "ci-a"}]
    rows = [  # key hash, test, failures, flaky, first and last seen, first failure, jobs, recent, older
        ("h1", "[sig-old] many", 3, 1, 10, 90, (10, "gs://b/1", "0"), jobs, 0, 3),
        ("h1", "[sig-new] few", 1, 0, 50, 50, (50, "gs://b/5", "1"), jobs, 1, 0),
        ("h1", "unowned", 3, 0, 20, 60, (20, "gs://b/2", "0"), jobs, 5, 5),
        ("h2", "lone", 1, 0, 70, 70, (70, "gs://b/7", "0"), [], 0, 0),
    ]
    tallies = tally(rows)
    assert (tallies["h1"].failures, tallies["h1"].flaky, tallies["h1"].first_seen, tallies["h1"].last_seen) == (
        7, 1, 10, 90)
    # the test with the most failures, ties by name; then its first failure
    assert tallies["h1"].representative() == ("gs://b/1", "[sig-old] many", 0)
    shown = {h: Shown(t.representative(), "text", b"[4]", b"") for h, t in tallies.items()}
    summary = describe(tallies, {"h1": ("key one", "id1"), "h2": ("key two", "id2")}, shown)
    first, second = summary.clusters
    assert [t["name"] for t in json.loads(dumps(first["tests"]))] == ["[sig-old] many", "unowned",
                                                                              "[sig-new] few"]
    assert first["owner"] == "new"  # builds in the last day count first; `unowned` has no owner
    assert (first["test_count"], first["job_names"]) == (3, {"ci-a"})
    assert second["owner"] == "testing" and json.loads(dumps(second["tests"])) == [
        {"name": "lone", "jobs": []}]
    owned = describe(tallies, {"h1": ("key one", "id1"), "h2": ("key two", "id2")}, shown, {"lonely": ["lone"]})
    assert owned.clusters[1]["owner"] == "lonely"


# --- the asset, through DuckDB -------------------------------------------------------------

DAY = date(2026, 11, 20)


def _ts(day_offset: int, hour: int = 1) -> datetime:
    return datetime.combine(DAY + timedelta(days=day_offset), datetime.min.time()) + timedelta(hours=hour)


def _home(tmp_path: Path, results: list[tuple], builds: list[tuple]) -> tuple[DuckDBWarehouse, StagingStore]:
    warehouse = DuckDBWarehouse(duckdb=DuckDBResource(database=str(tmp_path / "warehouse.duckdb")))
    warehouse.ensure_tables()
    with duckdb.connect(str(tmp_path / "warehouse.duckdb")) as conn:
        conn.execute("""CREATE OR REPLACE TABLE test_results (path VARCHAR NOT NULL, job VARCHAR, number BIGINT,
                        started TIMESTAMP, finished TIMESTAMP, pr BIGINT, "commit" VARCHAR, name VARCHAR,
                        time DOUBLE, failed BOOLEAN NOT NULL, failure_text VARCHAR)""")
        conn.executemany("INSERT INTO test_results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", results)
        conn.executemany(
            'INSERT INTO "all" (path, job, number, started, finished, elapsed, tests_run, tests_failed, result, executor) '
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", builds)
    return warehouse, StagingStore(home=str(tmp_path))


def _home_at(folder: Path) -> tuple[DuckDBWarehouse, StagingStore]:
    return DuckDBWarehouse(duckdb=DuckDBResource(database=str(folder / "warehouse.duckdb"))), StagingStore(home=str(folder))


def _materialize(warehouse, staging, **config):
    resources = {"warehouse": warehouse, "staging": staging, "settings": settings_resource(Settings(buckets_file=str(BUCKETS)))}
    result = dg.materialize([failure_clusters], resources=resources,
                            run_config={"ops": {"failure_clusters": {"config": config}}})
    assert result.success
    return result.asset_materializations_for_node("failure_clusters")[0].metadata


PANIC = "panic: nil map at 0x{}\ngoroutine 7 [running]:\nmain.go:12"
JOB = "ci-kubernetes-e2e"
PR_JOB = "pull-kubernetes-unit"


def _row(path, job, number, day, name, failed, text=None, commit="c1"):
    return (path, job, number, _ts(day), _ts(day, 2), None, commit, name, 1.5, failed, text)


def _build(path, job, number, day, failed=1, result="FAILURE"):
    return (path, job, number, _ts(day), _ts(day, 2), 3600.7, 10, failed, result, "prow")


def _hand_made(tmp_path):
    logs = "gs://k/logs/" + JOB
    pr = "gs://k/pr-logs/pull/77/" + PR_JOB
    results = [
        _row(f"{logs}/10", JOB, 10, -1, "[sig-node] Pods work", True, PANIC.format("c0001"), commit="c0"),
        _row(f"{logs}/11", JOB, 11, 0, "[sig-node] Pods work", True, PANIC.format("c0002")),
        _row(f"{logs}/12", JOB, 12, 0, "[sig-node] Pods work", False),
        _row(f"{pr}/5", PR_JOB, 5, 0, "TestUnit", True, PANIC.format("ffff"), commit="c9"),
        _row(f"{logs}/12", JOB, 12, 0, "TestOther", True, "timed out"),
        _row(f"{logs}/10", "ci-kubernetes-coverage-unit", 10, 0, "TestCov", True, PANIC.format("1")),
        _row(f"{logs}/11", JOB, 11, 0, None, True, "a failure without a test name"),
    ]
    builds = [_build(f"{logs}/10", JOB, 10, -1), _build(f"{logs}/11", JOB, 11, 0),
              _build(f"{logs}/12", JOB, 12, 0), _build(f"{pr}/5", PR_JOB, 5, 0)]
    return _home(tmp_path, results, builds)


def test_failure_data_json_has_triage_exact_shape(tmp_path):
    warehouse, staging = _hand_made(tmp_path)
    meta = _materialize(warehouse, staging)
    data = json.loads((tmp_path / "export" / "triage" / "failure_data.json").read_text())
    key = PANIC.format("UNIQ1").replace("0xUNIQ1", "UNIQ1")
    assert key == "panic: nil map at UNIQ1\ngoroutine 7 [running]:\nmain.go:12"
    started = [int(_ts(0).timestamp()), int(_ts(-1).timestamp())]
    assert data == {
        "clustered": [{
            "key": key,
            "id": cluster_id(ngram_counts(key)),
            "text": PANIC.format("c0001"),
            "spans": [len("panic: nil map at "), len("0xc0001"), len("\ngoroutine 7 [running]:\nmain.go:12")],
            "tests": [
                {"name": "[sig-node] Pods work", "jobs": [{"name": JOB, "builds": ["11", "10"]}]},
                {"name": "TestUnit", "jobs": [{"name": PR_JOB, "builds": ["5"]}]},
            ],
            "owner": "node",
        }],
        "builds": {
            "jobs": {JOB: [10, 3, 0], PR_JOB: [5, 1, 3]},
            "cols": {"started": [started[1], started[0], started[0], started[0]],
                     "tests_failed": [1, 1, 1, 1], "elapsed": [3600, 3600, 3600, 3600],
                     "tests_run": [10, 10, 10, 10], "result": ["FAILURE"] * 4, "executor": ["prow"] * 4,
                     "pr": [None, None, None, "77"]},
            "job_paths": {JOB: "gs://k/logs/" + JOB, PR_JOB: "gs://k/pr-logs/pull/77/" + PR_JOB},
        },
    }
    assert meta["clusters"].value == 2 and meta["clusters_in_triage"].value == 1
    assert meta["skipped_unnamed_failures"].value == 1
    slices = tmp_path / "export" / "triage" / "slices"
    cid = data["clustered"][0]["id"]
    assert json.loads((slices / f"failure_data_{cid[:2]}.json").read_text())["clustered"] == data["clustered"]
    assert json.loads((slices / "failure_data_sig-node.json").read_text())["clustered"] == data["clustered"]
    assert len(list(slices.glob("failure_data_??.json"))) == 256
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as conn:
        rows = conn.execute("SELECT cluster_id, failures, flaky_failures, tests, jobs, in_triage, first_seen, last_seen "
                            "FROM failure_clusters ORDER BY failures DESC").fetchall()
        assert rows[0] == (cid, 3, 1, 2, 2, True, _ts(-1), _ts(0))  # it passed in build 12 at c1: build 11 (c1) is flaky, 10 (c0) is not
        assert rows[1][1:6] == (1, 0, 1, 1, False)
        days = conn.execute("SELECT day, failures, flaky_failures, builds FROM failure_cluster_days "
                            "WHERE cluster_id = ? ORDER BY day", [cid]).fetchall()
        assert days == [(DAY - timedelta(days=1), 1, 0, 1), (DAY, 2, 1, 2)]
        assert conn.execute("SELECT count(*) FROM failure_cluster_failures").fetchone()[0] == 4


def test_the_owner_is_the_sig_with_most_builds_in_the_last_day_counted_by_the_warehouse(tmp_path):
    logs, colon_job = "gs://k/logs/" + JOB, "pr:kubernetes-e2e"
    text = "timeout waiting for the same thing"
    results = [
        # three older builds of [sig-old]; build 3 ran twice (another path, the same number): one build
        *(_row(f"{logs}/{n}", JOB, n, -3, "[sig-old] T1", True, text) for n in (1, 2, 3)),
        _row(f"{logs}-again/3", JOB, 3, -3, "[sig-old] T1", True, text),
        # one build of [sig-new] in the day before the latest build
        _row(f"{logs}/10", JOB, 10, 0, "[sig-new] T2", True, text),
        # many recent builds of a job with ':' in its name: not counted for owners
        *(_row(f"gs://k/logs/{colon_job}/{n}", colon_job, n, 0, "[sig-colon] T3", True, text) for n in (5, 6, 7)),
    ]
    builds = [_build(r[0], r[1], r[2], -3 if r[2] <= 3 else 0) for r in results]
    warehouse, staging = _home(tmp_path, results, builds)
    _materialize(warehouse, staging)
    data = json.loads((tmp_path / "export" / "triage" / "failure_data.json").read_text())
    (cluster,) = data["clustered"]
    assert cluster["owner"] == "new"
    assert cluster["tests"][0] == {"name": "[sig-old] T1", "jobs": [{"name": JOB, "builds": ["3", "2", "1"]}]}


def test_a_failure_is_flaky_only_where_the_test_passed_at_the_same_job_and_known_commit(tmp_path):
    logs = "gs://k/logs/" + JOB
    results = [
        _row(f"{logs}/1", JOB, 1, 0, "TestA", True, "boom one", commit="unknown"),
        _row(f"{logs}/2", JOB, 2, 0, "TestA", False, commit="unknown"),  # Kettle's unknown version: no commit
        _row(f"{logs}/1", JOB, 1, 0, "TestB", True, "boom two", commit="unknown"),
        _row(f"{logs}/3", JOB, 3, 0, "TestB", True, "boom two", commit="c5"),
        _row(f"{logs}/4", JOB, 4, 0, "TestB", False, commit="c5"),
        _row(f"{logs}/5", PR_JOB, 5, 0, "TestB", False, commit="c6"),
        _row(f"{logs}/6", JOB, 6, 0, "TestB", True, "boom two", commit="c6"),  # passed at c6, but in another job
    ]
    warehouse, staging = _home(tmp_path, results, [_build(f"{logs}/{n}", JOB, n, 0) for n in range(1, 7)])
    assert _materialize(warehouse, staging)["flaky_failures"].value == 1
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as conn:
        assert conn.execute("SELECT path, name FROM failure_cluster_failures WHERE flaky").fetchall() == [
            (f"{logs}/3", "TestB")]


def _five_days() -> tuple[list[tuple], list[tuple]]:
    """A generated 500-failure, 5-day history: test_results rows and their builds."""
    return _generated(500, days=5, seed=11)


def _generated(failures: int, days: int, seed: int) -> tuple[list[tuple], list[tuple]]:
    """A generated history: test_results rows and their builds."""
    corpus = _corpus_module().generate(failures, days=days, seed=seed, start=datetime(2026, 11, 16, tzinfo=timezone.utc))
    results, builds = [], {}
    for f in corpus:
        when = datetime.fromtimestamp(f.started, tz=timezone.utc).replace(tzinfo=None)
        results.append((f.path, f.job, f.number, when, when, None, "c", f.test, 1.0, True, f.text))
        builds[f.path] = (f.path, f.job, f.number, when, when, 60.0, 5, 1, "FAILURE", "prow")
    return results, list(builds.values())


def test_a_test_failing_twice_in_a_build_is_numbered_by_failure_text(tmp_path):
    logs = "gs://k/logs/" + JOB
    results = [
        _row(f"{logs}/1", JOB, 1, 0, "TestTwice", True, "zzz went wrong"),
        _row(f"{logs}/1", JOB, 1, 0, "TestTwice", False),  # a pass of the same test (a retry) sorts last
        _row(f"{logs}/1", JOB, 1, 0, "TestTwice", True, "aaa went wrong"),
        _row(f"{logs}/2", JOB, 2, 0, "TestTwice", True, "zzz went wrong"),
    ]
    warehouse, staging = _home(tmp_path, results, [_build(f"{logs}/{n}", JOB, n, 0) for n in (1, 2)])
    assert _materialize(warehouse, staging)["failures"].value == 3
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as conn:
        rows = conn.execute("""SELECT f.path, f.seq, c.cluster_key FROM failure_cluster_failures f
                               JOIN failure_clusters c USING (key_hash) ORDER BY 1, 2""").fetchall()
    assert rows == [(f"{logs}/1", 0, "aaa went wrong"), (f"{logs}/1", 1, "zzz went wrong"),
                    (f"{logs}/2", 0, "zzz went wrong")]


def test_same_input_same_bytes_and_incremental_run_keeps_ids(tmp_path, monkeypatch):
    # Small batches of new failures' keys: they are written while the new failures are still read.
    monkeypatch.setattr(failure_clusters_module._Assigned, "BATCH", 7)
    results, builds = _five_days()
    last = max(r[3] for r in results).date()
    warehouse, staging = _home(tmp_path, [r for r in results if r[3].date() < last], builds)
    first = _materialize(warehouse, staging, full=True)
    out = tmp_path / "export" / "triage" / "failure_data.json"
    blob = out.read_bytes()
    again = _materialize(warehouse, staging, full=True)
    assert out.read_bytes() == blob and again["failure_data_sha1"] == first["failure_data_sha1"]
    with duckdb.connect(str(tmp_path / "warehouse.duckdb")) as conn:
        before = dict(conn.execute("SELECT key_hash, cluster_id FROM failure_clusters").fetchall())
        conn.executemany("INSERT INTO test_results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         [r for r in results if r[3].date() == last])
    # The same increment without the kept tokens of each test key and day: it tokenises every
    # failure, and must write the same bytes.
    shutil.copytree(tmp_path, tmp_path / "without-tokens", ignore=shutil.ignore_patterns("without-tokens"))
    (tmp_path / "without-tokens" / "staging" / "failure_clusters" / "groups.parquet").unlink()
    meta = _materialize(warehouse, staging)
    assert meta["mode"].value == "incremental"
    assert meta["new_failures"].value == sum(1 for r in results if r[3].date() == last)
    assert meta["tokenized_failures"].value < 2 * meta["new_failures"].value
    bare = _home_at(tmp_path / "without-tokens")
    bare_meta = _materialize(*bare)
    assert bare_meta["mode"].value == "incremental" and bare_meta["tokenized_failures"].value == meta["failures"].value
    assert bare_meta["failure_data_sha1"].value == meta["failure_data_sha1"].value
    bare_slices = tmp_path / "without-tokens" / "export" / "triage" / "slices"
    for path in (out.parent / "slices").iterdir():
        assert (bare_slices / path.name).read_bytes() == path.read_bytes(), path.name
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as conn:
        after = dict(conn.execute("SELECT key_hash, cluster_id FROM failure_clusters").fetchall())
    assert all(after[k] == before[k] for k in before.keys() & after.keys())
    assert len(before.keys() & after.keys()) >= 0.9 * len(before)
    # Other normalisation rules invalidate the previous keys: the window is clustered again.
    assert _materialize(warehouse, staging, rules="go")["mode"].value == "full"


def test_failures_leaving_mid_window_have_their_groups_read_again(tmp_path):
    results, builds = _five_days()
    warehouse, staging = _home(tmp_path, results, builds)
    _materialize(warehouse, staging, full=True)
    with duckdb.connect(str(tmp_path / "warehouse.duckdb")) as conn:
        # One failure of each of a few groups (test key and day) that have more than one.
        leaving = conn.execute("""
            SELECT any_value(path), name FROM failure_cluster_failures
            GROUP BY name, local_key_hash, CAST(started AS DATE) HAVING count(*) > 1 ORDER BY 2 LIMIT 3""").fetchall()
        assert len(leaving) == 3
        conn.executemany("DELETE FROM test_results WHERE path = ? AND name = ?", leaving)
    shutil.copytree(tmp_path, tmp_path / "without-state", ignore=shutil.ignore_patterns("without-state"))
    (tmp_path / "without-state" / "staging" / "failure_clusters" / "shown.parquet").unlink()
    meta = _materialize(warehouse, staging)
    assert meta["mode"].value == "incremental" and meta["new_failures"].value == 0
    assert meta["groups_read_again"].value >= 3 and meta["clusters_described"].value < meta["clusters"].value
    bare = _materialize(*_home_at(tmp_path / "without-state"))
    assert bare["clusters_described"].value == bare["clusters"].value
    assert bare["failure_data_sha1"].value == meta["failure_data_sha1"].value
    assert meta["failures"].value == len(results) - 3


def test_spans_are_kept_only_with_the_same_common_tokens_and_older_state_files_still_work(tmp_path):
    results, builds = _five_days()
    last = max(r[3] for r in results).date()
    warehouse, staging = _home(tmp_path, [r for r in results if r[3].date() < last], builds)
    _materialize(warehouse, staging, full=True)
    with duckdb.connect(str(tmp_path / "warehouse.duckdb")) as conn:
        conn.executemany("INSERT INTO test_results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         [r for r in results if r[3].date() == last])
    # The same state as a version before the digests wrote it: no `common` column, same token.
    shutil.copytree(tmp_path, tmp_path / "older", ignore=shutil.ignore_patterns("older"))
    shown_path = tmp_path / "older" / "staging" / "failure_clusters" / "shown.parquet"
    shown = pq.read_table(shown_path)
    pq.write_table(shown.drop_columns(["common"]).replace_schema_metadata(shown.schema.metadata), shown_path)
    # And as a version that kept tokens per test key and day wrote them: not used, every text read.
    shutil.copytree(tmp_path, tmp_path / "by-test-key", ignore=shutil.ignore_patterns("older", "by-test-key"))
    groups_path = tmp_path / "by-test-key" / "staging" / "failure_clusters" / "groups.parquet"
    groups = pq.read_table(groups_path)
    by_test_key = pa.table({"test": groups["key_hash"], "local_key_hash": groups["key_hash"], "day": groups["day"],
                            "failures": groups["failures"], "key_hash": groups["key_hash"],
                            "tokens": groups["tokens"]}).replace_schema_metadata(groups.schema.metadata)
    pq.write_table(by_test_key, groups_path)
    meta = _materialize(warehouse, staging)
    older = _materialize(*_home_at(tmp_path / "older"))
    by_test = _materialize(*_home_at(tmp_path / "by-test-key"))
    assert meta["mode"].value == older["mode"].value == by_test["mode"].value == "incremental"
    assert 0 < meta["clusters_texts_worked_out"].value < meta["clusters_described"].value
    assert older["clusters_texts_worked_out"].value == older["clusters_described"].value
    assert meta["tokenized_failures"].value < by_test["tokenized_failures"].value == by_test["failures"].value
    assert older["failure_data_sha1"].value == meta["failure_data_sha1"].value == by_test["failure_data_sha1"].value


def test_without_test_results_the_asset_says_so_and_succeeds(tmp_path):
    warehouse = DuckDBWarehouse(duckdb=DuckDBResource(database=str(tmp_path / "warehouse.duckdb")))
    meta = _materialize(warehouse, StagingStore(home=str(tmp_path)))
    assert meta["missing_input"].value == "test_results" and meta["failures"].value == 0


def test_sized_chunks_never_split_an_item_and_keep_the_rest():
    assert list(sized_chunks([3, 1, 1, 5, 2], lambda n: n, 4)) == [[3, 1], [1, 5], [2]]
    assert list(sized_chunks([9], lambda n: n, 4)) == [[9]] and list(sized_chunks([], len, 4)) == []


def test_clustering_tests_in_worker_processes_gives_the_same_clustering(monkeypatch):
    corpus = _corpus_module().generate(3000, days=2, seed=5)
    fs = sorted((Failure((f.path, f.test, 0), f.test, f.path, f.text, f.started) for f in corpus), key=failure_order)
    split = sorted(f.started for f in fs)[len(fs) // 2]
    before = cluster_stream([f for f in fs if f.started < split])
    kept: dict[str, dict[str, int]] = {}
    for local_id in before.local_ids:
        test, key = before.local_keys[local_id]
        kept.setdefault(test, {})[key] = kept.get(test, {}).get(key, 0) + 1
    later = [f for f in fs if f.started >= split]
    monkeypatch.setattr(clustering_module, "CLUSTER_CHUNK", 50)  # many chunks in flight
    one = cluster_stream(later, before.global_key, workers=1, kept=kept)
    two = cluster_stream(later, before.global_key, workers=2, kept=kept)
    assert one.kept_failures == len(fs) - len(later) and one.new_failures == len(later)
    assert one.distance_checks > 0
    assert list(two.local_ids) == list(one.local_ids) and two.local_keys == one.local_keys
    assert two.global_key == one.global_key
    assert (two.distance_checks, two.bound_hits) == (one.distance_checks, one.bound_hits)


def test_tokenising_in_worker_processes_gives_the_same_output(tmp_path, monkeypatch):
    results, builds = _five_days()
    homes = {}
    for workers in (1, 2):
        monkeypatch.setattr(failure_clusters_module, "PARALLEL_FROM", 1)
        monkeypatch.setattr(failure_clusters_module, "TOKENIZE_CHUNK", 7)  # many chunks, some split mid-day
        home = tmp_path / f"workers-{workers}"
        home.mkdir()
        meta = _materialize(*_home(home, results, builds), full=True, workers=workers)
        assert meta["tokenized_failures"].value == len(results)
        groups = pq.read_table(home / "staging" / "failure_clusters" / "groups.parquet")
        tokens = [frozenset(json.loads(b)) for b in groups["tokens"].to_pylist()]
        homes[workers] = (meta["failure_data_sha1"].value, groups.drop_columns(["tokens"]), tokens)
    assert homes[1][0] == homes[2][0]
    assert homes[1][1].equals(homes[2][1]) and homes[1][2] == homes[2][2]


_KILLED_PARENT = """
import multiprocessing, os, signal
from kettle_assets.core.parallel import map_in_order
from kettle_assets.core.clustering import ClusterOptions, cluster_tests

def chunks():
    while True:
        yield [([], ["panic: boom at 0x1234"] * 2000)]

if __name__ == "__main__":
    for _ in map_in_order(cluster_tests, chunks(), lambda chunk: (chunk, ClusterOptions()), 2):
        print(" ".join(str(p.pid) for p in multiprocessing.active_children()), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
"""


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # an exited orphan not yet reaped is not running


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to see the worker processes")
def test_worker_processes_exit_when_their_parent_is_killed(tmp_path):
    script = tmp_path / "killed_parent.py"
    script.write_text(_KILLED_PARENT)
    # Not subprocess.run: workers left behind would hold its output open.
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        workers = [int(pid) for pid in process.stdout.readline().split()]
        assert process.wait(timeout=60) == -signal.SIGKILL
    finally:
        process.stdout.close()
    assert len(workers) == 2
    deadline = time.monotonic() + 15
    while any(_running(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_running(pid) for pid in workers)


_KILLED_RUN = """
import os, signal, sys
import dagster as dg
from dagster_duckdb import DuckDBResource
from kettle_assets.assets import failure_clusters as module
from kettle_assets.project import Settings, settings_resource
from kettle_assets.resources import cluster_tables
from kettle_assets.resources.staging import StagingStore
from kettle_assets.resources.warehouse import DuckDBWarehouse


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def after(original):
    def call(*args, **kwargs):
        original(*args, **kwargs)
        die()
    return call


class DyingConnection:  # dies at the statement after the failures table, inside the tables' transaction
    def __init__(self, conn):
        self._conn = conn

    def execute(self, sql, *args):
        if sql.startswith("CREATE OR REPLACE TABLE failure_cluster_days"):
            die()
        return self._conn.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self._conn, name)


if __name__ == "__main__":
    home, buckets, point = sys.argv[1:4]
    if point == "state written":
        module._State.write = after(module._State.write)
    elif point == "tables half replaced":
        opened = cluster_tables.DuckDBClusterTables._db
        cluster_tables.DuckDBClusterTables._db = lambda self: DyingConnection(opened(self))
    elif point == "tables replaced":
        StagingStore.write_marker = after(StagingStore.write_marker)
    resources = {"warehouse": DuckDBWarehouse(duckdb=DuckDBResource(database=home + "/warehouse.duckdb")),
                 "staging": StagingStore(home=home), "settings": settings_resource(Settings(buckets_file=buckets))}
    dg.materialize([module.failure_clusters], resources=resources, instance=dg.DagsterInstance.ephemeral())
"""


@pytest.fixture(scope="module")
def before_a_day(tmp_path_factory):
    """A home clustered up to a day that is now in test_results, and what an uninterrupted
    incremental run of it gives: (home, failure_data sha1, slices, failure_clusters rows)."""
    results, builds = _generated(3_000, days=3, seed=3)
    last = max(r[3] for r in results).date()
    home = tmp_path_factory.mktemp("before-a-day")
    warehouse, staging = _home(home, [r for r in results if r[3].date() < last], builds)
    _materialize(warehouse, staging, full=True)
    with duckdb.connect(str(home / "warehouse.duckdb")) as conn:
        conn.executemany("INSERT INTO test_results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         [r for r in results if r[3].date() == last])
    reference = tmp_path_factory.mktemp("uninterrupted") / "home"
    shutil.copytree(home, reference)
    meta = _materialize(*_home_at(reference))
    assert meta["mode"].value == "incremental"
    return home, meta["failure_data_sha1"].value, _slices(reference), _cluster_rows(reference)


def _slices(home: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (home / "export" / "triage" / "slices").iterdir()}


def _cluster_rows(home: Path) -> list[tuple]:
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as conn:
        return conn.execute("SELECT * FROM failure_clusters ORDER BY key_hash").fetchall()


@pytest.mark.parametrize("point", ["state written", "tables half replaced", "tables replaced"])
def test_a_run_killed_at_any_point_of_its_writes_leaves_nothing_the_next_run_trips_on(tmp_path, before_a_day, point):
    """SIGKILL of a real run after it wrote the state files for the next run, in the middle of
    the tables' transaction, and after the tables but before the markers: the next run gives the
    bytes and tables an uninterrupted run gives."""
    template, sha1, slices, rows = before_a_day
    home = tmp_path / "home"
    shutil.copytree(template, home)
    script = tmp_path / "killed_run.py"
    script.write_text(_KILLED_RUN)
    done = subprocess.run([sys.executable, str(script), str(home), str(BUCKETS), point],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    # killed where meant: the tables are the last run's until their transaction committed
    assert _cluster_rows(home) == (rows if point == "tables replaced" else _cluster_rows(template))
    # the JSON is written beside the tables: a kill can leave a file half written
    (home / "export" / "triage" / "slices" / "failure_data_sig-gone.json.tmp").write_bytes(b'{"clustered": [')
    again = _materialize(*_home_at(home))
    assert not list((home / "export" / "triage").rglob("*.tmp"))
    assert again["mode"].value == "incremental"
    # the state files the killed run wrote do not go with the tables: every text is read again
    assert again["tokenized_failures"].value == again["failures"].value
    assert again["failure_data_sha1"].value == sha1
    assert _slices(home) == slices
    assert _cluster_rows(home) == rows


def test_a_window_without_failures_gives_no_clusters(tmp_path):
    warehouse, staging = _hand_made(tmp_path)
    meta = _materialize(warehouse, staging, last_day="2020-01-01")
    assert meta["failures"].value == 0 and meta["clusters"].value == 0
    assert json.loads((tmp_path / "export" / "triage" / "failure_data.json").read_text())["clustered"] == []
    assert _materialize(warehouse, staging, last_day="2020-01-02")["mode"].value == "incremental"
