"""Checks on a rendered CI report's files."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

HREF = re.compile(r'(?:href|src)="([^"#]+)"')


def broken_links(folder: Path) -> list[str]:
    """Every relative href/src of every page that names no file."""
    broken = []
    for page in folder.rglob("*.html"):
        for target in HREF.findall(page.read_text()):
            if re.match(r"[a-z]+://", target):
                continue
            if not (page.parent / unquote(target)).resolve().is_file():
                broken.append(f"{page.relative_to(folder)} -> {target}")
    return broken
