"""``Outcome``: what a re-import did — rows applied, keys remapped, conflicts and their resolution,
lost values, files, verification. Made by reimport/relink/verify, read by the report renderers.

Conflict kinds (``../DESIGN.md``): ``primary_key``, ``unique``, ``missing_parent``, ``constraint``,
``update_update``, ``update_deleted``. Resolutions: ``applied``, ``remapped``, ``skipped``,
``kept_target``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import IO, Any

from recovery.model.kinds import ConflictKind, Resolution, RowKind
from recovery.model.spill import LazyMap, SpillList, spill_after
from recovery.model.values import LostValues

CONFLICT_KINDS: tuple[ConflictKind, ...] = tuple(ConflictKind)
"""Every conflict kind, in :class:`ConflictKind`'s order."""
RESOLUTIONS: tuple[Resolution, ...] = tuple(Resolution)
"""Every resolution, in :class:`Resolution`'s order."""


class ConflictPolicy(str, Enum):
    """What to do with a bundle row that collides with the target."""

    REMAP = "remap"
    """A primary key taken by a different row gets a fresh key and every bundle reference follows;
    unique clashes, missing parents and update conflicts skip the whole unit and are reported."""
    SKIP = "skip"
    """Every conflicting unit is skipped and reported; nothing is remapped."""
    ABORT = "abort"
    """Any conflict: change nothing, report, exit non-zero."""


class Prefer(str, Enum):
    """Which value wins a cell changed differently after the deploy and in the target since."""

    DB = "db"
    """Keep the target database's value (default) and report both."""
    BUNDLE = "bundle"
    """Take the bundle's value and report both."""


class ConflictMode(str, Enum):
    """How finely a row changed both after the deploy and in the target since is compared
    (``--conflicts``)."""

    CELL = "cell"
    """Column by column (default): edits to different columns of a row merge; only a column both
    sides changed to different values is an ``update_update`` conflict. A JSON object/array cell
    is merged key by key (:mod:`recovery.reimport.jsonmerge`): only the same JSON path changed differently
    is a conflict."""
    ROW = "row"
    """Row by row (Dolt's stricter mode): any change to the same row on both sides is one
    ``update_update`` conflict, resolved by ``--prefer`` as a whole row — ``db`` keeps the target's
    row untouched, ``bundle`` takes the bundle's row (every mapped column)."""


@dataclass(frozen=True)
class Conflict:
    """A unit of bundle rows that collided with the target, and what was done with it. ``kind``
    and ``resolution`` given as their text are read as the enum members (a text that is not one
    raises ``ValueError``)."""

    kind: ConflictKind
    table: str
    key: tuple[Any, ...]
    resolution: Resolution
    column: str | None = None
    bundle_value: Any = None
    target_value: Any = None
    base_value: Any = None
    label: str | None = None
    detail: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", ConflictKind(self.kind))
        object.__setattr__(self, "resolution", Resolution(self.resolution))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["key"] = list(self.key)
        return d


@dataclass(frozen=True)
class Remap:
    table: str
    old_key: Any
    new_key: Any


@dataclass
class TableOutcome:
    table: str
    bundle_inserted: int = 0
    bundle_updated: int = 0
    bundle_deleted: int = 0
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    skipped: int = 0
    remapped: int = 0
    already_present: int = 0
    rows_before: int = 0
    rows_after: int = 0
    lost: int = 0


