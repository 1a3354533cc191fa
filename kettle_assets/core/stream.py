"""Which GCS notifications name a finished build worth collecting (Kettle's stream.py rules).

Only `OBJECT_FINALIZE` of `…/<build>/finished.json` under a watched bucket, for a job that
`exclude_jobs` does not exclude — the same exclusion rule as the batch listing.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import BucketSet
from .listing import BadPath, check_build_path


@dataclass(frozen=True)
class Notification:
    ack_id: str
    bucket: str  # GCS bucket name (bucketId)
    name: str  # object name (objectId)
    event_type: str = "OBJECT_FINALIZE"


@dataclass(frozen=True)
class FinishedBuild:
    path: str  # gs://… build folder
    bucket_key: str  # partition key of the owning bucket
    job: str


def finished_build(note: Notification, buckets: BucketSet) -> tuple[FinishedBuild | None, str]:
    """The build a notification announces, or None with the reason it is irrelevant."""
    if note.event_type != "OBJECT_FINALIZE":
        return None, f"event {note.event_type}"
    if not note.name.endswith("/finished.json"):
        return None, "not a finished.json"
    try:
        path = check_build_path(f"gs://{note.bucket}/{note.name[: -len('/finished.json')]}")
    except BadPath as exc:
        return None, str(exc)
    owner = buckets.owner_of(path)
    if owner is None:
        return None, "not under a watched bucket"
    job = path.rsplit("/", 2)[-2]
    if owner.pr and "/directory/" in path[len(owner.url) - 1 :]:
        return None, "a PR directory entry, not a build"
    if owner.excludes(job):
        return None, f"job {job} excluded"
    return FinishedBuild(path=path, bucket_key=owner.key, job=job), ""
