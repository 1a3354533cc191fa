"""Listing and fetching builds (Kettle's listing rules, with our fix for build 12 vs 123), on real folders.

A LocalArtifactStore maps gs://<bucket>/<x> to <root>/<bucket>/<x>, so each
test lays out a small bucket tree under tmp_path.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kettle_assets.core.collect import (
    ABSENT,
    BAD_PATH,
    FINISHED,
    GIVEN_UP,
    UNFINISHED,
    fetch_build,
    fetch_junit,
)
from kettle_assets.core.config import parse_buckets
from kettle_assets.core.listing import (
    Candidate,
    ListingStats,
    JUnitListing,
    junit_files,
    junit_listings,
    junit_paths,
    list_candidates,
    natural_key,
)
from kettle_assets.resources.artifacts import LocalArtifactStore

DAY = 86400
NOW = 1_704_100_000  # 2024-01-01T09:06:40Z

LOGS = "gs://ci-logs/logs/"
PR_LOGS = "gs://ci-logs/pr-logs/"


# --- helpers ---------------------------------------------------------------------


def put(root: Path, url: str, content: str | bytes = "") -> Path:
    """Write an object at gs:// URL `url` under `root`."""
    assert url.startswith("gs://")
    path = root.joinpath(*url[5:].split("/"))
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        content = content.encode()
    path.write_bytes(content)
    return path


def mkdir(root: Path, url: str) -> None:
    root.joinpath(*url[5:].rstrip("/").split("/")).mkdir(parents=True, exist_ok=True)


def bucket(url: str = LOGS, **settings):
    settings.setdefault("prefix", "")
    return parse_buckets({url: settings}).buckets[0]


@pytest.fixture
def root(tmp_path) -> Path:
    return tmp_path


@pytest.fixture
def store(root) -> LocalArtifactStore:
    return LocalArtifactStore(root=str(root))


def builds_of(cands, job=None):
    return [c.listed_as.rsplit("/", 1)[1] for c in cands if job is None or c.job == job]


# --- natural order -----------------------------------------------------------------


def test_natural_key_newest_first():
    assert sorted(["1", "2", "10", "9", "100"], key=natural_key, reverse=True) == ["100", "10", "9", "2", "1"]


def test_natural_key_date_like_names():
    names = ["20250101-900", "20241231-2300", "20250102-100", "20250101-1200"]
    assert sorted(names, key=natural_key, reverse=True) == [
        "20250102-100",
        "20250101-1200",
        "20250101-900",
        "20241231-2300",
    ]


def test_natural_key_mixed_text_and_digits():
    names = ["run-2", "run-10", "run-1"]
    assert sorted(names, key=natural_key) == ["run-1", "run-2", "run-10"]


# --- non-PR bucket, sequential with latest-build.txt ---------------------------------


def test_latest_build_candidates_count_down_whether_or_not_folders_exist(root, store):
    b = bucket()
    put(root, LOGS + "ci-job/latest-build.txt", "5\n")
    mkdir(root, LOGS + "ci-job/3")
    mkdir(root, LOGS + "ci-job/7")  # beyond latest: not a candidate in Kettle's walk
    cands = list(list_candidates(store, b, known=set()))
    assert builds_of(cands) == ["5", "4", "3", "2", "1"]
    for c in cands:
        assert c.job == "ci-job"
        assert c.path == c.listed_as == f"{LOGS}ci-job/{c.listed_as.rsplit('/', 1)[1]}"
        assert not c.path.endswith("/")


def test_latest_build_known_ones_skipped(root, store):
    b = bucket()
    put(root, LOGS + "ci-job/latest-build.txt", "6")
    known = {f"{LOGS}ci-job/{n}" for n in (6, 4, 1)}
    stats = ListingStats()
    cands = list(list_candidates(store, b, known, stats))
    assert builds_of(cands) == ["5", "3", "2"]
    assert stats.known_skipped == 3


