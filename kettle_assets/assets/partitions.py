"""The two partitionings, buckets and UTC days, and how a home narrows them.

The assets are declared over `BUCKETS` (Kettle's own bucket list) and `DAYS` (every day since
Kettle's first year). A code location serves one home, whose buckets come from its buckets.yaml
and whose days start at its first staged day, so `bind_partitions` gives the assets those:
the UI then shows the home's buckets and only days that can hold data.
"""

import dagster as dg

from ..core.config import BucketSet

EARLIEST_START_DATE = "2014-01-01"  # Kettle's first year: staged days before it are bad timestamps


def bucket_partitions(buckets: BucketSet) -> dg.StaticPartitionsDefinition:
    """One partition per bucket of buckets.yaml, keyed `bucket/prefix`."""
    return dg.StaticPartitionsDefinition(buckets.keys)


def day_partitions(start_date: str) -> dg.DailyPartitionsDefinition:
    """UTC days of the finished time; end_offset=1 so today exists."""
    return dg.DailyPartitionsDefinition(start_date=start_date, end_offset=1, timezone="UTC")


# The buckets of the repository's buckets.yaml (Kubernetes' own), keyed as `bucket_partitions` does.
BUCKETS = dg.StaticPartitionsDefinition(
    ["kubernetes-jenkins/logs", "kubernetes-jenkins/pr-logs", "canonical-kubernetes-tests/logs"]
)
DAYS = day_partitions(EARLIEST_START_DATE)


def bind_partitions(
    assets: list[dg.AssetsDefinition], buckets: dg.PartitionsDefinition, days: dg.PartitionsDefinition
) -> list[dg.AssetsDefinition]:
    """`assets` with `BUCKETS` and `DAYS` replaced by a home's own partitions; others unchanged."""
    home_partitions = {id(BUCKETS): buckets, id(DAYS): days}

    def bind(spec: dg.AssetSpec) -> dg.AssetSpec:
        bound = home_partitions.get(id(spec.partitions_def))
        return spec if bound is None else spec.replace_attributes(partitions_def=bound)

    return [asset.map_asset_specs(bind) for asset in assets]
