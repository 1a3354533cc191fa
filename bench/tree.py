"""A large Prow-like artifact tree for the benchmark.

Jobs are fixed; history grows with `scale` (more days of builds per job), which is how
a real bucket grows. JUnit files are Kubernetes-sized (e2e files of thousands of mostly
skipped cases, unit files of hundreds of passing ones); a pool of distinct files is
hard-linked into builds, so a 4x tree does not need 4x the disk, while every build
still reads and parses its own file.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

CI_BUCKET = "kubernetes-jenkins/logs"
PR_BUCKET = "kubernetes-jenkins/pr-logs"
DAY = 86400
SIGS = ["node", "network", "storage", "apps", "api-machinery", "cli", "auth", "scheduling", "instrumentation"]


def e2e_junit(rng: random.Random, cases: int) -> bytes:
    parts = ['<?xml version="1.0" encoding="UTF-8"?>\n<testsuite name="Kubernetes e2e suite" tests="%d">' % cases]
    for i in range(cases):
        sig = rng.choice(SIGS)
        name = (f"[sig-{sig}] {sig.title()} feature {i % 97} [Driver: local][Testpattern: Pre-provisioned PV "
                f"(default fs)] subPath should support existing directory {i}")
        roll = rng.random()
        if roll < 0.93:
            parts.append(f'<testcase name="{name}" classname="Kubernetes e2e suite" time="0"><skipped></skipped></testcase>')
        elif roll < 0.995:
            parts.append(f'<testcase name="{name}" classname="Kubernetes e2e suite" time="{rng.uniform(1, 300):.3f}"></testcase>')
        else:
            parts.append(
                f'<testcase name="{name}" classname="Kubernetes e2e suite" time="{rng.uniform(1, 300):.3f}">'
                f'<failure message="Timed out after 300.000s. Expected &lt;bool&gt;: false to be true" type="Failure">'
                f"test/e2e/storage/testsuites/subpath.go:{rng.randint(100, 999)}\n" + "stack line\n" * 20 + "</failure>"
                f"<system-out>{'I1122 01:02:03.456789 log line of the test run' * 40}</system-out></testcase>"
            )
    parts.append("</testsuite>")
    return "".join(parts).encode()


def unit_junit(rng: random.Random, cases: int) -> bytes:
    parts = ["<testsuites>"]
    for s in range(cases // 50):
        parts.append(f'<testsuite name="k8s.io/kubernetes/pkg/controller/pkg{s}" tests="50">')
        for i in range(50):
            parts.append(f'<testcase classname="pkg{s}" name="TestController{i}/case_{i % 7}" time="{rng.uniform(0, 2):.2f}"></testcase>')
        parts.append("</testsuite>")
    parts.append("</testsuites>")
    return "".join(parts).encode()


def _write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())


def junit_pool(root: Path) -> Path:
    """Distinct JUnit files, beside the tree (same file system, for hard links), not in it."""
    return Path(root).parent / f"{Path(root).name}.junit-pool"


class TreeWriter:
    """Writes builds; keeps a pool of JUnit files to hard-link from."""

    def __init__(self, root: Path, seed: int = 11, pool_size: int = 24):
        self.root = Path(root)
        self.rng = random.Random(seed)
        pool = junit_pool(self.root)
        self.e2e, self.unit = [], []
        for i in range(pool_size):
            e2e, unit = pool / f"e2e-{i}.xml", pool / f"unit-{i}.xml"
            if not e2e.exists():
                _write(e2e, e2e_junit(random.Random(seed * 1000 + i), 3000 + 100 * i))
                _write(unit, unit_junit(random.Random(seed * 2000 + i), 300 + 10 * i))
            self.e2e.append(e2e)
            self.unit.append(unit)
        self.junit_bytes = 0

    def build(self, folder: Path, start: float, e2e: bool) -> None:
        _write(folder / "started.json", json.dumps({
            "timestamp": int(start), "repos": {"kubernetes/kubernetes": "master"},
            "repo-commit": f"{self.rng.getrandbits(160):040x}", "metadata": {"pod": f"{self.rng.getrandbits(64):016x}"},
        }))
        passed = self.rng.random() > 0.15
        _write(folder / "finished.json", json.dumps({
            "timestamp": int(start + 1800), "passed": passed, "result": "SUCCESS" if passed else "FAILURE",
            "metadata": {"revision": "v1.33.0"},
        }))
        source = self.rng.choice(self.e2e if e2e else self.unit)
        target = folder / "artifacts" / "junit_01.xml"
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            os.link(source, target)
        self.junit_bytes += source.stat().st_size


def write_tree(root: Path, builds: int, now: float, ci_jobs: int = 40, pr_jobs: int = 20, seed: int = 11,
               min_days: int = 7) -> dict:
    """`builds` finished builds: 70% in sequential CI jobs (latest-build.txt), 30% PR builds,
    over at least `min_days` days of history."""
    writer = TreeWriter(root, seed)
    ci_builds = int(builds * 0.7)
    pr_builds = builds - ci_builds
    per_ci = max(1, ci_builds // ci_jobs)
    per_pr = max(1, pr_builds // pr_jobs)
    span = DAY * max(min_days, per_ci // 10)  # ten builds a day per job: history grows with the tree
    for j in range(ci_jobs):
        job = f"ci-kubernetes-{'e2e' if j % 5 == 0 else 'unit'}-{j:02d}"
        for n in range(1, per_ci + 1):
            writer.build(root / CI_BUCKET / job / str(n), now - span + n * span / per_ci - 3600, e2e=j % 5 == 0)
        _write(root / CI_BUCKET / job / "latest-build.txt", str(per_ci))
    for j in range(pr_jobs):
        job = f"pull-kubernetes-{'e2e' if j % 5 == 0 else 'unit'}-{j:02d}"
        for n in range(1, per_pr + 1):
            pr = 100000 + n % 500
            folder = root / PR_BUCKET / "pull" / "kubernetes_kubernetes" / str(pr) / job / str(n)
            writer.build(folder, now - span + n * span / per_pr - 3600, e2e=j % 5 == 0)
            _write(root / PR_BUCKET / "directory" / job / f"{n}.txt", f"gs://{PR_BUCKET}/pull/kubernetes_kubernetes/{pr}/{job}/{n}")
    return {"builds": per_ci * ci_jobs + per_pr * pr_jobs, "jobs": ci_jobs + pr_jobs, "days": span // DAY,
            "junit_bytes": writer.junit_bytes}


def add_new_builds(root: Path, fraction: float, now: float, ci_jobs: int = 40, seed: int = 12) -> int:
    """Append `fraction` new builds to the CI jobs (as new latest builds), finished just now."""
    writer = TreeWriter(root, seed)
    added = 0
    jobs = sorted(p for p in (root / CI_BUCKET).iterdir() if p.is_dir())
    total = sum(int((j / "latest-build.txt").read_text()) for j in jobs)
    per_job = max(1, round(total * fraction / len(jobs)))
    for j in jobs:
        latest = int((j / "latest-build.txt").read_text())
        for n in range(latest + 1, latest + per_job + 1):
            writer.build(j / str(n), now - 3600, e2e="e2e" in j.name)
            added += 1
        _write(j / "latest-build.txt", str(latest + per_job))
    return added


BUCKETS_YAML = """\
gs://kubernetes-jenkins/logs/:
  contact: "bench"
  prefix: ""
gs://kubernetes-jenkins/pr-logs/:
  contact: "bench"
  prefix: "pr:"
  pr: true
"""