def test_latest_build_walk_stops_after_more_than_40_known(root, store):
    """latest 100; 100..50 known except 95 and 70.

    Walk: 100..96 known (5), 95 yielded, 94..71 known (24 -> 29), 70 yielded,
    69..58 known (12 -> 41 > 40): stop. 57..50 (known) and 49..1 (unknown)
    are never reached.
    """
    b = bucket()
    put(root, LOGS + "ci-job/latest-build.txt", "100")
    known = {f"{LOGS}ci-job/{n}" for n in range(50, 101)} - {f"{LOGS}ci-job/95", f"{LOGS}ci-job/70"}
    stats = ListingStats()
    cands = list(list_candidates(store, b, known, stats))
    assert builds_of(cands) == ["95", "70"]
    assert stats.known_skipped == 41
    assert stats.builds_seen == 100 - 58 + 1


def test_latest_build_all_known_head_yields_nothing(root, store):
    """latest 100, 100..50 known: the 41st known (60) stops the walk; 49..1 never yielded."""
    b = bucket()
    put(root, LOGS + "ci-job/latest-build.txt", "100")
    known = {f"{LOGS}ci-job/{n}" for n in range(50, 101)}
    assert list(list_candidates(store, b, known)) == []


def test_latest_build_exactly_40_known_does_not_stop(root, store):
    """Only MORE than 40 known builds stop the walk: 40 known, then unknown ones still come."""
    b = bucket()
    put(root, LOGS + "ci-job/latest-build.txt", "50")
    known = {f"{LOGS}ci-job/{n}" for n in range(11, 51)}  # 40 builds
    cands = list(list_candidates(store, b, known))
    assert builds_of(cands) == [str(n) for n in range(10, 0, -1)]


def test_latest_build_41_known_stops(root, store):
    b = bucket()
    put(root, LOGS + "ci-job/latest-build.txt", "50")
    known = {f"{LOGS}ci-job/{n}" for n in range(10, 51)}  # 41 builds
    assert list(list_candidates(store, b, known)) == []


def test_known_count_is_per_job(root, store):
    b = bucket()
    put(root, LOGS + "a-job/latest-build.txt", "60")
    put(root, LOGS + "b-job/latest-build.txt", "3")
    known = {f"{LOGS}a-job/{n}" for n in range(1, 61)}
    cands = list(list_candidates(store, b, known))
    assert builds_of(cands, "a-job") == []
    assert builds_of(cands, "b-job") == ["3", "2", "1"]


# --- non-PR bucket, listing the job folder -------------------------------------------


@pytest.mark.parametrize("latest", [None, "abc", "", "12.5"])
def test_no_usable_latest_build_lists_folders_newest_first(root, store, latest):
    b = bucket()
    if latest is not None:
        put(root, LOGS + "ci-job/latest-build.txt", latest)
    for name in ["1", "2", "10", "9", "100"]:
        mkdir(root, LOGS + f"ci-job/{name}")
    cands = list(list_candidates(store, b, known=set()))
    assert builds_of(cands) == ["100", "10", "9", "2", "1"]


@pytest.mark.parametrize("latest", [None, "abc"])
def test_listed_folders_have_no_40_known_stop(root, store, latest):
    b = bucket()
    if latest is not None:
        put(root, LOGS + "ci-job/latest-build.txt", latest)
    for n in range(1, 61):
        mkdir(root, LOGS + f"ci-job/{n}")
    known = {f"{LOGS}ci-job/{n}" for n in range(3, 61)} - {f"{LOGS}ci-job/30"}  # 57 known
    cands = list(list_candidates(store, b, known))
    assert builds_of(cands) == ["30", "2", "1"]


def test_listed_folders_with_date_like_names(root, store):
    b = bucket(sequential=False)
    for name in ["20250101-900", "20241231-2300", "20250102-100", "20250101-1200"]:
        mkdir(root, LOGS + f"ci-job/{name}")
    cands = list(list_candidates(store, b, known=set()))
    assert builds_of(cands) == ["20250102-100", "20250101-1200", "20250101-900", "20241231-2300"]


def test_not_sequential_always_lists_folders(root, store):
    b = bucket(sequential=False)
    put(root, LOGS + "ci-job/latest-build.txt", "100")
    for name in ["3", "1", "2"]:
        mkdir(root, LOGS + f"ci-job/{name}")
    cands = list(list_candidates(store, b, known={f"{LOGS}ci-job/2"}))
    assert builds_of(cands) == ["3", "1"]