@dataclass
class Outcome:
    bundle_id: str
    target: str
    policy: str
    dry_run: bool
    already_applied: bool = False
    tables: dict[str, TableOutcome] = field(default_factory=dict)
    conflicts: list[Conflict] = field(default_factory=list)
    remaps: list[Remap] = field(default_factory=list)
    lost: LostValues = field(default_factory=LostValues)
    """Lost values: the first 1,000 by (table, key, column) with the exact ``total``; the complete
    list stays in the bundle's rows.db (``lost_total``; every one:
    :func:`recovery.report.lost.iter_outcome_lost`). A plain list given here is read as a
    complete sample."""
    deletes_for_review: list[dict[str, Any]] = field(default_factory=list)
    skipped_rows: list[dict[str, Any]] = field(default_factory=list)
    """Bundle rows not carried because their unit was skipped (a conflict elsewhere in the unit);
    the conflicting rows themselves are in ``conflicts``."""
    files: dict[str, Any] | None = None
    verification: dict[str, Any] = field(default_factory=dict)
    aborted: bool = False
    triggers_suspended: list[str] = field(default_factory=list)
    """The target's triggers dropped while the re-import wrote and re-created (byte-identical)
    before its commit: they did not fire for the rows the tool carried."""
    sequences: list[dict[str, Any]] = field(default_factory=list)
    """AUTOINCREMENT counters after the re-import: ``{"table", "backup", "live", "max_id", "seq"}``."""
    conflicts_mode: str = ConflictMode.CELL.value
    """``--conflicts``: a :class:`ConflictMode` value (``cell`` or ``row``)."""
    set_columns: dict[str, frozenset[str]] | None = field(default=None, compare=False, repr=False)
    """In memory only, never saved: table → lower-cased names of the columns an UPDATE of this
    re-import set (any attempt's). None when not known (an outcome read back from its file):
    :func:`recovery.verify.checks.verify_written` then probes every row the bundle names."""

    def __post_init__(self) -> None:
        if not isinstance(self.lost, LostValues):
            self.lost = LostValues(self.lost)

    def __setattr__(self, name: str, value: Any) -> None:
        """The lists that grow with the rows of a run (``conflicts``, ``deletes_for_review``,
        ``skipped_rows``) are held as :class:`SpillList` s, whatever list is assigned: bounded
        memory at any size, the same items in the same order."""
        if name in _SPILLED and not isinstance(value, SpillList):
            value = _spill_list(name, value)
        object.__setattr__(self, name, value)

    @property
    def needs_review(self) -> bool:
        """Anything but "all recovered" (:meth:`verdict`, without the late-commit check)."""
        return self.verdict().verdict != ALL_RECOVERED

    @property
    def lost_total(self) -> int:
        """Exact number of lost values (``lost`` may hold only a sample of them)."""
        lost = self.lost
        return max(lost.total, len(lost)) if isinstance(lost, LostValues) else len(lost)

    @property
    def lost_truncated(self) -> bool:
        return self.lost_total > len(self.lost)

    def lost_by_table(self) -> dict[str, int]:
        counts = self.lost.counts if isinstance(self.lost, LostValues) else None
        if counts and self.lost_truncated:
            return {t: sum(cols.values()) for t, cols in counts.items()}
        out: dict[str, int] = {}
        for item in self.lost:
            out[item["table"]] = out.get(item["table"], 0) + 1
        return out

    def not_carried(self) -> list[dict[str, Any]]:
        """Every bundle record the re-import did not carry, once per (table, key): the conflicting
        rows whose unit was skipped (``unique``, ``update_deleted``, ``constraint`` …) and the rows
        skipped with their unit (``skipped_rows``)."""
        out: dict[tuple[str, tuple[Any, ...]], dict[str, Any]] = {}
        for c in self.conflicts:
            if c.resolution == Resolution.SKIPPED:
                k = (c.table, tuple(c.key))
                if k not in out:
                    out[k] = {
                        "table": c.table,
                        "key": list(c.key),
                        "label": c.label,
                        "reason": f"{c.kind.replace('_', ' ')} conflict"
                        + (f": {c.detail}" if c.detail else ""),
                    }
        for r in self.skipped_rows:
            key = r.get("key")
            k = (r["table"], tuple(key) if isinstance(key, (list, tuple)) else (key,))
            if k not in out:
                out[k] = {
                    "table": r["table"],
                    "key": list(k[1]),
                    "label": r.get("label"),
                    "reason": str(r.get("reason") or "its unit was skipped"),
                }
        return list(out.values())

    def verdict(self, late: dict[str, Any] | None = None) -> Verdict:
        """The one verdict of this outcome (with the end-of-run late-commit check ``late``)."""
        files = self.files or {}
        v = self.verification or {}
        return judge(
            aborted=self.aborted,
            verification_failed=bool(v) and not v.get("ok"),
            lost=self.lost_total,
            conflicts=len(self.conflicts),
            not_carried=len(self.not_carried()),
            deletes_for_review=len(self.deletes_for_review),
            files_missing=_count(files.get("missing")),
            files_unsafe=_count(files.get("unsafe")),
            late=late,
        )

    @property
    def exit_code(self) -> int:
        return self.verdict().exit_code

    def to_json(self) -> str:
        """The saved form (``outcome.json``, format ``recovery-outcome/1``; docs/REPORT.md)."""
        return outcome_to_json(self)

    def write_json(self, fh: IO[str]) -> None:
        """Write :meth:`to_json`'s text to ``fh`` piece by piece (the long lists item by item,
        never the whole text in memory)."""
        for chunk in outcome_json_chunks(self):
            fh.write(chunk)

    @staticmethod
    def from_json(text: str | bytes) -> Outcome:
        """Read the saved form back; refuses (``OutcomeFormatError``) anything but that exact shape."""
        return outcome_from_json(text)

    def to_dict(self) -> dict[str, Any]:
        return {
            "bundle_id": self.bundle_id,
            "target": self.target,
            "policy": self.policy,
            "dry_run": self.dry_run,
            "already_applied": self.already_applied,
            "aborted": self.aborted,
            "tables": {n: asdict(t) for n, t in sorted(self.tables.items())},
            "conflicts": _listed(Conflict.to_dict, self.conflicts),
            "remapped": [asdict(r) for r in self.remaps],
            "lost": list(self.lost),
            "lost_total": self.lost_total,
            "lost_truncated": self.lost_truncated,
            "deletes_for_review": self.deletes_for_review,
            "skipped_rows": self.skipped_rows,
            "files": self.files,
            "verification": self.verification,
            "triggers_suspended": self.triggers_suspended,
            "sequences": self.sequences,
            "conflicts_mode": self.conflicts_mode,
            "totals": {
                RowKind.INSERTED: sum(t.inserted for t in self.tables.values()),
                RowKind.UPDATED: sum(t.updated for t in self.tables.values()),
                RowKind.DELETED: sum(t.deleted for t in self.tables.values()),
                "skipped": sum(t.skipped for t in self.tables.values()),
                "remapped": len(self.remaps),
                "conflicts": len(self.conflicts),
                "lost": self.lost_total,
            },
        }


