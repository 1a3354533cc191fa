"""A realistic Prow-like artifact tree, so a first run needs no network.

CI jobs (sequential with latest-build.txt, and listed), a PR bucket with its
`directory/` indirection, two weeks of builds ending now, and the oddities
Kettle met in real buckets: bootstrap and podutils metadata, unfinished and
abandoned builds, malformed/truncated/empty/non-UTF-8 JUnit, nested suites,
errors, skips, repeats, system-out bloat, builds 12 and 123 side by side.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

DAY = 86400

CI_BUCKET = "kubernetes-jenkins/logs"
PR_BUCKET = "kubernetes-jenkins/pr-logs"
JUJU_BUCKET = "canonical-kubernetes-tests/logs"

CI_JOBS = ["ci-kubernetes-e2e-gce", "ci-kubernetes-unit", "ci-kubernetes-node-e2e", "ci-kubernetes-verify"]
EXCLUDED_CI_JOBS = ["ci-kubernetes-e2e-gce-canary", "maintenance-ci-testgrid-config-upload"]
PR_JOBS = ["pull-kubernetes-unit", "pull-kubernetes-e2e-gce", "pull-kubernetes-verify"]
JUJU_JOBS = ["conformance-juju-aws"]


def _write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())


def _junit(rng: random.Random, suite: str, n: int, fail_rate: float) -> str:
    cases = []
    for i in range(n):
        name = f"[sig-{rng.choice(['node', 'network', 'apps', 'storage'])}] {suite} test {i}"
        t = f"{rng.uniform(0.01, 120):.3f}"
        roll = rng.random()
        if roll < 0.35:
            cases.append(f'<testcase name="{name}" classname="Kubernetes e2e suite" time="0"><skipped/></testcase>')
        elif roll < 0.35 + fail_rate:
            cases.append(
                f'<testcase name="{name}" classname="Kubernetes e2e suite" time="{t}">'
                f'<failure message="Timed out after 300s.">test/e2e/framework/util.go:{rng.randint(10, 999)}\n'
                f"Expected pod to be Running, got Pending</failure>"
                f"<system-out>{'log line ' * 50}</system-out></testcase>"
            )
        else:
            cases.append(f'<testcase name="{name}" classname="Kubernetes e2e suite" time="{t}"></testcase>')
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<testsuite name="{suite}" tests="{n}" failures="0" time="1">' + "".join(cases) + "</testsuite>"
    )


ODD_JUNIT = {
    "junit_nested.xml": (
        '<testsuites><testsuite name="outer"><testcase name="a" time="1.5"/>'
        '<testsuite name="inner"><testcase name="b" time=""/><testcase time="2"/></testsuite></testsuite>'
        '<testsuite><testcase name="nameless suite case" time="0.25"/></testsuite></testsuites>'
    ),
    "junit_errors.xml": (
        '<testsuite name="s"><testcase name="errored" time="3"><error message="panic: boom">goroutine 1</error></testcase>'
        '<testcase name="bare failure" time="1"><failure/></testcase>'
        '<testcase name="only body"><failure>just a body</failure></testcase>'
        '<testcase name="flaky #1" time="1"/><testcase name="flaky #2" time="1"><failure message="m"/></testcase>'
        '<testcase name="skipped failure"><failure message="x"/><skipped/></testcase>'
        "<system-out>lots of output</system-out></testsuite>"
    ),
    "junit_malformed.xml": '<testsuite name="s"><testcase name="a"></testsuite>',
    "junit_truncated.xml": '<?xml version="1.0"?><testsuite name="s"><testcase name="a" time="1"/><testcase na',
    "junit_empty.xml": "",
}


def write_sample(root: Path, now: float | None = None, seed: int = 7, days: int = 14) -> dict:
    """Write the sample tree under `root`; returns counts of what was written."""
    rng = random.Random(seed)
    now = float(now if now is not None else time.time())
    root = Path(root)
    counts = {"finished": 0, "unfinished": 0, "given_up": 0, "excluded": 0}

    def build(folder: Path, start: float, duration: float, style: str, junits: dict[str, str | bytes], finished=True):
        if style == "bootstrap":
            started = {"timestamp": int(start), "node": f"agent-{rng.randint(1, 40)}", "pull": "",
                       "repos": {"k8s.io/kubernetes": "master", "k8s.io/release": "master"},
                       "repo-version": f"v1.32.0-alpha.{rng.randint(1, 9)}+{rng.getrandbits(40):010x}",
                       "version": "v1.32.0"}
        else:
            started = {"timestamp": int(start), "repos": {"kubernetes/kubernetes": f"master:{rng.getrandbits(40):010x}"},
                       "repo-commit": f"{rng.getrandbits(160):040x}",
                       "metadata": {"pod": f"{rng.getrandbits(64):016x}"}}
        _write(folder / "started.json", json.dumps(started))
        if finished:
            passed = rng.random() > 0.2
            if style == "bootstrap":
                fin = {"timestamp": int(start + duration), "passed": passed, "result": "SUCCESS" if passed else "FAILURE",
                       "job-version": "v1.32.0", "version": "v1.32.0",
                       "metadata": {"repo": "", "job-version": "v1.32.0", "infra-commit": "abc123",
                                    "repos": {"k8s.io/kubernetes": "master"}, "retries": 2}}
            elif style == "passed-only":
                fin = {"timestamp": int(start + duration), "passed": passed}
            else:
                fin = {"timestamp": int(start + duration), "passed": passed, "result": "SUCCESS" if passed else "FAILURE",
                       "revision": f"{rng.getrandbits(40):010x}", "metadata": {"pod": "p", "é": ["ünïcode", 1]}}
            _write(folder / "finished.json", json.dumps(fin))
        for name, body in junits.items():
            _write(folder / "artifacts" / name, body)

    def standard_junits(job: str) -> dict[str, str]:
        if "verify" in job:
            return {"junit_verify.xml": _junit(rng, "verify", 12, 0.05)}
        return {f"junit_{i:02d}.xml": _junit(rng, job, rng.randint(20, 60), 0.03) for i in range(1, 3)}

    # CI jobs: sequential, with latest-build.txt
    for job in CI_JOBS + EXCLUDED_CI_JOBS:
        n_builds = 30 if job in CI_JOBS else 3
        latest = n_builds
        for k in range(n_builds):
            number = 1 + k
            start = now - days * DAY + (k + 0.5) * (days * DAY / n_builds) - 3600
            folder = root / CI_BUCKET / job / str(number)
            style = ["bootstrap", "podutils", "passed-only"][k % 3]
            last = k == n_builds - 1
            build(folder, start, rng.uniform(300, 3000), style, standard_junits(job), finished=not last)
            if job in EXCLUDED_CI_JOBS:
                counts["excluded"] += 1
            elif last:
                counts["unfinished"] += 1
            else:
                counts["finished"] += 1
        _write(root / CI_BUCKET / job / "latest-build.txt", str(latest))

    # A job whose builds 12 and 123 sit side by side, JUnit oddities, and an abandoned build.
    odd = root / CI_BUCKET / "ci-kubernetes-odd"
    build(odd / "12", now - 2 * DAY, 600, "bootstrap", {"junit_12.xml": _junit(rng, "twelve", 5, 0.0)})
    build(odd / "123", now - 2 * DAY + 60, 600, "podutils", {
        **ODD_JUNIT,
        "junit_badbytes.xml": b'<testsuite><testcase name="caf\xe9 \xff" time="1"><failure message="bad \xfe byte"/></testcase></testsuite>',
        "junit_in_subdir/junit_1.xml": _junit(rng, "ignored", 3, 0.0),
        "subdir/junit_2.xml": _junit(rng, "ignored", 3, 0.0),
        "not-junit.xml": "<testsuite><testcase name='ignored'/></testsuite>",
    })
    build(odd / "124", now - 9 * DAY, 0, "podutils", {}, finished=False)
    _write(odd / "latest-build.txt", "124")
    counts["finished"] += 2
    counts["given_up"] += 1

    # PR bucket: builds under pull/, found through directory/<job>/<build>.txt
    for job in PR_JOBS:
        for k in range(25):
            pr = 120000 + rng.randint(0, 40)
            number = 5000 + k
            start = now - days * DAY + k * (days * DAY / 25)
            folder = root / PR_BUCKET / "pull" / "kubernetes_kubernetes" / str(pr) / job / str(number)
            build(folder, start, rng.uniform(300, 3000), "podutils", standard_junits(job))
            _write(root / PR_BUCKET / "directory" / job / f"{number}.txt",
                   f"gs://{PR_BUCKET}/pull/kubernetes_kubernetes/{pr}/{job}/{number}\n")
            counts["finished"] += 1
        _write(root / PR_BUCKET / "directory" / job / "latest-build.txt", str(5024))

    # A listed (non-sequential) bucket with timestamped build names; its last build finished a
    # minute ago, so the day the sample ends on has data, like every day before it.
    for job in JUJU_JOBS:
        for k in range(20):
            start = now - days * DAY + (k + 1) * (days * DAY / 20) - 960
            name = time.strftime("%Y%m%d-%H%M%S", time.gmtime(start))
            build(root / JUJU_BUCKET / job / name, start, 900, "passed-only",
                  {"junit_conformance.xml": _junit(rng, "conformance", 30, 0.02)})
            counts["finished"] += 1
    return counts
