"""How a day reaches the warehouse: replaced whole, or just its changed builds upserted."""

from __future__ import annotations

# Upserting a few builds loads and scans only their rows (what BigQuery bills); past this share
# of the day, replacing the day costs about the same and is simpler to reason about.
UPSERT_SHARE = 0.1


def builds_to_upsert(staged: dict[str, str | None], published: dict[str, str | None] | None) -> list[str] | None:
    """The builds whose rows differ between the day's staged rows and what was last published
    of it (path -> row version), or None when the day must be replaced whole: never published
    to this warehouse, a build left the day (its old row must go from this day only), or more
    than UPSERT_SHARE of the day changed."""
    if published is None or published.keys() - staged.keys():
        return None
    changed = sorted(p for p, version in staged.items() if p not in published or published[p] != version)
    if len(changed) > max(1, int(UPSERT_SHARE * len(staged))):
        return None
    return changed