def test_not_sequential_no_40_known_stop(root, store):
    b = bucket(sequential=False)
    for n in range(1, 51):
        mkdir(root, LOGS + f"ci-job/{n}")
    known = {f"{LOGS}ci-job/{n}" for n in range(2, 51)}  # 49 known, then 1 unknown
    assert builds_of(list_candidates(store, b, known)) == ["1"]


def test_jobs_are_folders_directly_under_bucket(root, store):
    b = bucket()
    put(root, LOGS + "README.txt", "not a job")
    put(root, LOGS + "ci-a/latest-build.txt", "2")
    put(root, LOGS + "ci-b/latest-build.txt", "1")
    stats = ListingStats()
    cands = list(list_candidates(store, b, set(), stats))
    assert sorted((c.job, builds_of([c])[0]) for c in cands) == [("ci-a", "1"), ("ci-a", "2"), ("ci-b", "1")]
    assert stats.jobs == 2


# --- exclude_jobs ----------------------------------------------------------------------


def test_excluded_job_yields_nothing_and_is_counted(root, store):
    b = bucket(exclude_jobs=["-canary$", "^maintenance-"])
    for job in ["ci-foo-canary", "maintenance-daily", "ci-canary-foo", "ci-good"]:
        put(root, LOGS + f"{job}/latest-build.txt", "2")
    mkdir(root, LOGS + "ci-listed-canary/7")  # excluded, even when listed by folder
    stats = ListingStats()
    cands = list(list_candidates(store, b, set(), stats))
    assert sorted({c.job for c in cands}) == ["ci-canary-foo", "ci-good"]
    assert stats.jobs_excluded == 3
    assert stats.jobs == 5


# --- PR bucket ------------------------------------------------------------------------------


def pr_tree(root: Path) -> None:
    d = PR_LOGS + "directory/"
    put(root, d + "pull-job/100.txt", PR_LOGS + "pull/org_repo/1/pull-job/100")
    put(root, d + "pull-job/101.txt", PR_LOGS + "pull/org_repo/2/pull-job/101\n")
    put(root, d + "pull-job/latest-build.txt", "999")
    put(root, d + "other-job/7.txt", PR_LOGS + "pull/org_repo/3/other-job/7")
    put(root, d + "pull-canary/5.txt", PR_LOGS + "pull/org_repo/3/pull-canary/5")
    # the real build folders also exist, with their own latest-build.txt
    put(root, PR_LOGS + "pull/org_repo/1/pull-job/latest-build.txt", "100")
    put(root, PR_LOGS + "pull/org_repo/1/pull-job/100/finished.json", "{}")


def test_pr_bucket_lists_directory_txt_files(root, store):
    pr_tree(root)
    b = bucket(PR_LOGS, prefix="pr:", pr=True, exclude_jobs=["-canary$"])
    known = {PR_LOGS + "directory/pull-job/100.txt"}
    stats = ListingStats()
    cands = list(list_candidates(store, b, known, stats))
    got = sorted((c.job, c.listed_as) for c in cands)
    assert got == [
        ("other-job", PR_LOGS + "directory/other-job/7.txt"),
        ("pull-job", PR_LOGS + "directory/pull-job/101.txt"),
    ]
    for c in cands:
        assert c.path is None
    assert stats.known_skipped == 1
    assert stats.jobs_excluded == 1


def test_pr_bucket_ignores_latest_build_txt(root, store):
    pr_tree(root)
    b = bucket(PR_LOGS, prefix="pr:", pr=True)
    cands = list(list_candidates(store, b, set()))
    names = [c.listed_as for c in cands]
    assert not any(n.endswith("latest-build.txt") for n in names)
    assert not any("999" in n for n in names)
    # nothing outside directory/ is a candidate
    assert all(n.startswith(PR_LOGS + "directory/") for n in names)
    assert len(names) == 4


