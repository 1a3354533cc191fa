"""Publishing: which days the publish sensor asks for, and how build_all loads a day."""

import time

import dagster as dg
import pytest

from kettle_assets.core.publish import builds_to_upsert
from kettle_assets.project import Settings, build_definitions
from kettle_assets.resources.staging import StagingStore

from .conftest import BUCKETS


@pytest.mark.parametrize(
    "staged,published,expected",
    [
        ({"a": "1"}, None, None),  # never published here: replace the day
        ({f"b{i}": "1" for i in range(20)} | {"new": "1"}, {f"b{i}": "1" for i in range(20)}, ["new"]),
        ({f"b{i}": "1" for i in range(20)}, {f"b{i}": "1" for i in range(20)} | {"gone": "1"}, None),  # one left
        ({f"b{i}": "2" for i in range(20)}, {f"b{i}": "1" for i in range(20)}, None),  # most of the day changed
        ({"a": "1", "b": "2"}, {"a": "1", "b": "1"}, ["b"]),
        ({"a": "1"}, {"a": "1"}, []),  # nothing changed: nothing to load
    ],
)
def test_build_all_upserts_only_a_few_changed_builds(staged, published, expected):
    assert builds_to_upsert(staged, published) == expected


@pytest.fixture
def publish_sensor(tmp_path):
    settings = Settings(
        buckets_file=str(BUCKETS), storage_root=str(tmp_path / "tree"), home=str(tmp_path / "home"),
        start_date="2026-10-01",
    )
    defs = build_definitions(settings)
    staging = StagingStore(home=str(tmp_path / "home"))
    instance = dg.DagsterInstance.ephemeral()

    def tick(cursor):
        with dg.build_sensor_context(
            instance=instance, cursor=cursor, resources={"staging": staging}, definitions=defs
        ) as ctx:
            return defs.resolve_sensor_def("publish_affected_days")(ctx)

    def collected(days: list[str]):
        staging.mark_dirty(days)
        instance.report_runless_asset_event(
            dg.AssetMaterialization("build_metadata", partition="kubernetes-jenkins/logs",
                                    metadata={"affected_days": dg.MetadataValue.json(days)})
        )

    return tick, collected, staging


def _asked(result) -> list[tuple]:
    return [
        (r.job_name, r.tags.get("dagster/asset_partition_range_start"), r.tags.get("dagster/asset_partition_range_end"))
        for r in result.run_requests
    ]


def test_first_tick_publishes_what_history_left_unpublished(publish_sensor):
    tick, collected, staging = publish_sensor
    collected(["2026-10-03"])
    staging.clear_dirty("2026-10-03", time.time())  # published since (e.g. by `kettle sync`)
    collected(["2026-10-05"])
    first = tick(None)
    assert _asked(first) == [("stage_and_publish_days", "2026-10-05", "2026-10-05"), ("refresh_windows", None, None)]
    assert tick(first.cursor).run_requests == []  # nothing new since


def test_later_ticks_publish_the_days_new_collections_touched_in_ranges(publish_sensor):
    tick, collected, staging = publish_sensor
    cursor = tick(None).cursor
    collected(["2026-10-10", "2026-10-11"])
    collected(["2026-10-13", "2026-09-01"])  # before the first partition: staged, not published
    result = tick(cursor)
    assert _asked(result) == [
        ("stage_and_publish_days", "2026-10-10", "2026-10-11"),
        ("stage_and_publish_days", "2026-10-13", "2026-10-13"),
        ("refresh_windows", None, None),
    ]
    for day in ("2026-10-10", "2026-10-11", "2026-10-13"):
        staging.clear_dirty(day, time.time())
    collected(["2026-10-11"])
    assert _asked(tick(result.cursor))[0] == ("stage_and_publish_days", "2026-10-11", "2026-10-11")


def test_a_day_a_failed_run_left_unpublished_is_asked_for_again(publish_sensor):
    tick, collected, staging = publish_sensor
    cursor = tick(None).cursor
    (staging.root / "dirty").mkdir(parents=True)
    (staging.root / "dirty" / "2026-10-20").write_text(repr(time.time() - 3600))  # marked an hour ago
    result = tick(cursor)
    assert _asked(result)[0] == ("stage_and_publish_days", "2026-10-20", "2026-10-20")
    assert result.run_requests[0].run_key.endswith(f"retry-{int(time.time() // 3600)}")
