"""Kubernetes-sized JUnit files, generated deterministically (seeded).

Three shapes seen in Kubernetes CI artifacts:
  - Ginkgo v2 e2e (`<testsuites>` root, `<properties>`, `status` attributes,
    `<skipped message=...>`), 3,000-6,000 specs of which ~95% are skipped;
  - Ginkgo v1 e2e (`<testsuite>` root, `<skipped></skipped>` or `<skipped/>`);
  - go-junit-report unit tests (`<testsuites>` of package suites, a few hundred
    mostly passing cases, a few failures and skips).
Failures carry a Ginkgo-style `message` and a multi-line body; failed and some passed
specs carry `<system-out>`/`<system-err>` blocks of a few KB; some files hold non-ASCII
text (Ginkgo's bullets, quotes) and escaped markup (`&lt;`, `&#xA;`).

`corpus()` returns [(name, bytes)]; `python bench/junit_corpus.py` prints its size.
"""

from __future__ import annotations

import random
from xml.sax.saxutils import escape, quoteattr

SIGS = ["node", "network", "storage", "apps", "api-machinery", "cli", "auth", "scheduling",
        "instrumentation", "windows", "autoscaling", "architecture"]
FEATURES = ["Pods", "Services", "DNS", "Deployment", "StatefulSet", "CSI Volumes", "In-tree Volumes",
            "ResourceQuota", "Secrets", "ConfigMap", "Networking", "Kubectl client", "Probing container"]
VERBS = ["should be submitted and removed", "should support existing directory",
         "should provide DNS for the cluster", "should serve a basic endpoint from pods",
         "should create and stop a replication controller", "should have an terminated reason",
         "should be restarted with a /healthz http liveness probe", "should mount multiple volumes",
         "should allow exec of files on the volume", "should adopt matching orphans and release non-matching pods"]
TAGS = ["[Conformance]", "[NodeConformance]", "[Serial]", "[Slow]", "[Disruptive]", "[Feature:Example]",
        "[Driver: local]", "[Testpattern: Dynamic PV (default fs)]", "[LinuxOnly]", "[Flaky]"]
PACKAGES = ["pkg/kubelet", "pkg/scheduler/framework", "pkg/controller/deployment", "pkg/apis/core/validation",
            "staging/src/k8s.io/apimachinery/pkg/util/wait", "staging/src/k8s.io/client-go/tools/cache",
            "pkg/proxy/iptables", "pkg/volume/csi", "cmd/kubeadm/app/phases/certs"]


def _spec_name(rng: random.Random, i: int, v2: bool) -> str:
    sig = rng.choice(SIGS)
    tags = " ".join(rng.sample(TAGS, rng.randint(0, 3)))
    name = f"[sig-{sig}] {rng.choice(FEATURES)} {rng.choice(VERBS)} #{i}" if rng.random() < 0.002 else \
        f"[sig-{sig}] {rng.choice(FEATURES)} {rng.choice(VERBS)} {i} {tags}".rstrip()
    return ("[It] " + name) if v2 else name


def _log_block(rng: random.Random, lines: int, fancy: bool) -> str:
    out = []
    for n in range(lines):
        ts = f"I1122 0{rng.randint(0, 9)}:{rng.randint(10, 59)}:{rng.randint(10, 59)}.{rng.randint(100000, 999999)}"
        if fancy and n % 7 == 0:
            out.append(f"{ts} STEP: Creating a pod \u2022 waiting \u201cRunning\u201d \u2714 <- {rng.random():.4f}")
        else:
            out.append(f"{ts}   {rng.randint(1000, 99999)} util.go:{rng.randint(10, 999)}] Waiting up to 5m0s "
                       f"for pod \"pod-{rng.getrandbits(32):08x}\" in namespace \"e2e-{rng.randint(1, 9999)}\" "
                       f"to be \"Succeeded or Failed\" & <status>")
    return "\n".join(out)


