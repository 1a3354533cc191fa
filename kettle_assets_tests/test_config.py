"""buckets.yaml loading and validation.

Every rule of `core/config.py` fails on load with a BucketConfigError whose message
names the offending entry (its URL) and the rule it breaks.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from kettle_assets.core.config import BucketConfigError, load_buckets, parse_buckets

SHIPPED = Path(__file__).resolve().parents[1] / "buckets.yaml"


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "buckets.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def assert_rule(exc: BaseException, url: str | None, *words: str) -> None:
    """The message names the entry (url) and the rule (any of `words`, case-insensitive)."""
    msg = str(exc)
    if url is not None:
        assert url in msg, f"entry {url!r} not named in: {msg}"
    if words:
        low = msg.lower()
        assert any(w.lower() in low for w in words), f"none of {words} in: {msg}"


# --- the shipped file -------------------------------------------------------


def test_shipped_buckets_yaml_loads():
    buckets = load_buckets(SHIPPED)
    assert len(buckets) == 3
    urls = [b.url for b in buckets]
    assert urls == [
        "gs://kubernetes-jenkins/logs/",
        "gs://kubernetes-jenkins/pr-logs/",
        "gs://canonical-kubernetes-tests/logs/",
    ]
    prs = [b for b in buckets if b.pr]
    assert [b.url for b in prs] == ["gs://kubernetes-jenkins/pr-logs/"]
    assert prs[0].prefix == "pr:"
    by_url = {b.url: b for b in buckets}
    assert by_url["gs://kubernetes-jenkins/logs/"].prefix == ""
    assert by_url["gs://canonical-kubernetes-tests/logs/"].prefix == "juju:"
    assert by_url["gs://canonical-kubernetes-tests/logs/"].sequential is False
    assert by_url["gs://kubernetes-jenkins/logs/"].sequential is True


def test_shipped_exclude_jobs_use_re_search():
    logs = load_buckets(SHIPPED).by_key("kubernetes-jenkins/logs")
    # "-canary$" anchors at the end only
    assert logs.excludes("ci-foo-canary")
    assert not logs.excludes("ci-canary-foo")
    # "^maintenance-" anchors at the start only
    assert logs.excludes("maintenance-all-daily")
    assert not logs.excludes("ci-maintenance-all")
    # re.search, not re.match/fullmatch: an unanchored pattern matches anywhere
    b = parse_buckets({"gs://bkt/logs/": {"prefix": "", "exclude_jobs": ["flaky"]}}).buckets[0]
    assert b.excludes("ci-flaky-e2e")
    assert not b.excludes("ci-stable-e2e")


def test_buckets_without_exclude_jobs_exclude_nothing():
    for b in load_buckets(SHIPPED):
        if not b.exclude_jobs:
            assert not b.excludes("ci-foo-canary")
            assert not b.excludes("anything")


# --- defaults and normalisation ------------------------------------------------


def test_defaults_sequential_true_pr_false():
    b = parse_buckets({"gs://bkt/logs/": {"prefix": ""}}).buckets[0]
    assert b.sequential is True
    assert b.pr is False
    assert tuple(b.exclude_jobs) == ()


def test_explicit_booleans_are_kept():
    b = parse_buckets({"gs://bkt/logs/": {"prefix": "x:", "sequential": False, "pr": True}}).buckets[0]
    assert b.sequential is False
    assert b.pr is True


def test_trailing_slash_is_added(tmp_path):
    path = write_yaml(
        tmp_path,
        """
        gs://bkt/logs:
          prefix: ""
        gs://ccc/pr-logs/:
          prefix: "pr:"
          pr: true
        """,
    )
    buckets = load_buckets(path)
    assert [b.url for b in buckets] == ["gs://bkt/logs/", "gs://ccc/pr-logs/"]


def test_loaded_from_yaml_file(tmp_path):
    path = write_yaml(
        tmp_path,
        """
        gs://ci-logs/logs/:
          contact: "me"
          prefix: "ext:"
          exclude_jobs: ["-canary$"]
        """,
    )
    (b,) = list(load_buckets(path))
    assert b.url == "gs://ci-logs/logs/"
    assert b.prefix == "ext:"
    assert b.contact == "me"
    assert b.excludes("a-canary") and not b.excludes("a-canary-b")


# --- every rule fails, naming the entry ----------------------------------------


def test_missing_prefix():
    with pytest.raises(BucketConfigError) as ei:
        parse_buckets({"gs://bkt/logs/": {"contact": "me"}})
    assert_rule(ei.value, "gs://bkt/logs/", "prefix")


@pytest.mark.parametrize("prefix", ["pr", "pr:x", ":pr", "ext;"])
def test_prefix_must_end_with_colon(prefix):
    with pytest.raises(BucketConfigError) as ei:
        parse_buckets({"gs://bkt/logs/": {"prefix": prefix}})
    assert_rule(ei.value, "gs://bkt/logs/", "':'", "colon")
    assert_rule(ei.value, None, "prefix")


def test_prefix_must_be_a_string():
    with pytest.raises(BucketConfigError) as ei:
        parse_buckets({"gs://bkt/logs/": {"prefix": 3}})
    assert_rule(ei.value, "gs://bkt/logs/", "prefix")


def test_duplicate_prefix():
    with pytest.raises(BucketConfigError) as ei:
        parse_buckets(
            {
                "gs://aaa/logs/": {"prefix": "ext:"},
                "gs://bkt/logs/": {"prefix": "ext:"},
            }
        )
    # the second entry is the bad one
    assert_rule(ei.value, "gs://bkt/logs/", "unique", "already", "duplicate")
    assert_rule(ei.value, None, "prefix")


def test_two_buckets_with_empty_prefix():
    with pytest.raises(BucketConfigError) as ei:
        parse_buckets(
            {
                "gs://aaa/logs/": {"prefix": ""},
                "gs://bkt/logs/": {"prefix": ""},
            }
        )
    assert_rule(ei.value, "gs://bkt/logs/", "empty prefix", "only one", "unique", "already")


def test_one_empty_prefix_is_fine():
    buckets = parse_buckets({"gs://aaa/logs/": {"prefix": ""}, "gs://bkt/logs/": {"prefix": "b:"}})
    assert [b.prefix for b in buckets] == ["", "b:"]


@pytest.mark.parametrize("key", ["sequential", "pr"])
@pytest.mark.parametrize("value", ["true", "yes", 1, 0, None, []])
def test_non_bool_flags(key, value):
    with pytest.raises(BucketConfigError) as ei:
        parse_buckets({"gs://bkt/logs/": {"prefix": "", key: value}})
    assert_rule(ei.value, "gs://bkt/logs/", key)
    assert_rule(ei.value, None, "true or false", "bool")


def test_non_bool_flag_from_yaml(tmp_path):
    path = write_yaml(
        tmp_path,
        """
        gs://bkt/logs/:
          prefix: ""
          sequential: "false"
        """,
    )
    with pytest.raises(BucketConfigError) as ei:
        load_buckets(path)
    assert_rule(ei.value, "gs://bkt/logs/", "sequential")


def test_unknown_key():
    with pytest.raises(BucketConfigError) as ei:
        parse_buckets({"gs://bkt/logs/": {"prefix": "", "exclude_job": ["x"]}})
    assert_rule(ei.value, "gs://bkt/logs/", "exclude_job")
    assert_rule(ei.value, None, "unknown", "not allowed", "allowed")


def test_bad_regex():
    with pytest.raises(BucketConfigError) as ei:
        parse_buckets({"gs://bkt/logs/": {"prefix": "", "exclude_jobs": ["ok$", "[unclosed"]}})
    assert_rule(ei.value, "gs://bkt/logs/", "[unclosed")
    assert_rule(ei.value, None, "regex", "exclude_jobs")


def test_exclude_jobs_must_be_a_list_of_strings():
    for bad in ("-canary$", [1], {"a": "b"}):
        with pytest.raises(BucketConfigError) as ei:
            parse_buckets({"gs://bkt/logs/": {"prefix": "", "exclude_jobs": bad}})
        assert_rule(ei.value, "gs://bkt/logs/", "exclude_jobs")


@pytest.mark.parametrize(
    "url",
    [
        "s3://b/logs/",
        "kubernetes-jenkins/logs/",
        "https://storage.googleapis.com/b/logs/",
        "gs://",
        "gs:///logs/",
    ],
)
def test_not_a_gs_url(url):
    with pytest.raises(BucketConfigError) as ei:
        parse_buckets({url: {"prefix": ""}})
    assert_rule(ei.value, url, "gs://")


@pytest.mark.parametrize("settings", ["fejta", ["prefix", ""], None, 3])
def test_non_mapping_settings(settings):
    with pytest.raises(BucketConfigError) as ei:
        parse_buckets({"gs://bkt/logs/": settings})
    assert_rule(ei.value, "gs://bkt/logs/", "mapping", "settings")


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n"])
def test_empty_file(tmp_path, text):
    path = tmp_path / "buckets.yaml"
    path.write_text(text)
    with pytest.raises(BucketConfigError) as ei:
        load_buckets(path)
    assert_rule(ei.value, None, "empty", "mapping")


@pytest.mark.parametrize("data", [[], ["gs://bkt/logs/"], "gs://bkt/logs/", {}])
def test_top_level_not_a_mapping(data):
    with pytest.raises(BucketConfigError):
        parse_buckets(data)


def test_invalid_yaml(tmp_path):
    path = write_yaml(tmp_path, "gs://bkt/logs/:\n  prefix: [unclosed\n")
    with pytest.raises(BucketConfigError) as ei:
        load_buckets(path)
    assert_rule(ei.value, None, "yaml")
    assert str(path) in str(ei.value)


def test_missing_file(tmp_path):
    path = tmp_path / "nope" / "buckets.yaml"
    with pytest.raises(BucketConfigError) as ei:
        load_buckets(path)
    assert str(path) in str(ei.value)


def test_bad_entry_in_file_names_the_entry_and_the_file(tmp_path):
    path = write_yaml(
        tmp_path,
        """
        gs://good/logs/:
          prefix: ""
        gs://bad/logs/:
          prefix: "nocolon"
        """,
    )
    with pytest.raises(BucketConfigError) as ei:
        load_buckets(path)
    assert_rule(ei.value, "gs://bad/logs/", "prefix")
    assert "gs://good/logs/" not in str(ei.value)


def test_error_is_a_value_error():
    # callers may catch ValueError generically
    assert issubclass(BucketConfigError, ValueError)


# --- owner_of --------------------------------------------------------------------


def test_owner_of_first_bucket_in_file_order():
    broad_first = parse_buckets(
        {
            "gs://bkt/logs/": {"prefix": ""},
            "gs://bkt/logs/special/": {"prefix": "sp:"},
        }
    )
    path = "gs://bkt/logs/special/job/12"
    assert broad_first.owner_of(path).url == "gs://bkt/logs/"

    narrow_first = parse_buckets(
        {
            "gs://bkt/logs/special/": {"prefix": "sp:"},
            "gs://bkt/logs/": {"prefix": ""},
        }
    )
    assert narrow_first.owner_of(path).url == "gs://bkt/logs/special/"
    assert narrow_first.owner_of("gs://bkt/logs/other/3").url == "gs://bkt/logs/"


def test_owner_of_no_match():
    buckets = load_buckets(SHIPPED)
    assert buckets.owner_of("gs://elsewhere/logs/job/1") is None
    # a URL prefix is a whole folder: logs/ does not own logs-other/
    assert buckets.owner_of("gs://kubernetes-jenkins/logs-other/job/1") is None
    assert buckets.owner_of("gs://kubernetes-jenkins/pr-logs/pull/o_r/1/j/2").prefix == "pr:"
    assert buckets.owner_of("gs://kubernetes-jenkins/logs/ci-x/7").prefix == ""
    assert buckets.owner_of("gs://canonical-kubernetes-tests/logs/j/1").prefix == "juju:"


def test_owner_of_with_normalised_url():
    buckets = parse_buckets({"gs://bkt/logs": {"prefix": ""}})
    assert buckets.owner_of("gs://bkt/logs/job/1") is not None
    assert buckets.owner_of("gs://bkt/logsx/job/1") is None


def test_exclude_regex_matches_in_the_middle():
    b = parse_buckets({"gs://bkt/logs/": {"prefix": "", "exclude_jobs": [r"e2e-\d+"]}}).buckets[0]
    assert b.excludes("ci-e2e-123-gce")
    assert not b.excludes("ci-e2e-gce")


def test_same_url_twice_after_normalisation():
    with pytest.raises(BucketConfigError) as ei:
        parse_buckets({"gs://bkt/logs": {"prefix": ""}, "gs://bkt/logs/": {"prefix": "x:"}})
    assert_rule(ei.value, "gs://bkt/logs/", "twice", "duplicate", "already")