# ---------------------------------------------------------------------------------------------
# the verdict: one function over the outcome, read by the terminal, the exit code and every report

ALL_RECOVERED = "all recovered"
REVIEW_NEEDED = "review needed"
FAILED = "failed"
VERDICT_EXIT = {ALL_RECOVERED: 0, REVIEW_NEEDED: 1, FAILED: 3}
"""Each verdict's exit code (``recovery.errors.ExitCode``: OK, REVIEW, FAILED)."""


@dataclass(frozen=True)
class Verdict:
    """``verdict``: one of :data:`VERDICT_EXIT`'s keys; ``reasons``: plain sentences, one per
    thing to look at (empty exactly when everything was recovered)."""

    verdict: str
    reasons: tuple[str, ...] = ()

    @property
    def exit_code(self) -> int:
        return VERDICT_EXIT[self.verdict]

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "reasons": list(self.reasons), "exit_code": self.exit_code}


def _count(v: Any) -> int:
    """A count from a list (the relink's ``missing``), a number, or nothing."""
    if isinstance(v, bool) or v is None:
        return 0
    if isinstance(v, int):
        return v
    return len(v) if isinstance(v, (list, tuple, dict)) else 0


def judge(
    *,
    aborted: bool = False,
    verification_failed: bool = False,
    lost: int = 0,
    conflicts: int = 0,
    not_carried: int = 0,
    deletes_for_review: int = 0,
    files_missing: int = 0,
    files_unsafe: int = 0,
    late: dict[str, Any] | None = None,
    run_files: bool = True,
) -> Verdict:
    """The verdict from the facts of a run (or of a bundle before its re-import): ``failed`` when
    the re-import aborted or verification failed, else ``review needed`` when anything is left for
    a person (lost values, conflicts, records not carried, rows restored for review, files missing
    or unsafe, late commits into the replaced database), else ``all recovered``. ``run_files``:
    the reasons name the run folder's file that lists each (off for a bundle report, which has none)."""
    reasons = []
    if aborted:
        reasons.append("the re-import aborted on conflicts: nothing was re-imported")
    if verification_failed:
        reasons.append("verification failed (integrity, foreign keys, row counts or revision)")
    if not_carried:
        reasons.append(
            f"{not_carried} record(s) not carried back"
            + (", listed whole in not_carried.csv" if run_files else "")
        )
    if lost:
        reasons.append(
            f"{lost} value(s) with no place in the old release"
            + (", listed in lost_values.csv" if run_files else "")
        )
    if conflicts:
        reasons.append(f"{conflicts} conflict(s), listed in conflicts.csv")
    if deletes_for_review:
        reasons.append(
            f"{deletes_for_review} row(s) deleted after the deploy were restored, listed in "
            "deletes_for_review.csv (delete them again with `recovery apply-deletes`)"
        )
    if files_missing:
        reasons.append(f"{files_missing} uploaded file(s) missing")
    if files_unsafe:
        reasons.append(f"{files_unsafe} uploaded file path(s) refused as unsafe")
    late = late or {}
    if late.get("needs_review"):
        n = late.get("late_commits") if late.get("checked") else None
        reasons.append(
            f"{'an unknown number of' if n is None else n} row change(s) committed into the replaced "
            "database after the safety copy are not in the restored one, listed in late_commits.json"
        )
    if aborted or verification_failed:
        return Verdict(FAILED, tuple(reasons))
    return Verdict(REVIEW_NEEDED if reasons else ALL_RECOVERED, tuple(reasons))


def verdict_exit_code(verdict: str | None) -> int:
    """The exit code of a verdict as written in report.json (an unknown one: review)."""
    return VERDICT_EXIT.get(str(verdict), 1)


# ---------------------------------------------------------------------------------------------
# the saved outcome: versioned JSON (never pickle), read back with strict validation

OUTCOME_FORMAT = "recovery-outcome/1"
"""The ``format`` field of ``outcome.json`` (docs/REPORT.md describes the shape)."""


