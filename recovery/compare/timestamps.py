"""Deploy-time attribution: parsing ``--since`` and finding/judging timestamp columns.

Values may be ISO-8601 text (with or without ``T``, fractional seconds or a zone) or Unix epochs
(seconds or milliseconds). Comparison happens inside SQLite on Julian day numbers; naive values
are taken as they are stored, zoned ones are converted to UTC (as SQLite's ``julianday`` does).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from sqlglot import exp

from recovery.errors import RecoveryError
from recovery.engine.schema import Table
from recovery.engine.sqlbuild import float_div

CREATED_NAMES = (
    "created_at",
    "created",
    "created_on",
    "inserted_at",
    "date_created",
    "creation_time",
    "uploaded_at",
)
UPDATED_NAMES = (
    "updated_at",
    "modified_at",
    "updated",
    "modified",
    "updated_on",
    "last_modified",
    "changed_at",
)
_TIME_TYPES = ("DATE", "TIME", "TEXT", "CHAR", "INT", "REAL", "NUMERIC", "FLOAT", "DOUBLE", "")

_UNIX_EPOCH_JD = 2440587.5
_NUMBER = re.compile(r"-?\d+(\.\d+)?")
_STAMP = re.compile(r"(\d{8})(?:[_T]?(\d{6}))?")


def parse_since(text: str) -> tuple[float, str]:
    """``--since`` → (Julian day, normalised ISO text). Raises a one-line error when malformed."""
    raw = str(text).strip()
    bad = RecoveryError(
        f"--since {raw!r} is not a timestamp",
        "use ISO-8601 such as 2026-11-20T14:00:00 (zone optional) or a Unix epoch",
    )
    stamp = _STAMP.fullmatch(raw)
    if stamp:  # the backup-name form 20261120_140000 (or a bare 20261120), not an epoch
        try:
            dt = datetime.strptime(stamp.group(1) + (stamp.group(2) or "000000"), "%Y%m%d%H%M%S")
        except ValueError:
            raise bad from None
        return _jd(dt), dt.isoformat(sep="T")
    if _NUMBER.fullmatch(raw):  # plain digits only: float() would also take "1_0", "inf", "nan"
        value = float(raw)
        seconds = value / 1000.0 if abs(value) > 1e11 else value
        try:
            dt = datetime.fromtimestamp(seconds, UTC).replace(tzinfo=None)
        except (OverflowError, OSError, ValueError):
            raise bad from None
        return _jd(dt), dt.isoformat(sep="T")
    try:
        dt = datetime.fromisoformat(raw)
    except ValueError:
        raise bad from None
    if dt.tzinfo is not None:
        dt = dt.astimezone(UTC).replace(tzinfo=None)
    return _jd(dt), dt.isoformat(sep="T")


def _jd(dt: datetime) -> float:
    return (dt - datetime(1970, 1, 1)).total_seconds() / 86400.0 + _UNIX_EPOCH_JD


def find_timestamp_columns(t: Table, override: dict[str, str] | None = None) -> dict[str, str]:
    """{"created": col, "updated": col} for the columns found by name and type (or given)."""
    found: dict[str, str] = {}
    for role, names in (("created", CREATED_NAMES), ("updated", UPDATED_NAMES)):
        if override and role in override:
            if t.column(override[role]) is not None:
                found[role] = override[role]
            continue
        for n in names:
            c = t.column(n)
            if c is not None and any(k in c.type.upper() for k in _TIME_TYPES):
                found[role] = n
                break
    if "updated" not in found and "created" in found:
        found["updated"] = found["created"]
    return found


def julian(value: exp.Expression) -> exp.Expression:
    """SQL turning an ISO text or a Unix epoch (s or ms) into a Julian day number. On PostgreSQL
    one ``julianday(value)`` overloaded per type (:func:`recovery.engine.postgres.install_sqlite_compat`):
    a text column cannot be compared with a number there."""
    from recovery.engine.sqlbuild import current_dialect

    if current_dialect() == "postgres":
        return exp.Anonymous(this="julianday", expressions=[value.copy()])
    typeof = exp.Anonymous(this="typeof", expressions=[value.copy()])
    is_number = exp.In(
        this=typeof, expressions=[exp.Literal.string("integer"), exp.Literal.string("real")]
    )
    is_millis = exp.GT(this=value.copy(), expression=exp.Literal.number(100000000000))
    seconds = exp.Case(
        ifs=[
            exp.If(
                this=is_millis,
                true=float_div(value.copy(), exp.Literal.number("1000.0")),
            )
        ],
        default=value.copy(),
    )
    epoch = exp.Anonymous(this="julianday", expressions=[seconds, exp.Literal.string("unixepoch")])
    text = exp.Anonymous(this="julianday", expressions=[value.copy()])
    return exp.Case(ifs=[exp.If(this=is_number, true=epoch)], default=text)


def after_expr(value: exp.Expression, since_jd: float) -> exp.Expression:
    """``julian(value) > since`` — NULL when the value is NULL or not a date."""
    return exp.GT(this=julian(value), expression=exp.Literal.number(repr(since_jd)))
