"""What makes the UI clickable: artifact URLs for build paths, owners from buckets.yaml's
`contact`, and the row contract's column schema on every table asset."""

from __future__ import annotations

import re
from pathlib import Path

import dagster as dg

from ..core import report_links
from ..core.config import BucketSet
from ..core.schema import bigquery_schema
from ..resources.settings import DEFAULT_ARTIFACT_URL, KettleSettings
from ..resources.staging import StagingStore
TABLE_ASSETS = ("build_rows", "build_all", "build_week", "build_day")
_TEAM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def artifact_url(path: str, pattern: str = DEFAULT_ARTIFACT_URL) -> str | None:
    """gs://bucket/some/build -> the pattern with {bucket} and {path} filled; None if not a gs:// path."""
    if not path.startswith("gs://"):
        return None
    bucket, _, rest = path[len("gs://") :].partition("/")
    return pattern.format(bucket=bucket, path=rest.rstrip("/"))


def report_folder(staging: StagingStore) -> Path:
    """Where `ci_report` writes the CI report: $KETTLE_HOME/report."""
    return Path(staging.home).resolve() / "report"


def report_link(settings: KettleSettings, staging: StagingStore, page: str = report_links.INDEX) -> dg.MetadataValue:
    """A page of the CI report as a clickable URL: under KETTLE_REPORT_URL, else the folder's file:// URL."""
    root = settings.report_url or report_folder(staging).as_uri()
    return dg.MetadataValue.url(report_links.page_url(root, page))


def md_link(path: str, pattern: str = DEFAULT_ARTIFACT_URL) -> str:
    """A Markdown link to a build's artifacts (the path itself when it has no URL)."""
    url = artifact_url(path, pattern)
    text = path.replace("[", "\\[").replace("]", "\\]")
    return f"[{text}]({url.replace(' ', '%20').replace(')', '%29')})" if url else text


def owner_of_contact(contact: str) -> str | None:
    """Dagster owners are emails or `team:` names: an email stays, a handle becomes `team:<handle>`."""
    contact = contact.strip()
    if not contact:
        return None
    if re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", contact):
        return contact
    return f"team:{contact}" if _TEAM_NAME.fullmatch(contact) else None


def bucket_owners(buckets: BucketSet) -> list[str]:
    """Everyone named as a `contact` in buckets.yaml, once each, in file order."""
    owners: list[str] = []
    for bucket in buckets:
        owner = owner_of_contact(bucket.contact)
        if owner and owner not in owners:
            owners.append(owner)
    return owners


def column_schema() -> dg.TableSchema:
    """The contract's columns (schema.json), as Dagster shows them on a table asset."""
    columns = []
    for field in bigquery_schema():
        kind = field["type"]
        if kind == "RECORD":
            kind = "STRUCT<" + ", ".join(f"{f['name']} {f['type']}" for f in field["fields"]) + ">"
        if field.get("mode") == "REPEATED":
            kind = f"ARRAY<{kind}>"
        columns.append(
            dg.TableColumn(
                name=field["name"], type=kind, description=field.get("description"),
                constraints=dg.TableColumnConstraints(nullable=field.get("mode") != "REQUIRED"),
            )
        )
    return dg.TableSchema(columns=columns)


def with_owners_and_schema(asset: dg.AssetsDefinition, owners: list[str]) -> dg.AssetsDefinition:
    """The asset with the buckets' owners, and the contract's columns if it holds rows."""
    def update(spec: dg.AssetSpec) -> dg.AssetSpec:
        if spec.key.path[-1] in TABLE_ASSETS:
            spec = spec.merge_attributes(metadata={"dagster/column_schema": column_schema()})
        return spec.replace_attributes(owners=owners) if owners else spec

    return asset.map_asset_specs(update)