def _failure(rng: random.Random, v2: bool) -> tuple[str, str]:
    where = f"test/e2e/{rng.choice(SIGS)}/{rng.choice(['pods', 'util', 'service', 'volumes'])}.go:{rng.randint(50, 999)}"
    if v2:
        message = (f"[FAILED] Timed out after {rng.randint(30, 900)}.000s.\nExpected\n    <bool>: false\nto be true"
                   f"\nIn [It] at: {where} @ 11/22/25 01:{rng.randint(10, 59)}:{rng.randint(10, 59)}.{rng.randint(100, 999)}")
        body = message + "\n\nThere were additional failures detected.\n" + "\n".join(
            f"  k8s.io/kubernetes/{where.rsplit(':', 1)[0]}:{rng.randint(10, 999)} +0x{rng.getrandbits(16):x}"
            for _ in range(rng.randint(5, 25)))
    else:
        message = f"{where}\nExpected error:\n    <*errors.errorString | 0xc00{rng.getrandbits(24):06x}>: {{\n        s: \"timed out waiting for the condition\",\n    }}\n    timed out waiting for the condition\nnot to have occurred"
        body = f"/go/src/k8s.io/kubernetes/_output/local/go/src/k8s.io/kubernetes/{where}\n" + "\n".join(
            f"goroutine {rng.randint(1, 500)} [running]:\nk8s.io/kubernetes/test/e2e/framework.Fail(...)"
            for _ in range(rng.randint(3, 12)))
    return message, body


def e2e_file(rng: random.Random, cases: int, v2: bool, fancy: bool) -> bytes:
    """A Ginkgo e2e JUnit file: ~95% skipped, ~4.7% passed, ~0.3% failed (at least one)."""
    p = ['<?xml version="1.0" encoding="UTF-8"?>\n']
    if v2:
        p.append(f'  <testsuites tests="{cases}" disabled="0" errors="0" failures="1" time="{rng.uniform(900, 9000):.9f}">\n')
        p.append(f'      <testsuite name="Kubernetes e2e suite" package="/home/prow/go/src/k8s.io/kubernetes/test/e2e" '
                 f'tests="{cases}" disabled="0" skipped="{int(cases * 0.95)}" errors="0" failures="1" '
                 f'time="{rng.uniform(900, 9000):.9f}" timestamp="2025-11-22T01:02:03">\n          <properties>\n')
        for key, value in [("SuiteSucceeded", "false"), ("SuiteHasProgrammaticFocus", "false"),
                           ("SpecialSuiteFailureReason", ""), ("SuiteLabels", "[]"), ("RandomSeed", str(rng.randint(1, 10**9))),
                           ("RandomizeAllSpecs", "true"), ("LabelFilter", ""), ("FocusStrings", r"\[Conformance\]"),
                           ("SkipStrings", r"\[Serial\]|\[Disruptive\]"), ("FailOnPending", "false"), ("FailFast", "false")]:
            p.append(f'              <property name="{key}" value={quoteattr(value)}></property>\n')
        p.append("          </properties>\n")
        indent = "          "
    else:
        p.append(f'<testsuite tests="{cases}" failures="1" time="{rng.uniform(900, 9000):.4f}">\n')
        indent = "  "
    failed_at = rng.randrange(cases)
    for i in range(cases):
        name = quoteattr(_spec_name(rng, i, v2))
        roll = rng.random()
        if i != failed_at and roll < 0.95:
            if v2:
                p.append(f'{indent}<testcase name={name} classname="Kubernetes e2e suite" status="skipped" time="0">\n'
                         f'{indent}    <skipped message="skipped"></skipped>\n{indent}</testcase>\n')
            else:
                skipped = "<skipped></skipped>" if roll < 0.6 else "<skipped/>"
                p.append(f'{indent}<testcase name={name} classname="Kubernetes e2e suite" time="0">{skipped}</testcase>\n')
        elif i != failed_at and roll < 0.997:
            t = f"{rng.uniform(0.5, 400):.6f}"
            if v2:
                out = ""
                if rng.random() < 0.1:
                    out = f"\n{indent}    <system-err>{escape(_log_block(rng, rng.randint(5, 30), fancy))}</system-err>\n{indent}"
                p.append(f'{indent}<testcase name={name} classname="Kubernetes e2e suite" status="passed" time="{t}">{out}</testcase>\n')
            else:
                p.append(f'{indent}<testcase name={name} classname="Kubernetes e2e suite" time="{t}"></testcase>\n')
        else:
            message, body = _failure(rng, v2)
            log = escape(_log_block(rng, rng.randint(20, 60), fancy))
            status = ' status="failed"' if v2 else ""
            kind = "failed" if v2 else "Failure"
            p.append(f'{indent}<testcase name={name} classname="Kubernetes e2e suite"{status} time="{rng.uniform(30, 900):.6f}">\n'
                     f'{indent}    <failure message={quoteattr(message)} type="{kind}">{escape(body)}</failure>\n'
                     f'{indent}    <system-out>{log}</system-out>\n{indent}</testcase>\n')
    p.append("      </testsuite>\n  </testsuites>\n" if v2 else "</testsuite>\n")
    return "".join(p).encode("utf-8")