def test_pr_bucket_listing_is_recursive(root, store):
    """directory/ is listed recursively: every <job>/<build>.txt counts."""
    b = bucket(PR_LOGS, prefix="pr:", pr=True)
    for job in ("j1", "j2", "j3"):
        for n in (1, 2):
            put(root, PR_LOGS + f"directory/{job}/{n}.txt", PR_LOGS + f"pull/o_r/9/{job}/{n}")
    cands = list(list_candidates(store, b, set()))
    assert len(cands) == 6
    assert {c.job for c in cands} == {"j1", "j2", "j3"}


def test_pr_bucket_not_sequential_ignored(root, store):
    """latest-build.txt is ignored in a PR bucket even when sequential is true (the default)."""
    b = bucket(PR_LOGS, prefix="pr:", pr=True)
    assert b.sequential is True
    put(root, PR_LOGS + "directory/pull-job/latest-build.txt", "3")
    put(root, PR_LOGS + "directory/pull-job/2.txt", PR_LOGS + "pull/o_r/1/pull-job/2")
    cands = list(list_candidates(store, b, set()))
    assert [c.listed_as for c in cands] == [PR_LOGS + "directory/pull-job/2.txt"]


# --- fetch_build ------------------------------------------------------------------------------


def cand_for(path: str) -> Candidate:
    job = path.rsplit("/", 2)[1]
    return Candidate(listed_as=path, job=job, path=path)


def test_pr_candidate_resolves_txt_content(root, store):
    build = PR_LOGS + "pull/org_repo/2/pull-job/101"
    txt = PR_LOGS + "directory/pull-job/101.txt"
    put(root, txt, build + "/\n")
    put(root, build + "/finished.json", json.dumps({"timestamp": NOW - 100, "result": "SUCCESS"}))
    meta = fetch_build(store, Candidate(listed_as=txt, job="pull-job", path=None), NOW)
    assert meta.path == build
    assert meta.listed_as == txt
    assert meta.state == FINISHED


def test_pr_candidate_without_build_files_still_resolves_path(root, store):
    build = PR_LOGS + "pull/org_repo/2/pull-job/102"
    txt = PR_LOGS + "directory/pull-job/102.txt"
    put(root, txt, build + "\n")
    meta = fetch_build(store, Candidate(listed_as=txt, job="pull-job", path=None), NOW)
    assert meta.path == build
    assert meta.state == ABSENT


@pytest.mark.parametrize(
    "content",
    ["../../etc", "http://x", "", "gs://ci-logs/../etc/passwd", "/etc/passwd", "gs://ci-logs"],
)
def test_pr_candidate_bad_path(root, store, content):
    txt = PR_LOGS + "directory/pull-job/5.txt"
    put(root, txt, content)
    meta = fetch_build(store, Candidate(listed_as=txt, job="pull-job", path=None), NOW)
    assert meta.state == BAD_PATH
    assert meta.problems, "a bad path must be noted"
    assert meta.finished_json is None and meta.day is None


def test_finished_build(root, store):
    build = LOGS + "ci-job/12"
    finished_at = 1_704_067_199  # 2023-12-31T23:59:59Z (2024-01-01 in UTC+1)
    put(root, build + "/started.json", json.dumps({"timestamp": finished_at - 600}))
    body = json.dumps({"timestamp": finished_at, "result": "SUCCESS"})
    put(root, build + "/finished.json", body)
    meta = fetch_build(store, cand_for(build), NOW)
    assert meta.state == FINISHED
    assert meta.path == build
    assert meta.day == "2023-12-31"
    assert meta.finished_hash
    assert json.loads(meta.finished_json) == {"timestamp": finished_at, "result": "SUCCESS"}
    assert json.loads(meta.started_json) == {"timestamp": finished_at - 600}
    assert meta.problems == []


def test_finished_hash_tracks_file_content(root, store):
    a, b = LOGS + "ci-job/1", LOGS + "ci-job/2"
    put(root, a + "/finished.json", json.dumps({"timestamp": NOW, "result": "SUCCESS"}))
    put(root, b + "/finished.json", json.dumps({"timestamp": NOW, "result": "FAILURE"}))
    ha = fetch_build(store, cand_for(a), NOW).finished_hash
    hb = fetch_build(store, cand_for(b), NOW).finished_hash
    assert ha and hb and ha != hb
    assert fetch_build(store, cand_for(a), NOW).finished_hash == ha