class OutcomeFormatError(ValueError):
    """A saved outcome that is not exactly the documented shape; the message names the field."""


_SAME = frozenset({str, int, bool})
"""The exact types :func:`encode_value` returns unchanged whatever their value (a float may be
NaN or infinite, which JSON cannot hold)."""


def encode_value(v: Any) -> Any:
    """``v`` as JSON: scalars as themselves, lists as lists, dicts with text keys as objects; the
    values JSON has no form for are tagged objects with one ``$``-key: ``{"$bytes": hex}``,
    ``{"$float": "inf"|"-inf"|"nan"}``, ``{"$tuple": [...]}``, and ``{"$dict": [[k, v], ...]}``
    for a dict whose keys are not all text or start with ``$``."""
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v if v == v and v not in (float("inf"), float("-inf")) else {"$float": repr(v)}
    if isinstance(v, (bytes, bytearray, memoryview)):
        return {"$bytes": bytes(v).hex()}
    if isinstance(v, tuple):
        return {"$tuple": [encode_value(x) for x in v]}
    if isinstance(v, list):  # text, integers and None are themselves: no call for them
        return [x if x is None or type(x) in _SAME else encode_value(x) for x in v]
    if isinstance(v, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in v):
            return {
                k: x if x is None or type(x) in _SAME else encode_value(x) for k, x in v.items()
            }
        return {"$dict": [[encode_value(k), encode_value(x)] for k, x in v.items()]}
    raise TypeError(f"cannot save a {type(v).__name__} in outcome.json")


_SCALARS = frozenset({str, int, float, bool})
"""The exact types :func:`decode_value` returns unchanged (what ``json.loads`` gives for scalars)."""


def decode_value(v: Any, where: str = "value") -> Any:
    """The inverse of :func:`encode_value`; anything else is refused with the path of the field."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, list):  # a scalar item is itself: no path text made for it
        return [
            x if x is None or type(x) in _SCALARS else decode_value(x, f"{where}[{i}]")
            for i, x in enumerate(v)
        ]
    if not isinstance(v, dict):
        raise OutcomeFormatError(f"{where}: unexpected {type(v).__name__}")
    tags = [k for k in v if k.startswith("$")]
    if not tags:
        return {
            k: x if x is None or type(x) in _SCALARS else decode_value(x, f"{where}.{k}")
            for k, x in v.items()
        }
    if len(v) != 1:
        raise OutcomeFormatError(f"{where}: a tagged value has exactly one key")
    tag, body = tags[0], v[tags[0]]
    if tag == "$bytes" and isinstance(body, str):
        try:
            return bytes.fromhex(body)
        except ValueError:
            raise OutcomeFormatError(f"{where}: $bytes is not hex") from None
    if tag == "$float" and body in ("inf", "-inf", "nan"):
        return float(body)
    if tag == "$tuple" and isinstance(body, list):
        return tuple(decode_value(x, f"{where}[{i}]") for i, x in enumerate(body))
    if (
        tag == "$dict"
        and isinstance(body, list)
        and all(isinstance(p, list) and len(p) == 2 for p in body)
    ):
        out = {}
        for i, (k, x) in enumerate(body):
            key = decode_value(k, f"{where}.$dict[{i}]")
            try:
                out[key] = decode_value(x, f"{where}.$dict[{i}]")
            except TypeError:
                raise OutcomeFormatError(
                    f"{where}.$dict[{i}]: a key must be a scalar or tuple"
                ) from None
        return out
    raise OutcomeFormatError(f"{where}: unknown or malformed tag {tag!r}")


def _expect(value: Any, kind: type | tuple[type, ...], where: str) -> Any:
    ok = isinstance(value, kind) and not (isinstance(value, bool) and kind in (int, (int,)))
    if not ok:
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise OutcomeFormatError(f"{where}: expected {names}, found {type(value).__name__}")
    return value


def _fields(
    obj: Any, names: set[str], where: str, optional: frozenset[str] | set[str] = frozenset()
) -> dict[str, Any]:
    _expect(obj, dict, where)
    assert isinstance(obj, dict)
    unknown, missing = set(obj) - names, names - optional - set(obj)
    if unknown:
        raise OutcomeFormatError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    if missing:
        raise OutcomeFormatError(f"{where}: missing field(s) {', '.join(sorted(missing))}")
    fields: dict[str, Any] = obj
    return fields


_SPILLED = frozenset({"conflicts", "deletes_for_review", "skipped_rows"})
"""The outcome's lists that grow with the rows of a run: held as :class:`SpillList` s."""


def _conflict_data(c: Conflict) -> dict[str, Any]:
    return {f: encode_value(getattr(c, f)) for f in _CONFLICT_FIELDS}


