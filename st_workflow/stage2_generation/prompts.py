"""Versioned prompt files.

A prompt is a text file with a system part, a line ``=== user ===``, and a user template with ``$title``, ``$source``,
``$text`` and the item bounds ``$lo $hi $tlo $thi`` (``string.Template`` syntax, so JSON braces and LaTeX in
documents need no escaping). Its version is ``<name>@<sha256 of the file, 12 hex>``: editing a prompt changes the
version, which is part of every LLM cache key and of each pair's ``prompt_version``, so answers to an old prompt are
never mistaken for answers to the new one.

Bundled prompts live in ``st_workflow/stage2_generation/prompts/`` (``qa_pairs.v1``, ``search_terms.v1``,
``relevancy.v1``); a config may instead name any ``.md``/``.txt`` file path.

Example:
    >>> p = load_prompt("relevancy.v1")
    >>> p.version.startswith("relevancy.v1@")
    True
    >>> msgs = p.render(title="SWOT", source="cmr", text="Sea level.")
    >>> [m["role"] for m in msgs]
    ['system', 'user']
"""

from __future__ import annotations

import dataclasses
from functools import cache
from pathlib import Path
from string import Template

from st_workflow.hashing import sha256_text

PROMPT_DIR = Path(__file__).resolve().parent / "prompts"
USER_SEPARATOR = "=== user ==="


@dataclasses.dataclass(frozen=True)
class PromptTemplate:
    """A loaded prompt: system text, user template and content version."""

    name: str
    system: str
    user: str
    version: str

    def render(self, *, title: str, source: str, text: str, **bounds: int) -> list[dict[str, str]]:
        """Chat messages for one document (the document block is what the test server counts by)."""
        safe = text.replace("</document>", "</ document>")
        user = Template(self.user).substitute(
            title=" ".join(title.split()), source=source, text=safe, **bounds
        )
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]


@cache
def load_prompt(name_or_path: str) -> PromptTemplate:
    """Load a bundled prompt by name (``qa_pairs.v1``) or a prompt file by path.

    Raises:
        FileNotFoundError: naming the bundled prompts when the name is unknown.
        ValueError: when the file has no ``=== user ===`` separator.
    """
    p = Path(name_or_path)
    if p.suffix in (".md", ".txt") and p.is_file():
        path, name = p, p.stem
    else:
        path, name = PROMPT_DIR / f"{name_or_path}.md", name_or_path
        if not path.is_file():
            known = sorted(q.stem for q in PROMPT_DIR.glob("*.md"))
            raise FileNotFoundError(
                f"prompt {name_or_path!r} not found; bundled prompts: {known}, or give a file path"
            )
    raw = path.read_text(encoding="utf-8")
    if USER_SEPARATOR not in raw:
        raise ValueError(
            f"prompt file {path} has no line {USER_SEPARATOR!r} between the system and user parts"
        )
    system, user = raw.split(USER_SEPARATOR, 1)
    return PromptTemplate(
        name=name, system=system.strip(), user=user.strip("\n"), version=f"{name}@{sha256_text(raw)[:12]}"
    )


def cut_text(text: str, max_chars: int) -> str:
    """Cut ``text`` to at most ``max_chars`` at a whitespace boundary (so no word is split)."""
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    sp = cut.rfind(" ", int(max_chars * 0.8))
    return cut[:sp] if sp > 0 else cut


def item_bounds(n_chars: int, lo: int, hi: int, chars_per_item: int) -> tuple[int, int]:
    """How many items to ask for, scaled to the document's length.

    The target is one item per ``chars_per_item`` characters, clamped to ``[lo, hi]``; the model is asked for a band
    from two thirds of the target up to the target, never below ``lo``.

    Example:
        >>> item_bounds(600, 5, 15, 600), item_bounds(6000, 5, 15, 600), item_bounds(99999, 5, 15, 600)
        ((5, 5), (7, 10), (10, 15))
    """
    target = max(lo, min(hi, -(-n_chars // chars_per_item)))
    return max(lo, -(-target * 2 // 3)), target