def test_finished_without_started_is_finished(root, store):
    build = LOGS + "ci-job/13"
    put(root, build + "/finished.json", json.dumps({"timestamp": NOW - 10}))
    meta = fetch_build(store, cand_for(build), NOW)
    assert meta.state == FINISHED
    assert meta.day == "2024-01-01"


def test_started_only_fresh_is_unfinished(root, store):
    build = LOGS + "ci-job/14"
    put(root, build + "/started.json", json.dumps({"timestamp": NOW - DAY}))
    meta = fetch_build(store, cand_for(build), NOW)
    assert meta.state == UNFINISHED
    assert meta.finished_hash is None


def test_started_only_older_than_5_days_is_given_up(root, store):
    build = LOGS + "ci-job/15"
    put(root, build + "/started.json", json.dumps({"timestamp": NOW - 6 * DAY}))
    meta = fetch_build(store, cand_for(build), NOW)
    assert meta.state == GIVEN_UP


def test_started_4_days_ago_is_not_given_up(root, store):
    build = LOGS + "ci-job/16"
    put(root, build + "/started.json", json.dumps({"timestamp": NOW - 4 * DAY}))
    assert fetch_build(store, cand_for(build), NOW).state == UNFINISHED


def test_neither_file_is_absent(root, store):
    build = LOGS + "ci-job/17"
    put(root, build + "/build-log.txt", "hello")
    meta = fetch_build(store, cand_for(build), NOW)
    assert meta.state == ABSENT
    assert meta.started_json is None and meta.finished_json is None


def test_missing_folder_is_absent(root, store):
    meta = fetch_build(store, cand_for(LOGS + "ci-job/18"), NOW)
    assert meta.state == ABSENT


def test_broken_finished_json_is_still_finished(root, store):
    build = LOGS + "ci-job/19"
    f = put(root, build + "/finished.json", '{"timestamp": 17040')
    mtime = 1_703_980_800 + 3600  # 2023-12-31T01:00:00Z
    os.utime(f, (mtime, mtime))
    meta = fetch_build(store, cand_for(build), NOW)
    assert meta.state == FINISHED
    assert meta.finished_json is None
    assert meta.problems
    assert any("finished.json" in p for p in meta.problems)
    assert meta.day == "2023-12-31"
    assert meta.finished_hash


def test_started_json_list_is_a_problem(root, store):
    build = LOGS + "ci-job/20"
    f = put(root, build + "/started.json", "[1, 2, 3]")
    os.utime(f, (NOW - DAY, NOW - DAY))
    meta = fetch_build(store, cand_for(build), NOW)
    assert any("started.json" in p for p in meta.problems)
    assert meta.state != ABSENT  # the file exists: the build is recorded


# --- junit_paths ------------------------------------------------------------------------------


def test_junit_paths_only_direct_junit_files(root, store):
    build = LOGS + "ci-job/12"
    art = build + "/artifacts/"
    for name in ["junit_01.xml", "junit.xml", "junit-e2e.xml"]:
        put(root, art + name, "<testsuite/>")
    for name in [
        "sub/junit_1.xml",
        "junit_dir/x.xml",
        "foo.xml",
        "foo_junit.xml",
        "junit_01.xml.gz",
        "junit.txt",
    ]:
        put(root, art + name, "<testsuite/>")
    put(root, build + "/junit.xml", "<testsuite/>")  # not in artifacts/
    got = [o.path for o in junit_paths(store, build)]
    assert sorted(got) == sorted(art + n for n in ["junit_01.xml", "junit.xml", "junit-e2e.xml"])


def test_junit_paths_do_not_leak_between_12_and_123(root, store):
    b12, b123 = LOGS + "ci-job/12", LOGS + "ci-job/123"
    put(root, b12 + "/artifacts/junit_a.xml", "<testsuite/>")
    put(root, b123 + "/artifacts/junit_b.xml", "<testsuite/>")
    put(root, b123 + "/artifacts/junit_a.xml", "<testsuite/>")
    assert [o.path for o in junit_paths(store, b12)] == [b12 + "/artifacts/junit_a.xml"]
    assert sorted(o.path for o in junit_paths(store, b123)) == [
        b123 + "/artifacts/junit_a.xml",
        b123 + "/artifacts/junit_b.xml",
    ]


