"""Prefect artifact helpers shared by the report tasks: keys, where PNGs go, PNGs embedded in markdown.

Prefect 3.8's image artifact renders its URL as an <img> *and* prints it under the image as "Image URL: ...",
so a base64 data URL would fill the page with text. Figures are therefore embedded in markdown artifacts
(``![name](data:image/png;base64,...)``, rendered as an image only) and written as PNG files beside the store.
"""

from __future__ import annotations

import base64
import re
import tempfile
from pathlib import Path

MAX_EMBEDDED_PNG_BYTES = 1_500_000
"""PNGs above this size are linked by path in the markdown instead of embedded."""


def artifact_key(text: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text.lower())).strip("-")[:100]


def artifact_path(store: str, name: str) -> Path:
    """<store-parent>/<name> for a local store; a temporary folder for remote URLs (folder created)."""
    if "://" in store and not store.startswith("file://"):
        folder = Path(tempfile.gettempdir()) / "ood-artifacts"
    else:
        folder = Path(store.removeprefix("file://")).resolve().parent
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def png_base64(path: str | Path, max_bytes: int = MAX_EMBEDDED_PNG_BYTES) -> str | None:
    """The PNG as base64 text for a markdown data URL, or None when it is larger than ``max_bytes``."""
    data = Path(path).read_bytes()
    return base64.b64encode(data).decode() if len(data) <= max_bytes else None