def _encode_conflict(c: Conflict) -> str:
    import json

    # keys sorted as in outcome.json, so a spilled item reads back as the saved file gives it
    return json.dumps(_conflict_data(c), ensure_ascii=False, allow_nan=False, sort_keys=True)


def _decode_conflict(text: str) -> Conflict:
    import json

    vals = {f: decode_value(v) for f, v in json.loads(text).items()}
    return Conflict(**vals)


def _encode_item(v: Any) -> str:
    import json

    # keys sorted as in outcome.json, so a spilled item reads back as the saved file gives it
    return json.dumps(encode_value(v), ensure_ascii=False, allow_nan=False, sort_keys=True)


encode_item = _encode_item
"""The text an item of the outcome's long lists (but conflicts) is spilled and saved as; a producer
that writes that text itself hands it to :meth:`SpillList.extend_rows` of a list that
:meth:`SpillList.encodes_with` it."""


def _decode_item(text: str) -> Any:
    """The inverse of :func:`_encode_item`. Text without ``"$`` holds no tagged value (every tag
    and every ``$``-key is a JSON string starting with ``$``), so what ``json.loads`` gives is
    already :func:`decode_value`'s result: the walk is skipped for it."""
    import json

    value = json.loads(text)
    return value if '"$' not in text else decode_value(value)


def item_keys(items: list[dict[str, Any]]) -> set[Any]:
    """The union of the keys of the dicts ``items``. The spilled items of a list the outcome
    spills as :func:`_encode_item` text (deletes for review, skipped rows) are not decoded: their
    keys are those of the stored JSON objects (SQLite reads them) unless a key starts with ``$``
    (a tagged encoding, e.g. a dict with non-text keys), and then they are decoded after all."""
    if isinstance(items, SpillList) and items.spilled and items.encodes_with(_encode_item):
        stored = items.stored_object_keys()
        if stored is not None and not any(k.startswith("$") for k in stored):
            return stored.union(*(r.keys() for r in list.__iter__(items)))
    return {k for r in items for k in r}


def keys_are_lists(items: list[dict[str, Any]]) -> bool:
    """Whether every item's ``key`` is a list. The spilled items of a list the outcome spills as
    :func:`_encode_item` text are not decoded: a stored JSON array is a list once decoded, and
    anything else (a ``$tuple``-tagged key, no key) is not."""
    if isinstance(items, SpillList) and items.spilled and items.encodes_with(_encode_item):
        if items.stored_json_types("$.key") != {"array"}:
            return False
        return all(isinstance(d.get("key"), list) for d in list.__iter__(items))
    return all(isinstance(d.get("key"), list) for d in items)


def _listed(fn: Any, items: list[Any]) -> list[Any]:
    """``fn`` of every item: a plain list while ``items`` is all in memory, else a
    :class:`LazyMap` (computed as the writer iterates it)."""
    if isinstance(items, SpillList) and items.spilled:
        return LazyMap(fn, items)
    return [fn(x) for x in items]


def _spill_list(name: str, items: Iterable[Any]) -> SpillList[Any]:
    """A :class:`SpillList` for the outcome's list ``name`` holding ``items``."""
    if name == "conflicts":
        return SpillList(items, encode=_encode_conflict, decode=_decode_conflict)
    return SpillList(items, encode=_encode_item, decode=_decode_item)


_OUTCOME_FIELDS = {
    "format",
    "bundle_id",
    "target",
    "policy",
    "dry_run",
    "already_applied",
    "aborted",
    "tables",
    "conflicts",
    "remaps",
    "lost",
    "deletes_for_review",
    "skipped_rows",
    "files",
    "verification",
}
_OUTCOME_OPTIONAL = {"conflicts_mode", "triggers_suspended", "sequences"}
"""Fields an older ``outcome.json`` may lack (read with their default)."""
_TABLE_INTS = [f for f in TableOutcome.__dataclass_fields__ if f != "table"]
_CONFLICT_FIELDS = set(Conflict.__dataclass_fields__)
_LOST_FIELDS = {"sample", "total", "counts", "source"}


def _outcome_to_data(o: Outcome) -> dict[str, Any]:
    lost = o.lost
    return {
        "format": OUTCOME_FORMAT,
        "bundle_id": o.bundle_id,
        "target": o.target,
        "policy": o.policy,
        "dry_run": o.dry_run,
        "already_applied": o.already_applied,
        "aborted": o.aborted,
        "tables": {n: {f: getattr(t, f) for f in _TABLE_INTS} for n, t in o.tables.items()},
        "conflicts": LazyMap(_conflict_data, o.conflicts),
        "remaps": [
            {
                "table": r.table,
                "old_key": encode_value(r.old_key),
                "new_key": encode_value(r.new_key),
            }
            for r in o.remaps
        ],
        "lost": {
            "sample": encode_value(list(lost)),
            "total": o.lost_total,
            "counts": encode_value(getattr(lost, "counts", None) or {}),
            "source": getattr(lost, "source", None),
        },
        "deletes_for_review": LazyMap(encode_value, o.deletes_for_review),
        "skipped_rows": LazyMap(encode_value, o.skipped_rows),
        "files": encode_value(o.files),
        "verification": encode_value(o.verification),
        "conflicts_mode": o.conflicts_mode,
        "triggers_suspended": list(o.triggers_suspended),
        "sequences": encode_value(o.sequences),
    }


