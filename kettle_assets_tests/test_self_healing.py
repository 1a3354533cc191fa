"""Self-healing: SIGKILL of the daemon and its run workers mid-run, then a restart, loses and
duplicates nothing, with no person involved (the repository's dagster.yaml, timings shortened)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import duckdb
import yaml
from dagster._core.storage.dagster_run import DagsterRunStatus, RunsFilter

from kettle_assets.launcher import LocalRunLauncher, process_started_at

from .conftest import BUCKETS, REPO
from .support.servers import needs_pubsub, pubsub_emulator
from .test_stream import add_build, make_subscription, notify



def repo_instance_config() -> dict:
    return yaml.safe_load((REPO / "dagster.yaml").read_text())


def test_repository_instance_heals_within_five_minutes():
    config = repo_instance_config()
    assert config["run_launcher"]["class"] == LocalRunLauncher.__name__
    monitoring, retries = config["run_monitoring"], config["run_retries"]
    assert monitoring["enabled"] and retries["enabled"] and retries["max_retries"] >= 1
    # a crashed STARTING run is failed by the start timeout, a crashed STARTED one at the next poll;
    # the retry daemon then relaunches it on its next tick (seconds)
    assert monitoring["start_timeout_seconds"] + monitoring["poll_interval_seconds"] < 300 - 60
    assert monitoring["cancel_timeout_seconds"] + monitoring["poll_interval_seconds"] < 300 - 60
    assert monitoring["free_slots_after_run_end_seconds"] < 120
    assert monitoring["max_runtime_seconds"] > 0


def test_process_start_time_tells_a_live_process_from_a_gone_one():
    assert process_started_at(os.getpid()) <= time.time()
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert process_started_at(child.pid) is None


def _instance_yaml(dagster_home: Path) -> None:
    config = repo_instance_config()
    for key in ("storage", "local_artifact_storage", "compute_logs"):  # the test's own DAGSTER_HOME
        config.pop(key, None)
    config["run_monitoring"].update(start_timeout_seconds=20, cancel_timeout_seconds=20, poll_interval_seconds=3)
    config["run_monitoring"]["free_slots_after_run_end_seconds"] = 5
    (dagster_home / "dagster.yaml").write_text(yaml.safe_dump(config))


def _start_daemon(env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [str(Path(sys.executable).with_name("dagster-daemon")), "run", "-m", "kettle_assets.definitions"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )


def _row_counts(home: Path, paths: list[str]) -> dict[str, int]:
    try:
        with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as conn:
            return {p: conn.execute('SELECT count(*) FROM "all" WHERE path = ?', [p]).fetchone()[0] for p in paths}
    except duckdb.Error:
        return {}  # a run holds the write lock


def _run_story(instance) -> list[tuple]:
    """Each run's job, status, parent and, for a failed one, why: what a failure message needs."""
    story = []
    for run in instance.get_runs():
        why = [
            (e.dagster_event.message or "")[:300]
            for e in instance.all_logs(run.run_id)
            if e.dagster_event and e.dagster_event.event_type_value in ("STEP_FAILURE", "RUN_FAILURE", "ENGINE_EVENT")
            and run.status == DagsterRunStatus.FAILURE
        ]
        story.append((run.job_name, run.status.value, run.tags.get("dagster/parent_run_id"), why[-3:]))
    return story