def test_junit_paths_none(root, store):
    assert junit_paths(store, LOGS + "ci-job/404") == []
    mkdir(root, LOGS + "ci-job/405/artifacts")
    assert junit_paths(store, LOGS + "ci-job/405") == []


def test_junit_paths_report_sizes(root, store):
    build = LOGS + "ci-job/21"
    put(root, build + "/artifacts/junit_1.xml", b"x" * 123)
    (obj,) = junit_paths(store, build)
    assert obj.size == 123


def test_junit_listings_share_one_glob_per_job_or_pr_folder():
    pr = PR_LOGS + "pull/org_repo/5/"
    listings = junit_listings([
        LOGS + "ci-job/12", LOGS + "ci-job/123", LOGS + "other/1",
        pr + "pull-a/7", pr + "pull-b/8", PR_LOGS + "pull/batch/pull-a/9", LOGS + "odd/7,8",
    ])
    assert sorted(listings, key=repr) == sorted([
        JUnitListing(LOGS + "ci-job/", "logs/ci-job/{12,123}/artifacts/junit*", (LOGS + "ci-job/12", LOGS + "ci-job/123")),
        JUnitListing(pr, "pr-logs/pull/org_repo/5/{pull-a,pull-b}/{7,8}/artifacts/junit*", (pr + "pull-a/7", pr + "pull-b/8")),
        JUnitListing(LOGS + "other/1/artifacts/", None, (LOGS + "other/1",)),  # alone in its folder
        JUnitListing(PR_LOGS + "pull/batch/pull-a/9/artifacts/", None, (PR_LOGS + "pull/batch/pull-a/9",)),
        JUnitListing(LOGS + "odd/7,8/artifacts/", None, (LOGS + "odd/7,8",)),  # ',' means something in a glob
    ], key=repr)
    assert all(lst.glob is None for lst in junit_listings([LOGS + "ci-job/12", LOGS + "ci-job/123"], by_glob=False))


def test_junit_listings_split_a_long_glob():
    paths = [LOGS + f"ci-job/{n:012d}" for n in range(1000)]
    listings = junit_listings(paths)
    assert len(listings) > 1 and all(len(lst.glob) <= 4000 for lst in listings)
    assert sorted(b for lst in listings for b in lst.builds) == paths


def test_a_shared_listing_gives_each_build_exactly_its_own_junit_files(root, store):
    """The local store answers a glob with everything under the prefix (more than a GCS glob
    would): each build still gets exactly what its own listing finds, and never another's."""
    pr = PR_LOGS + "pull/org_repo/5/"
    builds = [LOGS + "ci-job/12", LOGS + "ci-job/123", LOGS + "ci-job/1", pr + "pull-a/7", pr + "pull-b/8"]
    for b in builds:
        put(root, b + "/artifacts/junit_01.xml", "<testsuite/>")
        put(root, b + "/artifacts/sub/junit_02.xml", "<testsuite/>")
        put(root, b + "/artifacts/junit.txt", "x")
    put(root, LOGS + "ci-job/123/artifacts/junit_b.xml", "<testsuite/>")
    put(root, pr + "pull-a/8/artifacts/junit_01.xml", "<testsuite/>")  # in the glob's cross product, not asked for
    put(root, LOGS + "ci-job/13/artifacts/junit_01.xml", "<testsuite/>")  # not asked for
    wanted = builds[:2] + builds[3:] + [LOGS + "ci-job/404"]  # ci-job/1 not asked for; 404 has no files
    found = {}
    for listing in junit_listings(wanted):
        found.update(junit_files(store, listing))
    assert found == {b: junit_paths(store, b) for b in wanted}
    assert [o.path for o in found[LOGS + "ci-job/123"]] == [
        LOGS + "ci-job/123/artifacts/junit_01.xml", LOGS + "ci-job/123/artifacts/junit_b.xml"
    ]
    assert found[LOGS + "ci-job/404"] == []


