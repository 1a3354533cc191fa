"""One build -> one contract row.

Expected rows are written from the row contract's rules (Kettle's make_json), not from what the code returns.
"""

from __future__ import annotations

import json

from kettle_assets.core.rows import RowProblems, build_row, row_json

T0 = 1700000000
PATH = "gs://kubernetes-jenkins/logs/ci-kubernetes-e2e-gce/1234"


def row(started=None, finished=None, junit=(), path=PATH, prefix="", problems=None):
    return build_row(path, prefix, started, finished, junit, problems)


def empty_tests():
    return {"test": [], "tests_run": 0, "tests_failed": 0}


# --- full rows -------------------------------------------------------------


def test_bootstrap_style_full_row():
    started = {
        "timestamp": T0,
        "node": "agent-light-7",
        "repos": {"k8s.io/kubernetes": "master:abc123", "k8s.io/release": "master"},
        "repo-version": "v1.29.0-alpha.1.100+abc123",
        "pull": "master",
        "jenkins-node": "agent-light-7",
    }
    finished = {
        "timestamp": T0 + 600,
        "result": "SUCCESS",
        "passed": True,
        "version": "v1.29.0-alpha.1.100+abc123",
        "job-version": "v1.29.0-alpha.1.100+abc123",
        "metadata": {
            "repo": "k8s.io/kubernetes",
            "repos": {"k8s.io/kubernetes": "master:abc123"},
            "job-version": "v1.29.0-alpha.1.100+abc123",
            "version": "v1.29.0-alpha.1.100+abc123",
            "infra-commit": "deadbeef",
            "pod": "pod-1",
        },
    }
    junit = [
        [
            {"name": "a", "time": 1.0},
            {"name": "b", "time": 2.0, "failed": True, "failure_text": "x"},
        ],
        [{"name": "c", "time": 0.0}],
    ]
    assert row(started, finished, junit) == {
        "path": PATH,
        "job": "ci-kubernetes-e2e-gce",
        "number": 1234,
        "started": T0,
        "finished": T0 + 600,
        "elapsed": 600,
        "passed": True,
        "result": "SUCCESS",
        "version": "v1.29.0-alpha.1.100+abc123",
        "executor": "agent-light-7",
        "repo_commit": "v1.29.0-alpha.1.100+abc123",
        "repos": '{"k8s.io/kubernetes": "master:abc123", "k8s.io/release": "master"}',
        "metadata": [
            {"key": "infra-commit", "value": "deadbeef"},
            {"key": "pod", "value": "pod-1"},
            {"key": "repo", "value": "k8s.io/kubernetes"},
            {"key": "repos", "value": '{"k8s.io/kubernetes": "master:abc123"}'},
        ],
        "test": [
            {"name": "a", "time": 1.0},
            {"name": "b", "time": 2.0, "failed": True, "failure_text": "x"},
            {"name": "c", "time": 0.0},
        ],
        "tests_run": 3,
        "tests_failed": 1,
    }


def test_podutils_style_full_row():
    path = "gs://kubernetes-jenkins/pr-logs/pull/test-infra/123/pull-test-infra-unit/1790000000000000000"
    started = {
        "timestamp": T0,
        "repos": {"kubernetes/test-infra": "master:abc,123:def"},
        "repo-commit": "def",
        "metadata": {"from-started": "yes"},
    }
    finished = {
        "timestamp": T0 + 100,
        "passed": False,
        "result": "FAILURE",
        "revision": "def",
        "metadata": {
            "repo": "kubernetes/test-infra",
            "repos": {"kubernetes/test-infra": "master:abc,123:def"},
            "repo-commit": "def",
            "pod": "0b1c",
        },
    }
    assert row(started, finished, path=path, prefix="pr:") == {
        "path": path,
        "job": "pr:pull-test-infra-unit",
        "number": 1790000000000000000,
        "started": T0,
        "finished": T0 + 100,
        "elapsed": 100,
        "passed": False,
        "result": "FAILURE",
        "repo_commit": "def",
        "repos": '{"kubernetes/test-infra": "master:abc,123:def"}',
        "metadata": [
            {"key": "pod", "value": "0b1c"},
            {"key": "repo", "value": "kubernetes/test-infra"},
            {"key": "repo-commit", "value": "def"},
            {"key": "repos", "value": '{"kubernetes/test-infra": "master:abc,123:def"}'},
        ],
        **empty_tests(),
    }


def test_empty_build_only_path_job_and_tests():
    assert row() == {
        "path": PATH,
        "job": "ci-kubernetes-e2e-gce",
        "number": 1234,
        **empty_tests(),
    }


def test_started_only_row():
    assert row({"timestamp": T0, "node": "n1"}) == {
        "path": PATH,
        "job": "ci-kubernetes-e2e-gce",
        "number": 1234,
        "started": T0,
        "executor": "n1",
        **empty_tests(),
    }


# --- passed / result -------------------------------------------------------


