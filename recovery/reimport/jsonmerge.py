"""Key-level three-way merge of one JSON document (a cell holding a JSON object or array).

The re-import (:mod:`recovery.reimport.detect.update`) decides in SQL which cells need it — changed after the
deploy *and* in the target since, all three values JSON objects/arrays — and only those cells
come here. The changes of each side are computed with deepdiff (base→bundle, base→target) as
sets of paths:

* a dict key added, removed or changed is a change at that key's path;
* an array of the same length whose items changed is changed item by item (index paths); an
  array whose length changed is one change of the whole array (positions shift: item edits of
  the other side cannot be placed reliably);
* a path is kept only if no shorter changed path contains it.

Two changes overlap when one path is a prefix of (or equal to) the other and the two sides do
not agree on the value there: an ``update_update`` conflict listing the paths of each side. The
merged document starts from the target's own (its key order is kept; keys the bundle adds go at
the end), takes every non-overlapping bundle change, and for each overlap the preferred side's
value at the shorter path. The text is written in the target document's own style when one of
the compact/spaced ``json.dumps`` styles reproduces it exactly, else compact.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


Path = tuple[Any, ...]
"""A path into a document: dict keys (str) and list indexes (int), outermost first."""

_MISSING = object()
"""The value at a path that does not exist (a removed key)."""

_STYLES = ((",", ":"), (", ", ": "))


class JsonMergeError(ValueError):
    """A document that cannot be merged key by key faithfully (an object with a duplicate key,
    nesting too deep for Python): the caller compares the cell as a whole instead."""


@dataclass(frozen=True)
class JsonMerge:
    """The result of :func:`merge_documents`."""

    merged: Any
    """The merged document (Python value)."""
    bundle_paths: tuple[str, ...]
    """Every path the bundle changed (``$.a.b[0]`` notation), sorted."""
    target_paths: tuple[str, ...]
    """Every path the target changed, sorted."""
    conflict_bundle: tuple[str, ...]
    """The bundle's paths that overlap a target change with another value."""
    conflict_target: tuple[str, ...]
    """The target's paths that overlap a bundle change with another value."""

    @property
    def conflicted(self) -> bool:
        return bool(self.conflict_bundle or self.conflict_target)


def path_text(path: Path) -> str:
    """``$`` followed by ``.key`` (JSON-quoted when not a plain identifier) and ``[i]`` parts."""
    out = "$"
    for p in path:
        if isinstance(p, int):
            out += f"[{p}]"
        elif p.isidentifier():
            out += f".{p}"
        else:
            out += "." + json.dumps(p, ensure_ascii=False)
    return out


def get(doc: Any, path: Path) -> Any:
    """The value at ``path`` in ``doc``, or :data:`_MISSING`."""
    for p in path:
        if isinstance(doc, dict) and isinstance(p, str) and p in doc:
            doc = doc[p]
        elif isinstance(doc, list) and isinstance(p, int) and 0 <= p < len(doc):
            doc = doc[p]
        else:
            return _MISSING
    return doc


def _put(doc: Any, path: Path, value: Any) -> Any:
    """``doc`` with ``value`` at ``path`` (:data:`_MISSING`: removed); containers copied on the way."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(doc, dict):
        out = dict(doc)
        inner = _put(doc.get(head, {}), rest, value) if rest else value
        if inner is _MISSING:
            out.pop(head, None)
        else:
            out[head] = inner
        return out
    if isinstance(doc, list) and isinstance(head, int) and 0 <= head < len(doc):
        out_l = list(doc)
        out_l[head] = _put(doc[head], rest, value) if rest else value
        return out_l
    return doc  # unreachable for paths of non-overlapping changes: the container is unchanged


def changes(base: Any, side: Any) -> dict[Path, Any]:
    """The paths ``side`` changed relative to ``base`` (deepdiff), each with its new value
    (:data:`_MISSING` for a removed key); arrays whose length changed count as one change."""
    from deepdiff import DeepDiff  # imported here: 0.2 s that most runs (no JSON cell) never need

    diff = DeepDiff(
        base, side, view="tree", ignore_order=False, verbose_level=2, threshold_to_diff_deeper=0
    )
    paths: set[Path] = set()
    for report, levels in diff.items():
        for level in levels:
            path = tuple(level.path(output_format="list"))
            if report.startswith("iterable_item_"):
                path = path[:-1]  # the array's length changed: the whole array
            paths.add(path)
    kept = {p for p in paths if not any(q != p and p[: len(q)] == q for q in paths)}
    return {p: get(side, p) for p in sorted(kept, key=_sort_key)}


def _sort_key(path: Path) -> tuple[Any, ...]:
    return tuple((0, p, "") if isinstance(p, int) else (1, 0, p) for p in path)


def _same(a: Any, b: Any) -> bool:
    """The same JSON value (``1``, ``1.0`` and ``true`` are different values here)."""
    if a is _MISSING or b is _MISSING:
        return a is b
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _overlap(p: Path, q: Path) -> bool:
    n = min(len(p), len(q))
    return p[:n] == q[:n]


def merge_documents(base: Any, theirs: Any, ours: Any, prefer_bundle: bool) -> JsonMerge:
    """Three-way merge of ``theirs`` (the bundle's) and ``ours`` (the target's) over ``base``."""
    mine, other = changes(base, theirs), changes(base, ours)
    c_b: set[Path] = set()
    c_t: set[Path] = set()
    for p in mine:
        for q in other:
            if _overlap(p, q) and not _same(
                get(theirs, min(p, q, key=len)), get(ours, min(p, q, key=len))
            ):
                c_b.add(p)
                c_t.add(q)
    merged = ours
    for p, v in mine.items():
        if p not in c_b:
            merged = _put(merged, p, v)
    if prefer_bundle:  # the bundle's value at each outermost overlapping path
        both = c_b | c_t
        for p in sorted(both, key=_sort_key):
            if not any(q != p and p[: len(q)] == q for q in both):
                merged = _put(merged, p, get(theirs, p))
    texts = lambda s: tuple(sorted(path_text(p) for p in s))  # noqa: E731
    return JsonMerge(merged, texts(mine), texts(other), texts(c_b), texts(c_t))


def dumps_like(value: Any, target_text: str) -> str:
    """``value`` as JSON text in the style of ``target_text`` (the target's own document) when a
    compact or spaced ``json.dumps`` reproduces that text exactly; else compact, non-ASCII kept."""
    try:
        parsed = json.loads(target_text)
    except ValueError:
        parsed = _MISSING
    if parsed is not _MISSING:
        for seps in _STYLES:
            for ascii_only in (False, True):
                if json.dumps(parsed, separators=seps, ensure_ascii=ascii_only) == target_text:
                    return json.dumps(value, separators=seps, ensure_ascii=ascii_only)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=False)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise JsonMergeError("an object has a duplicate key")
    return out


def parse(text: str) -> Any:
    """``text`` as a Python value; :class:`JsonMergeError` for what a merge could not keep."""
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except RecursionError:
        raise JsonMergeError("nested too deep") from None
    except ValueError as exc:
        raise JsonMergeError(str(exc)) from None


def merge_texts(base: str, theirs: str, ours: str, prefer_bundle: bool) -> tuple[str, JsonMerge]:
    """:func:`merge_documents` on the three JSON texts; the merged text in the target's style.
    Raises :class:`JsonMergeError` for a document that cannot be merged faithfully."""
    try:
        result = merge_documents(parse(base), parse(theirs), parse(ours), prefer_bundle)
        return dumps_like(result.merged, ours), result
    except RecursionError:
        raise JsonMergeError("nested too deep") from None