# --- fetch_junit ------------------------------------------------------------------------------

GOOD = (
    b'<testsuite name="s">'
    b'<testcase name="passes" time="1.5"/>'
    b'<testcase name="fails" time="2"><failure message="boom">trace</failure></testcase>'
    b"</testsuite>"
)
OTHER = b'<testsuite><testcase name="other" time="0.25"/></testsuite>'
BROKEN = b"<testsuite><testcase name='x'"


def test_fetch_junit_counts_and_malformed_costs_only_itself(root, store):
    build = LOGS + "ci-job/30"
    put(root, build + "/artifacts/junit_1.xml", GOOD)
    put(root, build + "/artifacts/junit_2.xml", BROKEN)
    put(root, build + "/artifacts/junit_3.xml", OTHER)
    put(root, build + "/artifacts/foo.xml", BROKEN)  # not a JUnit file: not read
    out = fetch_junit(store, build, "hash", max_file_bytes=1 << 20)
    assert out.files == 3
    assert out.bytes == len(GOOD) + len(BROKEN) + len(OTHER)
    assert out.malformed == 1
    assert out.too_large == 0
    assert any("junit_2.xml" in p for p in out.problems)
    names = sorted(t["name"] for t in out.tests)
    assert names == ["fails", "other", "passes"]
    by_name = {t["name"]: t for t in out.tests}
    assert by_name["fails"]["failed"] is True
    assert by_name["fails"]["failure_text"] == "boom\ntrace"
    assert "failed" not in by_name["passes"]
    assert by_name["passes"]["time"] == 1.5
    assert out.path == build
    assert out.finished_hash == "hash"


def test_fetch_junit_too_large_is_skipped(root, store):
    build = LOGS + "ci-job/31"
    big = b"<testsuite>" + b'<testcase name="big"/>' * 200 + b"</testsuite>"
    put(root, build + "/artifacts/junit_big.xml", big)
    put(root, build + "/artifacts/junit_small.xml", OTHER)
    limit = len(OTHER) + 10
    assert len(big) > limit
    out = fetch_junit(store, build, None, max_file_bytes=limit)
    assert out.too_large == 1
    assert out.malformed == 0
    assert [t["name"] for t in out.tests] == ["other"]
    assert any("junit_big.xml" in p for p in out.problems)


def test_fetch_junit_no_files(root, store):
    out = fetch_junit(store, LOGS + "ci-job/32", None, max_file_bytes=1000)
    assert (out.files, out.bytes, out.malformed, out.too_large, out.tests) == (0, 0, 0, 0, [])


def test_fetch_junit_does_not_take_sibling_build_files(root, store):
    b12, b123 = LOGS + "ci-job/12", LOGS + "ci-job/123"
    put(root, b12 + "/artifacts/junit_1.xml", OTHER)
    put(root, b123 + "/artifacts/junit_1.xml", GOOD)
    out = fetch_junit(store, b12, None, max_file_bytes=1 << 20)
    assert [t["name"] for t in out.tests] == ["other"]
    assert out.files == 1


def test_fetch_unordered_hands_on_results_as_they_finish_with_a_bounded_number_pending():
    """A stalled fetch holds its own slot only: the others are handed on while it waits, no more
    than `in_flight` are ever submitted and unfinished, and its error reaches the caller."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from kettle_assets.assets.common import fetch_unordered

    release = threading.Event()
    lock = threading.Lock()
    running, most = 0, 0

    def fetch(n: int) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        if n == 0:
            assert release.wait(10)
        with lock:
            running -= 1
        return n

    got = []
    with ThreadPoolExecutor(max_workers=8) as pool:
        for n in fetch_unordered(pool, fetch, range(50), 4):
            got.append(n)
            if len(got) == 49:
                release.set()  # only the stalled item is left
    assert got[-1] == 0 and sorted(got) == list(range(50))
    assert most <= 4

    def failing(n: int) -> int:
        if n == 3:
            raise ValueError("build 3")
        return n

    with ThreadPoolExecutor(max_workers=2) as pool, pytest.raises(ValueError, match="build 3"):
        list(fetch_unordered(pool, failing, range(10), 2))