def test_passed_true_only_gives_success():
    r = row(finished={"timestamp": T0, "passed": True})
    assert (r["passed"], r["result"]) == (True, "SUCCESS")


def test_passed_false_only_gives_failure():
    r = row(finished={"timestamp": T0, "passed": False})
    assert (r["passed"], r["result"]) == (False, "FAILURE")


def test_result_wins_over_passed():
    r = row(finished={"timestamp": T0, "result": "FAILURE", "passed": True})
    assert (r["passed"], r["result"]) == (False, "FAILURE")
    r = row(finished={"timestamp": T0, "result": "SUCCESS", "passed": False})
    assert (r["passed"], r["result"]) == (True, "SUCCESS")


def test_result_not_success_is_not_passed():
    r = row(finished={"timestamp": T0, "result": "ABORTED"})
    assert (r["passed"], r["result"]) == (False, "ABORTED")


def test_no_result_and_non_bool_passed_leaves_both_out():
    r = row(finished={"timestamp": T0, "passed": "true"})
    assert "passed" not in r and "result" not in r


# --- metadata --------------------------------------------------------------


def test_metadata_from_finished_even_if_started_has_one():
    r = row({"timestamp": T0, "metadata": {"s": "1"}}, {"timestamp": T0, "metadata": {"f": "2"}})
    assert r["metadata"] == [{"key": "f", "value": "2"}]


def test_metadata_from_started_when_finished_lacks_key():
    r = row({"timestamp": T0, "metadata": {"s": "1"}}, {"timestamp": T0})
    assert r["metadata"] == [{"key": "s", "value": "1"}]


def test_metadata_from_started_when_no_finished():
    r = row({"timestamp": T0, "metadata": {"s": "1"}})
    assert r["metadata"] == [{"key": "s", "value": "1"}]


def test_metadata_empty_repo_dropped_nonempty_kept():
    r = row(finished={"timestamp": T0, "metadata": {"repo": "", "x": "y"}})
    assert r["metadata"] == [{"key": "x", "value": "y"}]
    r = row(finished={"timestamp": T0, "metadata": {"repo": "k8s.io/kubernetes"}})
    assert r["metadata"] == [{"key": "repo", "value": "k8s.io/kubernetes"}]


def test_metadata_versions_dropped_when_equal_to_finished_version():
    finished = {
        "timestamp": T0,
        "version": "v1",
        "metadata": {"job-version": "v1", "version": "v1", "k": "v"},
    }
    assert row(finished=finished)["metadata"] == [{"key": "k", "value": "v"}]


def test_metadata_versions_kept_when_different_from_finished_version():
    finished = {
        "timestamp": T0,
        "version": "v1",
        "metadata": {"job-version": "v2", "version": "v3"},
    }
    assert row(finished=finished)["metadata"] == [
        {"key": "job-version", "value": "v2"},
        {"key": "version", "value": "v3"},
    ]


def test_metadata_non_string_values_json_encoded_default_separators():
    finished = {
        "timestamp": T0,
        "metadata": {"obj": {"a": [1, 2]}, "n": 3, "flag": True, "none": None, "s": "plain"},
    }
    assert row(finished=finished)["metadata"] == [
        {"key": "flag", "value": "true"},
        {"key": "n", "value": "3"},
        {"key": "none", "value": "null"},
        {"key": "obj", "value": '{"a": [1, 2]}'},
        {"key": "s", "value": "plain"},
    ]


def test_metadata_sorted_by_key():
    finished = {"timestamp": T0, "metadata": {"zeta": "1", "Alpha": "2", "beta": "3", "alpha": "4"}}
    assert [p["key"] for p in row(finished=finished)["metadata"]] == ["Alpha", "alpha", "beta", "zeta"]


def test_metadata_repos_becomes_row_repos_when_started_has_none():
    finished = {"timestamp": T0, "metadata": {"repos": {"org/repo": "main:abc", "org/other": "main"}}}
    r = row({"timestamp": T0}, finished)
    assert r["repos"] == '{"org/repo": "main:abc", "org/other": "main"}'
    assert r["metadata"] == [{"key": "repos", "value": '{"org/repo": "main:abc", "org/other": "main"}'}]


def test_metadata_repos_does_not_override_started_repos():
    started = {"timestamp": T0, "repos": {"from": "started"}}
    finished = {"timestamp": T0, "metadata": {"repos": {"from": "metadata"}}}
    assert row(started, finished)["repos"] == '{"from": "started"}'


def test_metadata_string_repos_not_used_as_row_repos():
    finished = {"timestamp": T0, "metadata": {"repos": "org/repo=main"}}
    r = row({"timestamp": T0}, finished)
    assert "repos" not in r
    assert r["metadata"] == [{"key": "repos", "value": "org/repo=main"}]


def test_no_metadata_anywhere_is_absent():
    assert "metadata" not in row({"timestamp": T0}, {"timestamp": T0})


# --- repos / repo_commit ---------------------------------------------------