def _spilled_dicts(v: Any, where: str) -> SpillList[Any]:
    """The saved list of objects ``v`` decoded item by item into a :class:`SpillList` (each
    parsed item freed once read)."""
    items = _expect(v, list, where)
    out = _spill_list(where, ())

    def decoded() -> Iterator[Any]:
        for i, item in enumerate(items):
            if not isinstance(items, SpillList):
                items[i] = None  # each parsed item freed once read
            yield _expect(decode_value(item, f"{where}[{i}]"), dict, f"{where}[{i}]")

    out.extend(decoded())  # spilled in batches, not one write per item
    return out


def _list_of_dicts(v: Any, where: str) -> list[dict[str, Any]]:
    items = decode_value(_expect(v, list, where), where)
    assert isinstance(items, list)
    for i, item in enumerate(items):
        _expect(item, dict, f"{where}[{i}]")
    return items


def _outcome_from_data(d: Any) -> Outcome:
    _fields(d, _OUTCOME_FIELDS | _OUTCOME_OPTIONAL, "outcome", _OUTCOME_OPTIONAL)
    mode = _expect(d.get("conflicts_mode", ConflictMode.CELL.value), str, "conflicts_mode")
    if mode not in {m.value for m in ConflictMode}:
        raise OutcomeFormatError(f"conflicts_mode: {mode!r} is not one of cell, row")
    if d["format"] != OUTCOME_FORMAT:
        raise OutcomeFormatError(f"format: {d['format']!r} is not {OUTCOME_FORMAT}")
    for f in ("bundle_id", "target", "policy"):
        _expect(d[f], str, f)
    for f in ("dry_run", "already_applied", "aborted"):
        _expect(d[f], bool, f)
    tables = {}
    for name, t in _expect(d["tables"], dict, "tables").items():
        _fields(t, set(_TABLE_INTS), f"tables.{name}")
        tables[name] = TableOutcome(
            name, **{f: _expect(t[f], int, f"tables.{name}.{f}") for f in _TABLE_INTS}
        )
    conflicts = _spill_list("conflicts", ())
    raw_conflicts = _expect(d["conflicts"], list, "conflicts")
    for i, c in enumerate(raw_conflicts):
        if not isinstance(raw_conflicts, SpillList):
            raw_conflicts[i] = None  # each parsed item freed once read
        where = f"conflicts[{i}]"
        _fields(c, _CONFLICT_FIELDS, where)
        vals = {f: decode_value(c[f], f"{where}.{f}") for f in _CONFLICT_FIELDS}
        if vals["kind"] not in CONFLICT_KINDS:
            raise OutcomeFormatError(f"{where}.kind: {vals['kind']!r} is not a conflict kind")
        if vals["resolution"] not in RESOLUTIONS:
            raise OutcomeFormatError(
                f"{where}.resolution: {vals['resolution']!r} is not a resolution"
            )
        _expect(vals["table"], str, f"{where}.table")
        vals["key"] = tuple(_expect(vals["key"], (list, tuple), f"{where}.key"))
        for f in ("column", "label"):
            if vals[f] is not None:
                _expect(vals[f], str, f"{where}.{f}")
        _expect(vals["detail"], str, f"{where}.detail")
        conflicts.append(Conflict(**vals))
    remaps = []
    for i, r in enumerate(_expect(d["remaps"], list, "remaps")):
        _fields(r, {"table", "old_key", "new_key"}, f"remaps[{i}]")
        remaps.append(
            Remap(
                _expect(r["table"], str, f"remaps[{i}].table"),
                decode_value(r["old_key"], f"remaps[{i}].old_key"),
                decode_value(r["new_key"], f"remaps[{i}].new_key"),
            )
        )
    lost_d = _fields(d["lost"], _LOST_FIELDS, "lost")
    sample = _list_of_dicts(lost_d["sample"], "lost.sample")
    counts = decode_value(_expect(lost_d["counts"], dict, "lost.counts"), "lost.counts")
    for t, cols in counts.items():
        for c, n in _expect(cols, dict, f"lost.counts.{t}").items():
            _expect(n, int, f"lost.counts.{t}.{c}")
    if lost_d["source"] is not None:
        _expect(lost_d["source"], str, "lost.source")
    lost = LostValues(sample, _expect(lost_d["total"], int, "lost.total"), counts, lost_d["source"])
    suspended = _expect(d.get("triggers_suspended", []), list, "triggers_suspended")
    for i, name in enumerate(suspended):
        _expect(name, str, f"triggers_suspended[{i}]")
    sequences = _list_of_dicts(d.get("sequences", []), "sequences")
    files = d["files"]
    if files is not None:
        files = decode_value(_expect(files, dict, "files"), "files")
    return Outcome(
        d["bundle_id"],
        d["target"],
        d["policy"],
        d["dry_run"],
        already_applied=d["already_applied"],
        tables=tables,
        conflicts=conflicts,
        remaps=remaps,
        lost=lost,
        deletes_for_review=_spilled_dicts(d["deletes_for_review"], "deletes_for_review"),
        skipped_rows=_spilled_dicts(d["skipped_rows"], "skipped_rows"),
        files=files,
        verification=decode_value(_expect(d["verification"], dict, "verification"), "verification"),
        aborted=d["aborted"],
        conflicts_mode=mode,
        triggers_suspended=suspended,
        sequences=sequences,
    )


