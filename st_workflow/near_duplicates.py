"""Near-duplicate texts: ONE rule, used by the hold-out families, every leakage check and the synthetic-pair gate.

Two texts are near-duplicates when

* their *skeletons* are equal: match-normalised (NFKC, case-folded), punctuation dropped, every run of digits masked
  — "NWS Daily Climatology Data: 1978 (SNF)" and "…: 1979 (SNF)" are one record in two years; or
* the Jaccard similarity of their skeleton word ``ngram``-shingles is at least ``threshold`` (texts shorter than
  ``ngram`` words use character 3-grams) — the same description with a sentence changed.

A text of at least :data:`MIN_PASSAGE_WORDS` words is a *passage of* another when at least ``threshold`` of its
shingles occur in that one text — a paragraph cut out of a document (what the leakage checks also look for in a
training positive).

:class:`NearDuplicateIndex` finds every indexed text that is a near-duplicate of a probe exactly (no sampling, no
MinHash false negatives): skeletons through a hash map, Jaccard through prefix filtering — two sets with Jaccard
>= t share at least one token among the first ``|s| - ceil(t |s|) + 1`` tokens of each, in one global token order
(rarest first). :func:`families` groups records whose texts are near-duplicates into families (union-find), which
the hold-out keeps whole.

Example:
    >>> rule = NearDuplicateRule(threshold=0.8, ngram=3)
    >>> rule.same("NWS Daily Climatology Data: 1978 (SNF)", "NWS daily climatology data: 1979 (SNF)")
    True
    >>> rule.same("Mars dust storms", "Jupiter cloud bands")
    False
    >>> families([["Rain 1990", "Rain 1991", "Snow cover"]], rule)
    [0, 0, 2]
    >>> NearDuplicateIndex(rule, ["Sea ice extent", "Ocean colour"]).matches("SEA ICE EXTENT!")
    [0]
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from st_workflow.schemas import normalize_for_match

_WORD = re.compile(r"\w+")
_DIGITS = re.compile(r"\d+")

#: Shorter texts are never a "passage of" a document: a few words occur in many documents by chance.
MIN_PASSAGE_WORDS = 12


@lru_cache(maxsize=65_536)
def skeleton(text: str) -> str:
    """Match-normalised words with digit runs masked and punctuation dropped.

    Example:
        >>> skeleton("MODIS/Terra 8-Day L3 Global 1km, V061")
        'modis terra 0 day l0 global 0km v0'
    """
    return " ".join(_DIGITS.sub("0", w) for w in _WORD.findall(normalize_for_match(text or "")))


def jaccard(a: frozenset[str] | set[str], b: frozenset[str] | set[str]) -> float:
    """``|a & b| / |a | b|``; two empty sets are identical (1.0)."""
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


@dataclass(frozen=True)
class NearDuplicateRule:
    """When two texts count as the same text (see the module docstring)."""

    threshold: float = 0.8
    """Jaccard similarity of the shingles at or above which two texts are near-duplicates."""
    ngram: int = 3
    """Words per shingle."""

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"near-duplicate threshold must be in (0, 1], got {self.threshold}")
        if self.ngram < 1:
            raise ValueError(f"near-duplicate ngram must be positive, got {self.ngram}")

    @classmethod
    def from_config(cls, cfg: object) -> NearDuplicateRule:
        """From any config object with ``threshold`` and ``ngram`` (``pairs.near_duplicates``)."""
        return cls(threshold=float(cfg.threshold), ngram=int(cfg.ngram))  # type: ignore[attr-defined]

    def shingles(self, text: str) -> frozenset[str]:
        """Skeleton word ``ngram``-grams; character 3-grams of the skeleton when it has fewer words.

        Example:
            >>> sorted(NearDuplicateRule(ngram=2).shingles("Sea ice, 2001"))
            ['ice 0', 'sea ice']
        """
        return _shingles(skeleton(text), self.ngram)

    def same(self, a: str, b: str) -> bool:
        """Whether ``a`` and ``b`` are near-duplicates."""
        sa, sb = skeleton(a), skeleton(b)
        if not sa or not sb:
            return False
        if sa == sb:
            return True
        return jaccard(_shingles(sa, self.ngram), _shingles(sb, self.ngram)) >= self.threshold


@lru_cache(maxsize=65_536)
def _shingles(skel: str, n: int) -> frozenset[str]:
    ws = skel.split()
    if len(ws) >= n:
        return frozenset(" ".join(ws[i : i + n]) for i in range(len(ws) - n + 1))
    if len(skel) < 3:
        return frozenset([skel]) if skel else frozenset()
    return frozenset(skel[i : i + 3] for i in range(len(skel) - 2))


class NearDuplicateIndex:
    """Exact near-duplicate search over a fixed list of texts (ids are positions in that list)."""

    def __init__(self, rule: NearDuplicateRule, texts: Iterable[str]) -> None:
        self.rule = rule
        self.texts = list(texts)
        self._by_skeleton: dict[str, list[int]] = defaultdict(list)
        self._shingles: list[frozenset[str]] = []
        for i, t in enumerate(self.texts):
            sk = skeleton(t)
            if sk:
                self._by_skeleton[sk].append(i)
            self._shingles.append(_shingles(sk, rule.ngram) if sk else frozenset())
        self._freq: Counter[str] = Counter(s for sh in self._shingles for s in sh)
        self._postings: dict[str, list[int]] = defaultdict(list)
        for i, sh in enumerate(self._shingles):
            for s in self._prefix(sh):
                self._postings[s].append(i)
        self._all_postings: dict[str, list[int]] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def _prefix(self, sh: frozenset[str]) -> list[str]:
        if not sh:
            return []
        order = sorted(sh, key=lambda s: (self._freq.get(s, 0), s))
        return order[: len(order) - math.ceil(self.rule.threshold * len(order)) + 1]

    def matches(self, text: str) -> list[int]:
        """Ids of every indexed text that is a near-duplicate of ``text``, ascending."""
        sk = skeleton(text)
        if not sk:
            return []
        found = set(self._by_skeleton.get(sk, ()))
        sh = _shingles(sk, self.rule.ngram)
        seen: set[int] = set(found)
        for s in self._prefix(sh):
            for j in self._postings.get(s, ()):
                if j in seen:
                    continue
                seen.add(j)
                if jaccard(sh, self._shingles[j]) >= self.rule.threshold:
                    found.add(j)
        return sorted(found)

    def first_match(self, text: str) -> int | None:
        """The smallest id of a near-duplicate of ``text``, or None."""
        m = self.matches(text)
        return m[0] if m else None

    def containing(self, text: str) -> list[int]:
        """Ids of indexed texts that ``text`` is a passage of: at least ``threshold`` of its shingles occur there.

        Exact: such a text holds at least one of the probe's ``|s| - ceil(t |s|) + 1`` rarest shingles, so only the
        texts listed under those are checked. Probes under :data:`MIN_PASSAGE_WORDS` words match nothing.

        Example:
            >>> idx = NearDuplicateIndex(NearDuplicateRule(), ["a b c d e f g h i j k l m n o p q r s t"])
            >>> idx.containing("c d e f g h i j k l m n o"), idx.containing("c d e f")
            ([0], [])
        """
        sk = skeleton(text)
        if len(sk.split()) < MIN_PASSAGE_WORDS:
            return []
        if self._all_postings is None:
            self._all_postings = defaultdict(list)
            for i, sh in enumerate(self._shingles):
                for s in sh:
                    self._all_postings[s].append(i)
        sh = _shingles(sk, self.rule.ngram)
        need = math.ceil(self.rule.threshold * len(sh))
        found = []
        seen: set[int] = set()
        for s in self._prefix(sh):
            for j in self._all_postings.get(s, ()):
                if j not in seen:
                    seen.add(j)
                    if len(sh & self._shingles[j]) >= need:
                        found.append(j)
        return sorted(found)


def families(columns: Sequence[Sequence[str]], rule: NearDuplicateRule) -> list[int]:
    """Family id of every record: records ``i`` and ``j`` share a family when, in some column, their texts are
    near-duplicates or one is a passage of the other (transitively) — exactly what the leakage checks would
    call the same text. A family's id is its smallest record index.

    Args:
        columns: one text per record per column (e.g. ``[titles, descriptions]``); a text is only compared with
            texts of the same column.
    """
    n = len(columns[0]) if columns else 0
    if any(len(c) != n for c in columns):
        raise ValueError("families: every column needs one text per record")
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for col in columns:
        index = NearDuplicateIndex(rule, col)
        for i, text in enumerate(col):
            for j in (*index.matches(text), *index.containing(text)):
                ri, rj = find(i), find(j)
                if ri != rj:
                    parent[max(ri, rj)] = min(ri, rj)
    return [find(i) for i in range(n)]