def test_repos_default_separators_and_key_order_preserved():
    started = {"timestamp": T0, "repos": {"z/z": "main:1", "a/a": "main:2", "m/m": ["x", 1]}}
    assert row(started)["repos"] == '{"z/z": "main:1", "a/a": "main:2", "m/m": ["x", 1]}'


def test_repo_commit_prefers_repo_commit():
    r = row({"timestamp": T0, "repo-commit": "abc", "repo-version": "v1+def"})
    assert r["repo_commit"] == "abc"


def test_repo_commit_falls_back_to_repo_version():
    r = row({"timestamp": T0, "repo-version": "v1+def"})
    assert r["repo_commit"] == "v1+def"


def test_repo_commit_absent_when_neither():
    assert "repo_commit" not in row({"timestamp": T0})


# --- job / number ----------------------------------------------------------


def test_number_integer_folder_and_job_with_prefix():
    r = row(path="gs://bucket/logs/my-job/42", prefix="ext:")
    assert (r["job"], r["number"]) == ("ext:my-job", 42)
    assert type(r["number"]) is int


def test_number_absent_for_timestamp_style_folder():
    r = row(path="gs://bucket/logs/my-job/20250101-120000")
    assert r["job"] == "my-job"
    assert "number" not in r


def test_number_absent_for_latest_folder():
    r = row(path="gs://bucket/logs/my-job/latest", prefix="pr:")
    assert r["job"] == "pr:my-job"
    assert "number" not in r


# --- timestamps / elapsed --------------------------------------------------


def test_elapsed_when_both_set():
    r = row({"timestamp": T0}, {"timestamp": T0 + 1234})
    assert (r["started"], r["finished"], r["elapsed"]) == (T0, T0 + 1234, 1234)


def test_elapsed_absent_without_finished():
    r = row({"timestamp": T0})
    assert r["started"] == T0
    assert "finished" not in r and "elapsed" not in r


def test_elapsed_absent_without_started():
    r = row(finished={"timestamp": T0})
    assert r["finished"] == T0
    assert "started" not in r and "elapsed" not in r


def test_string_timestamps_accepted():
    problems = RowProblems()
    r = row({"timestamp": "1700000000"}, {"timestamp": "1700000060"}, problems=problems)
    assert (r["started"], r["finished"], r["elapsed"]) == (T0, T0 + 60, 60)
    assert problems.notes == []


def test_missing_timestamp_left_out_and_noted():
    problems = RowProblems()
    r = row({"node": "n1"}, {"timestamp": T0, "result": "SUCCESS"}, problems=problems)
    assert "started" not in r and "elapsed" not in r
    assert r["finished"] == T0
    assert r["executor"] == "n1"
    assert len(problems.notes) == 1
    assert "started" in problems.notes[0]


def test_garbage_timestamp_left_out_and_noted():
    problems = RowProblems()
    r = row({"timestamp": T0}, {"timestamp": "abc", "result": "SUCCESS"}, problems=problems)
    assert r["started"] == T0
    assert "finished" not in r and "elapsed" not in r
    assert (r["passed"], r["result"]) == (True, "SUCCESS")
    assert len(problems.notes) == 1
    assert "finished" in problems.notes[0]


def test_test_counts_always_present_and_counted():
    junit = [
        [{"name": "a", "time": 0.0, "failed": True, "failure_text": "x"}],
        [],
        [{"name": "b", "time": 1.0}, {"name": "c", "time": 1.0, "failed": True, "failure_text": "y"}],
    ]
    r = row(junit=junit)
    assert r["tests_run"] == 3
    assert r["tests_failed"] == 2
    assert [t["name"] for t in r["test"]] == ["a", "b", "c"]


# --- row_json --------------------------------------------------------------


def test_row_json_exact_line():
    r = {
        "path": "gs://b/logs/j/7",
        "job": "j",
        "number": 7,
        "test": [{"name": "caf\u00e9 \u65e5", "time": 1.5}],
        "tests_run": 1,
        "tests_failed": 0,
        "metadata": [{"key": "k", "value": "v"}],
    }
    expected = (
        '{"job": "j", "metadata": [{"key": "k", "value": "v"}], "number": 7, '
        '"path": "gs://b/logs/j/7", "test": [{"name": "caf\\u00e9 \\u65e5", "time": 1.5}], '
        '"tests_failed": 0, "tests_run": 1}'
    )
    line = row_json(r)
    assert line == expected
    assert "\n" not in line
    assert json.loads(line) == r


def test_row_json_of_built_row():
    r = build_row("gs://b/logs/job/3", "", {"timestamp": 10}, {"timestamp": 15, "passed": True}, [], None)
    assert row_json(r) == (
        '{"elapsed": 5, "finished": 15, "job": "job", "number": 3, "passed": true, '
        '"path": "gs://b/logs/job/3", "result": "SUCCESS", "started": 10, "test": [], '
        '"tests_failed": 0, "tests_run": 0}'
    )