def _as_saved(v: Any) -> Any:
    """``decode_value(json.loads(json.dumps(encode_value(v), sort_keys=True)))`` without the
    text: every dict :func:`encode_value` writes as an object gets its keys sorted, a subclass of
    a JSON scalar (a str or int enum) becomes the plain value JSON writes, a bytes-like value
    ``bytes``; tuples, ``$dict`` key order and everything else stay."""
    if v is None or type(v) in _SAME or type(v) is float:
        return v
    if isinstance(v, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in v):
            return {str.__str__(k): _as_saved(v[k]) for k in sorted(v)}
        return {_as_saved(k): _as_saved(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_as_saved(x) for x in v]
    if isinstance(v, tuple):
        return tuple(_as_saved(x) for x in v)
    if isinstance(v, str):
        return str.__str__(v)
    if isinstance(v, bool):
        return bool(v)
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        return float(v)
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v)
    raise TypeError(f"cannot save a {type(v).__name__} in outcome.json")


def _conflict_as_saved(c: Conflict) -> Conflict:
    vals = {f: _as_saved(getattr(c, f)) for f in _CONFLICT_FIELDS}
    vals["key"] = tuple(vals["key"])
    return Conflict(**vals)


def as_read_back(o: Outcome) -> Outcome:
    """``o`` changed in place into what ``Outcome.from_json(o.to_json())`` gives — the same
    values, types and dict key order (``outcome.json`` is written with sorted keys) — without
    writing or parsing the text; returns ``o``. A rollback keeps the re-import's outcome this way
    instead of reading back the file it has just written, so every report reads the same outcome
    whether the run went straight through or was resumed from ``outcome.json``. The long lists'
    spilled items already read back sorted (their items are encoded with sorted keys); the items
    held in memory are rebuilt (at most ``$RECOVERY_SPILL_AFTER`` per list)."""
    for f in ("bundle_id", "target", "policy", "conflicts_mode"):
        setattr(o, f, str.__str__(getattr(o, f)))
    for f in ("dry_run", "already_applied", "aborted"):
        setattr(o, f, bool(getattr(o, f)))
    o.tables = {str.__str__(name): o.tables[name] for name in sorted(o.tables)}
    for t in o.tables.values():
        t.table = str.__str__(t.table)
        for f in _TABLE_INTS:
            setattr(t, f, int(getattr(t, f)))
    o.conflicts.map_in_memory(_conflict_as_saved)  # type: ignore[attr-defined]
    o.remaps = [
        Remap(str.__str__(r.table), _as_saved(r.old_key), _as_saved(r.new_key)) for r in o.remaps
    ]
    lost = o.lost
    o.lost = LostValues(
        [_as_saved(d) for d in lost],
        o.lost_total,
        _as_saved(getattr(lost, "counts", None) or {}),
        getattr(lost, "source", None),
    )
    o.deletes_for_review.map_in_memory(_as_saved)  # type: ignore[attr-defined]
    o.skipped_rows.map_in_memory(_as_saved)  # type: ignore[attr-defined]
    o.files = None if o.files is None else _as_saved(o.files)
    o.verification = _as_saved(o.verification)
    o.triggers_suspended = [str.__str__(t) for t in o.triggers_suspended]
    o.sequences = _as_saved(o.sequences)
    return o


def outcome_to_json(outcome: Outcome) -> str:
    """``outcome`` as the text of ``outcome.json`` (format :data:`OUTCOME_FORMAT`)."""
    return "".join(outcome_json_chunks(outcome))


