"""Generated test failures with realistic text, for the clustering benchmark and tests.

A corpus is a set of failure *kinds* (Go panics with goroutine dumps, timeouts with timestamps,
pod and node names, IPs, map dumps, long repeated logs); each failure picks a kind (skewed: a few
kinds are most failures, as in CI) and fills its noise with fresh random values, and sometimes
changes a word (a small real difference the clustering should absorb). Seeded: same arguments,
same corpus.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

WORDS = ("pod", "node", "volume", "service", "endpoint", "deployment", "secret", "quota", "lease",
         "controller", "scheduler", "kubelet", "etcd", "apiserver", "webhook", "ingress", "daemonset")
SIGS = ("node", "network", "storage", "apps", "cli", "auth", "scheduling", "api-machinery", "instrumentation")


def _hex(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789abcdef") for _ in range(n))


def _ip(rng: random.Random) -> str:
    return f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}"


def _stamp(rng: random.Random, day: datetime) -> str:
    t = day + timedelta(seconds=rng.randrange(86400), microseconds=rng.randrange(10**6))
    return t.strftime("%b %d %H:%M:%S.%f")[:-3]


def _template(rng: random.Random, kind: int) -> tuple[str, list[str]]:
    """A failure text with {slots} for noise, and the words of it a variant may change."""
    a, b, c = rng.sample(WORDS, 3)
    # What makes kinds of the same shape tell apart, as the file and call of a real failure do.
    where = (f"/go/src/k8s.io/kubernetes/test/e2e/{rng.choice(WORDS)}/{rng.choice(WORDS)}_{kind}.go:"
             f"{rng.randrange(20, 2000)} in {rng.choice(WORDS).title()}{rng.choice(WORDS).title()}")
    shape = kind % 6
    if shape == 0:  # Go panic with a goroutine dump
        frames = "".join(
            f"k8s.io/kubernetes/pkg/{rng.choice(WORDS)}.(*{rng.choice(WORDS).title()}).{rng.choice(WORDS).title()}(0x{{h}}, 0x{{h}})\n"
            f"\t/go/src/k8s.io/kubernetes/pkg/{rng.choice(WORDS)}/{rng.choice(WORDS)}.go:{rng.randrange(40, 900)} +0x{{h}}\n"
            for _ in range(rng.randrange(4, 14)))
        text = (f"panic: runtime error: invalid memory address or nil pointer dereference [recovered]\n"
                f"[signal SIGSEGV: segmentation violation code=0x1 addr=0x{{h}} pc=0x{{h}}]\n\n"
                f"goroutine {{n}} [running]:\n{frames}created by {a}.{b}\n")
    elif shape == 1:  # timeout with timestamps and a pod name
        text = (f"{{t}}: INFO: Waiting up to 5m0s for pod \"{a}-{{pod}}\" in namespace \"e2e-tests-{b}-{{ns}}\"\n"
                f"{{t}}: INFO: Pod \"{a}-{{pod}}\" phase=Pending reason=\"\" readiness=false. Elapsed: {{n}}ms\n"
                f"/go/src/k8s.io/kubernetes/test/e2e/{c}.go:{rng.randrange(100, 999)}\n"
                f"Timed out after 300.000s.\nExpected\n    <bool>: false\nto be true")
    elif shape == 2:  # connection refused to an IP, on a node
        text = (f"error dialing backend: dial tcp {{ip}}:10250: connect: connection refused\n"
                f"node gke-{a}-default-pool-{{node}} {b} not ready since {{t}}\n"
                f"failed to get {c} logs from {{ip}}: unexpected EOF")
    elif shape == 3:  # map dump in random order
        labels = " ".join(f"{w}:{rng.choice(WORDS)}" for w in rng.sample(WORDS, 6))
        text = (f"Expected\n    <map[string]string | len:6>: map[{labels}]\nto equal\n"
                f"    <map[string]string | len:6>: map[{labels.replace(a, c)}]\n"
                f"object uid {{uuid}} resourceVersion {{n}}")
    elif shape == 4:  # long log with repeated lines
        line = f"{{t}} {a} {b}: waiting for {c} to become ready, retrying\n"
        text = (f"Failure: {a} {b} did not converge\n" + line * rng.randrange(20, 160)
                + f"last error: context deadline exceeded (Client.Timeout exceeded while awaiting headers) at {{ip}}")
    else:  # short assertion
        text = f"expected {a} count {{n}} to equal {{n}} for {b} {c}"
    return text + "\n" + where, [a, b, c]


@dataclass(frozen=True)
class CorpusFailure:
    path: str
    job: str
    number: int
    started: int  # epoch seconds
    test: str
    text: str


def _fill(rng: random.Random, template: str, day: datetime) -> str:
    pod = "".join(rng.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5))
    out = template
    for slot, make in (("{h}", lambda: _hex(rng, rng.randrange(6, 12))), ("{n}", lambda: str(rng.randrange(1, 99999))),
                       ("{t}", lambda: _stamp(rng, day)), ("{ip}", lambda: _ip(rng)),
                       ("{uuid}", lambda: f"{_hex(rng, 8)}-{_hex(rng, 4)}-{_hex(rng, 4)}-{_hex(rng, 4)}-{_hex(rng, 12)}"),
                       ("{ns}", lambda: str(rng.randrange(1000, 9999))), ("{node}", lambda: _hex(rng, 4))):
        while slot in out:
            out = out.replace(slot, make(), 1)
    return out.replace("{pod}", pod)


def generate(failures: int, days: int = 14, kinds: int | None = None, seed: int = 1,
             start: datetime = datetime(2026, 11, 1, tzinfo=timezone.utc)) -> list[CorpusFailure]:
    """`failures` failures spread over `days` days, from about failures/40 kinds of failure."""
    rng = random.Random(seed)
    kinds = kinds or max(8, failures // 40)
    templates = [_template(rng, k) for k in range(kinds)]
    tests = [f"[sig-{rng.choice(SIGS)}] {rng.choice(WORDS).title()} should {rng.choice(WORDS)} {k}"
             for k in range(max(4, kinds // 2))]
    jobs = [f"ci-kubernetes-e2e-{rng.choice(WORDS)}-{k}" for k in range(max(2, kinds // 2))]
    weights = [1.0 / (k + 1) ** 0.8 for k in range(kinds)]
    picked = rng.choices(range(kinds), weights=weights, k=failures)
    out = []
    for n, kind in enumerate(picked):
        template, words = templates[kind]
        day = start + timedelta(days=n * days // failures)
        if rng.random() < 0.15:  # a real but small difference
            template = template.replace(words[0], rng.choice(WORDS), 1)
        test = tests[(kind * 7 + rng.randrange(3)) % len(tests)]
        job = jobs[(kind + rng.randrange(2)) % len(jobs)]
        number = 1000 + n
        started = int((day + timedelta(seconds=rng.randrange(86400))).timestamp())
        out.append(CorpusFailure(path=f"gs://kubernetes-jenkins/logs/{job}/{number}", job=job, number=number,
                                 started=started, test=test, text=_fill(rng, template, day)))
    return out