def unit_file(rng: random.Random, cases: int) -> bytes:
    """go-junit-report style: package suites of mostly passing tests, a few skips and failures."""
    p = ['<?xml version="1.0" encoding="UTF-8"?>\n<testsuites>\n']
    done = 0
    while done < cases:
        n = min(cases - done, rng.randint(10, 80))
        pkg = f"k8s.io/kubernetes/{rng.choice(PACKAGES)}"
        p.append(f'\t<testsuite tests="{n}" failures="0" time="{rng.uniform(0.1, 60):.3f}" name="{pkg}" '
                 f'timestamp="2025-11-22T01:02:03Z">\n\t\t<properties>\n'
                 f'\t\t\t<property name="go.version" value="go1.25.3 linux/amd64"></property>\n\t\t</properties>\n')
        for i in range(n):
            name = f"Test{rng.choice(FEATURES).replace(' ', '')}{done + i}"
            if rng.random() < 0.5:
                name += f"/{rng.choice(['valid', 'invalid', 'nil_spec', 'with_owner'])}_{i % 9}"
            roll = rng.random()
            head = f'\t\t<testcase classname="{pkg.rsplit("/", 1)[-1]}" name="{name}" time="{rng.uniform(0, 3):.3f}"'
            if roll < 0.97:
                p.append(head + "></testcase>\n")
            elif roll < 0.99:
                p.append(head + '>\n\t\t\t<skipped message="=== RUN   ' + name + '&#xA;    skip: requires root&#xA;"></skipped>\n\t\t</testcase>\n')
            else:
                p.append(head + '>\n\t\t\t<failure message="Failed" type="">=== RUN   ' + escape(name) +
                         f"\n    {name.lower()}_test.go:{rng.randint(10, 900)}: expected 3 pods, got 2\n--- FAIL: {escape(name)} (0.01s)\n"
                         "</failure>\n\t\t</testcase>\n")
        p.append("\t</testsuite>\n")
        done += n
    p.append("</testsuites>\n")
    return "".join(p).encode("utf-8")


def corpus(seed: int = 20251122, e2e_files: int = 6, unit_files: int = 12) -> list[tuple[str, bytes]]:
    """[(name, bytes)]: `e2e_files` Ginkgo files (v2 and v1 alternating) then `unit_files` unit files."""
    rng = random.Random(seed)
    files = []
    for i in range(e2e_files):
        files.append((f"junit_e2e_{i:02d}.xml", e2e_file(rng, rng.randint(3000, 6000), v2=i % 2 == 0, fancy=i % 3 == 0)))
    for i in range(unit_files):
        files.append((f"junit_unit_{i:02d}.xml", unit_file(rng, rng.randint(150, 600))))
    return files


if __name__ == "__main__":
    files = corpus()
    for name, data in files:
        print(f"{name}  {len(data):>9,} bytes  ascii={data.isascii()}  testcases={data.count(b'<testcase ')}")
    print(f"total {sum(len(d) for _, d in files):,} bytes in {len(files)} files")