def outcome_json_chunks(outcome: Outcome) -> Iterator[str]:
    """The text of ``outcome.json`` in pieces: ``json.dumps(data, ensure_ascii=False,
    allow_nan=False, sort_keys=True)`` of the whole document, byte for byte, but with each long
    list (conflicts, deletes for review, skipped rows) written one item at a time."""
    import json
    import secrets

    def dumps(v: Any) -> str:
        return json.dumps(v, ensure_ascii=False, allow_nan=False, sort_keys=True)

    data = _outcome_to_data(outcome)
    lists: dict[str, Iterable[str]] = {}
    for name in sorted(_SPILLED):
        marker = f"\x00{name}:{secrets.token_hex(16)}\x00"
        lists[dumps(marker)] = _item_texts(name, getattr(outcome, name), data[name], dumps)
        data[name] = marker
    text = dumps(data)
    order = sorted(lists, key=text.index)
    at = 0
    for marker in order:
        cut = text.index(marker, at)
        yield text[at:cut]
        yield "["
        for n, item in enumerate(lists[marker]):
            yield (", " if n else "") + item
        yield "]"
        at = cut + len(marker)
    yield text[at:]


def _item_texts(name: str, items: Any, data: Iterable[Any], dumps: Any) -> Iterable[str]:
    """The saved text of each item of the outcome's long list ``name``: ``dumps`` of its data, or
    — for a :class:`SpillList` whose items are spilled as exactly that text (:func:`_encode_item`,
    :func:`_encode_conflict`: the same ``json.dumps`` of the same data) — the spilled items' text
    as stored, without decoding and encoding them again."""
    encode = _encode_conflict if name == "conflicts" else _encode_item
    if isinstance(items, SpillList) and items.encodes_with(encode):
        return items.encoded(encode)
    return (dumps(item) for item in data)


def outcome_from_json(text: str | bytes) -> Outcome:
    """Parse ``outcome.json``: only data, never code; every field is checked against the
    documented shape, and anything unknown, missing or mistyped raises :class:`OutcomeFormatError`.
    A long document is read with its long lists item by item (:func:`_loads_top_level`): what
    ``json.loads`` gives, without every item parsed in memory at once."""
    import json

    def bare(c: str) -> Any:
        raise OutcomeFormatError(f"bare {c}")

    try:
        streamed = len(text) > STREAM_LOAD_OVER or spill_after() == 0
        data = _loads_top_level(text, bare) if streamed else None
    except (ValueError, RecursionError):  # the whole-text parse below says what is wrong
        data = None
    if data is None:
        try:
            data = json.loads(text, parse_constant=bare)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise OutcomeFormatError(f"not valid JSON ({exc})") from None
    return _outcome_from_data(data)


STREAM_LOAD_OVER = 1 << 20
"""outcome.json texts longer than this (characters or bytes) are parsed list item by list item
(every text when ``$RECOVERY_SPILL_AFTER`` is 0, as the tests set it)."""


def _loads_top_level(text: str | bytes, bare: Any) -> dict[str, Any] | None:
    """``json.loads(text)`` for a JSON object whose long lists (:data:`_SPILLED`) become
    :class:`SpillList` s of their parsed items, each item parsed (and spilled) on its own; None
    when ``text`` is not an object. Malformed text raises ``ValueError``."""
    import json
    import re

    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode(json.detect_encoding(text), "surrogatepass")
    if text.startswith("\ufeff"):
        raise ValueError("a byte order mark")
    dec = json.JSONDecoder(parse_constant=bare)
    ws = re.compile(r"[ \t\n\r]*")

    def skip(i: int) -> int:
        return ws.match(text, i).end()  # type: ignore[union-attr]

    def expect(i: int, char: str) -> int:
        if text[i : i + 1] != char:
            raise ValueError(f"{char!r} expected at {i}")
        return skip(i + 1)

    i = skip(0)
    if text[i : i + 1] != "{":
        return None
    out: dict[str, Any] = {}
    i = skip(i + 1)
    while text[i : i + 1] != "}":
        if out:
            i = expect(i, ",")
        key, i = dec.raw_decode(text, i)
        if not isinstance(key, str):
            raise ValueError(f"a key expected at {i}")
        i = expect(skip(i), ":")
        if key in _SPILLED and text[i : i + 1] == "[":
            items: SpillList[Any] = SpillList(encode=json.dumps, decode=json.loads)
            at = [skip(i + 1)]  # where parsing stands (the generator moves it)

            def parsed(at: list[int]) -> Iterator[Any]:
                j, first = at[0], True
                while text[j : j + 1] != "]":
                    if not first:
                        j = expect(j, ",")
                    first = False
                    item, j = dec.raw_decode(text, j)
                    at[0] = j = skip(j)
                    yield item

            items.extend(parsed(at))  # spilled in batches, not one write per item
            out[key], i = items, at[0] + 1
        else:
            out[key], i = dec.raw_decode(text, i)
        i = skip(i)
    if skip(i + 1) != len(text):
        raise ValueError("extra data")
    return out
