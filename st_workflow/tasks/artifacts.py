"""Publishing Prefect artifacts from tasks and flows (no-ops outside a Prefect run, e.g. in unit tests)."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

from prefect.context import FlowRunContext, TaskRunContext


def _in_run() -> bool:
    return bool(TaskRunContext.get() or FlowRunContext.get())


def artifact_key(text: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:100] or "artifact"


def publish_table(key: str, rows: list[dict[str, Any]], description: str = "") -> None:
    """A table artifact (one dict per row)."""
    if not _in_run() or not rows:
        return
    from prefect.artifacts import create_table_artifact

    create_table_artifact(key=artifact_key(key), table=rows, description=description)


def publish_markdown(key: str, markdown: str, description: str = "") -> None:
    """A markdown artifact."""
    if not _in_run():
        return
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(key=artifact_key(key), markdown=markdown, description=description)


def publish_link(key: str, path: str | Path, text: str, description: str = "") -> None:
    """A link artifact pointing at a local file (``file://`` URL) or at a web URL."""
    if not _in_run():
        return
    from prefect.artifacts import create_link_artifact

    link = str(path) if str(path).startswith(("http://", "https://")) else Path(path).absolute().as_uri()
    create_link_artifact(key=artifact_key(key), link=link, link_text=text, description=description)


_IMAGE_LINK = re.compile(r"!\[([^\]]*)\]\(([^)\s]+\.png)\)")


def inline_images(markdown: str, base_dir: str | Path) -> str:
    """Replace relative ``![alt](file.png)`` links by data URIs of the files under ``base_dir``.

    The Prefect UI renders an artifact's markdown on its own page, where a link relative to the run directory
    points nowhere; embedded, the chart shows inline. Links to files that do not exist are left as they are.

    Example:
        >>> inline_images("![chart](missing.png) text", "/nonexistent")
        '![chart](missing.png) text'
    """

    def sub(m: re.Match[str]) -> str:
        target = m.group(2)
        if "://" in target or target.startswith("data:"):
            return m.group(0)
        p = Path(base_dir) / target
        if not p.is_file():
            return m.group(0)
        return f"![{m.group(1)}](data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()})"

    return _IMAGE_LINK.sub(sub, markdown)


def publish_image(key: str, png: str | Path, description: str = "") -> None:
    """A PNG shown inline: a markdown artifact embedding the image as a data URI, plus a link to the file."""
    png = Path(png)
    if not _in_run() or not png.is_file():
        return
    data = base64.b64encode(png.read_bytes()).decode()
    publish_markdown(key, f"![{png.name}](data:image/png;base64,{data})\n\n`{png}`", description)
    publish_link(f"{key}-file", png, png.name, description)
