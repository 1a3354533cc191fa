"""A run launcher whose dead run workers are noticed, so a crashed host heals by itself.

Dagster's `DefaultRunLauncher` starts each run worker as a process on the daemon's machine but
cannot tell the run monitor whether that process is still alive: after a SIGKILL of the daemon
and its workers (an OOM kill, a host crash), a run stays `STARTED` until a runtime limit, holding
its pool slot, and every later run waits behind it. This launcher answers the monitor's health
check from the process itself: the worker's pid is in the run's "Started process for run" event,
and a process that is gone, or whose pid now belongs to a newer process, means a dead worker.
The monitor then marks the run failed, frees its slots, and run retries launch it again.
"""

from __future__ import annotations

import os
from pathlib import Path

from dagster import DagsterEventType, DefaultRunLauncher
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus
from dagster._core.storage.dagster_run import DagsterRun

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_started_at(pid: int) -> float | None:
    """Epoch seconds the process `pid` started, or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(
            float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime ")
        )
    except (OSError, StopIteration, ValueError):
        try:
            os.kill(pid, 0)  # no /proc: existence is all we can tell
        except ProcessLookupError:
            return None
        except PermissionError:
            return 0.0
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()  # the command name may hold spaces and parentheses
    if fields[0] in ("Z", "X"):  # a zombie is a dead worker whose parent has not reaped it
        return None
    return boot + int(fields[19]) / _CLOCK_TICKS


RUN_PID_TAG = "kettle/pid"  # in-process runs (`kettle sync`) name the process that runs them


def worker_pid(instance, run: DagsterRun) -> tuple[int, float] | None:
    """The pid of the run's worker and when it started: from the run's tag (in-process runs,
    started just before the run was created) or the worker's "Started process" engine event."""
    if RUN_PID_TAG in run.tags:
        record = instance.get_run_record_by_id(run.run_id)
        created = record.create_timestamp.timestamp() if record else float("inf")
        return int(run.tags[RUN_PID_TAG]), created
    run_id = run.run_id
    events = instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT)
    for record in reversed(events):
        event = record.dagster_event
        data = getattr(event, "engine_event_data", None) if event else None
        pid = data.metadata.get("pid") if data and data.metadata else None
        if pid is not None and "Started process for run" in (event.message or ""):
            return int(getattr(pid, "value", pid)), record.timestamp
    return None


class LocalRunLauncher(DefaultRunLauncher):
    """`DefaultRunLauncher` plus a health check of the run worker process (same host only)."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        found = worker_pid(self._instance, run)
        if found is None:  # not a run this host started: only the runtime limit applies
            return CheckRunHealthResult(WorkerStatus.RUNNING, "no run worker pid recorded")
        pid, said_started = found
        started = process_started_at(pid)
        if started is None:
            return CheckRunHealthResult(WorkerStatus.FAILED, f"run worker process {pid} is gone")
        if started > said_started + 5:  # the pid was reused by a process born after the worker
            return CheckRunHealthResult(WorkerStatus.FAILED, f"run worker process {pid} is gone (pid reused)")
        return CheckRunHealthResult(WorkerStatus.RUNNING)
