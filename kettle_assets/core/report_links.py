"""Where each page of the CI report lives, so the report, the alerts and the asset metadata link alike.

Paths are relative to the report's root folder (`$KETTLE_HOME/report/`); `page_url` joins
them to the root's public address (`KETTLE_REPORT_URL`, default: the folder as a file:// URL).
"""

from __future__ import annotations

import hashlib
import re
from urllib.parse import quote

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
SLUG_MAX = 80


def slug(name: str) -> str:
    """A file name for a job, test or cluster: readable, short, and unique per name.

    Different names that clean up alike (case, punctuation, length) differ by a short hash.
    """
    cleaned = _UNSAFE.sub("-", name).strip("-.")[:SLUG_MAX] or "x"
    if cleaned == name:
        return cleaned
    return f"{cleaned}-{hashlib.sha1(name.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


INDEX = "index.html"
JOBS = "jobs.html"
FLAKES = "flakes.html"
CLUSTERS = "clusters.html"


def job_page(job: str) -> str:
    """One job: health over time and its grid of recent builds by tests."""
    return f"jobs/{slug(job)}.html"


def test_page(test_name: str) -> str:
    """One test: its recent history across jobs."""
    return f"tests/{slug(test_name)}.html"


def cluster_page(cluster_id: str) -> str:
    """One failure cluster: its text, tests, jobs and builds."""
    return f"clusters/{slug(cluster_id)}.html"


def page_url(root_url: str, page: str) -> str:
    """The address of a page under the report's root address."""
    return root_url.rstrip("/") + "/" + quote(page)


def paged(page: str, number: int) -> str:
    """Page `number` (from 1) of a paged list: the first is `page` itself, then `<stem>-p<n>.html`."""
    if number <= 1:
        return page
    stem, _, ext = page.rpartition(".")
    return f"{stem}-p{number}.{ext}"