@needs_pubsub
def test_sigkill_of_daemon_and_workers_mid_run_heals_by_itself(own_kettle, tmp_path, monkeypatch):
    own_kettle.sync()
    now = int(time.time())
    builds = [
        add_build(own_kettle.tree, f"kubernetes-jenkins/logs/ci-kubernetes-unit/{n}", now - 600 + n)
        for n in range(41, 45)
    ] + [add_build(own_kettle.tree, "kubernetes-jenkins/logs/ci-kubernetes-unit/46", now - 86400 - 600)]
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    _instance_yaml(dagster_home)
    with pubsub_emulator() as host:
        monkeypatch.setenv("PUBSUB_EMULATOR_HOST", host)
        topic, sub = make_subscription(host, "heal")
        for path in builds:
            notify(host, topic, "kubernetes-jenkins", path[len("gs://kubernetes-jenkins/"):] + "/finished.json")
        env = {
            **os.environ,
            "DAGSTER_HOME": str(dagster_home),
            "KETTLE_STORAGE_ROOT": str(own_kettle.tree),
            "KETTLE_HOME": str(own_kettle.home),
            "KETTLE_BUCKETS": str(BUCKETS),
            "PUBSUB_EMULATOR_HOST": host,
            "KETTLE_PUBSUB_SUBSCRIPTION": sub,
        }
        monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
        instance = dg.DagsterInstance.get()  # its storage exists before the daemon opens it
        daemon = _start_daemon(env)
        try:
            with instance:
                # crash while the streamed builds' days are being published (the longest run of the
                # stream: a streamed build's own build_metadata run may end before the kill lands)
                deadline = time.monotonic() + 120
                in_flight = []
                while not in_flight and time.monotonic() < deadline:
                    in_flight = instance.get_runs(
                        RunsFilter(statuses=[DagsterRunStatus.STARTED], job_name="stage_and_publish_days")
                    )
                    time.sleep(0.2)
                assert in_flight, "no run started within 120 s"
                os.killpg(daemon.pid, signal.SIGKILL)
                daemon.wait(30)
                time.sleep(1)
                stuck = instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.STARTED, DagsterRunStatus.STARTING]))
                assert stuck, "the crash left no run in flight; the test proves nothing"

                daemon = _start_daemon(env)
                deadline = time.monotonic() + 240
                counts: dict = {}
                while time.monotonic() < deadline:
                    counts = _row_counts(own_kettle.home, builds)
                    if counts and all(counts.values()):
                        break
                    time.sleep(2)
                assert counts == {p: 1 for p in builds}, (counts, _run_story(instance))
                # The runs the crash left behind are ended by the run monitor (within its start timeout
                # and poll interval of the restart), not left hanging: the rows may land before that.
                ended = (DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED, DagsterRunStatus.SUCCESS)
                deadline = time.monotonic() + 120
                left = stuck
                while left and time.monotonic() < deadline:
                    left = [r for r in stuck if instance.get_run_by_id(r.run_id).status not in ended]
                    time.sleep(1)
                assert not left, [(r.job_name, instance.get_run_by_id(r.run_id).status) for r in left]
        finally:
            try:
                os.killpg(daemon.pid, signal.SIGTERM)
                daemon.wait(30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(daemon.pid, signal.SIGKILL)
    with duckdb.connect(str(own_kettle.home / "warehouse.duckdb"), read_only=True) as conn:
        assert conn.execute('SELECT count(*) - count(DISTINCT path) FROM "all"').fetchone()[0] == 0


@dg.asset
def _trivial():
    return 1


def test_health_check_of_in_process_runs_by_their_pid_tag():
    """`kettle sync` runs in process and tags its pid: a killed sync's run is noticed too."""
    from kettle_assets.launcher import RUN_PID_TAG

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with dg.DagsterInstance.ephemeral() as instance:
        launcher = LocalRunLauncher()
        launcher.register_instance(instance)
        alive = dg.materialize([_trivial], instance=instance, tags={RUN_PID_TAG: str(os.getpid())})
        dead = dg.materialize([_trivial], instance=instance, tags={RUN_PID_TAG: str(gone.pid)})
        untagged = dg.materialize([_trivial], instance=instance)
        status = lambda result: launcher.check_run_worker_health(instance.get_run_by_id(result.run_id)).status.value
        assert status(alive) == "RUNNING"
        assert status(dead) == "FAILED"
        assert status(untagged) == "RUNNING"  # not started by this host's launcher: the runtime limit applies
