"""The re-import's plan as executed: every statement that writes, in order, with its bound values.

Every write of the re-import (TEMP staging tables, skip sets, remaps, the inserts and updates,
trigger suspension and re-creation, AUTOINCREMENT carry-forward, the ``_recovery_applied``
bookkeeping) goes through one :class:`Script`. It executes the statement on the target connection
and, once SQLite accepted it, appends it as a :class:`Step`. A ``ROLLBACK TO`` a savepoint drops the
steps it undid, so the list is always the net sequence that produced the connection's state:
:meth:`Script.render` writes it as an SQL script (bound values as SQLite literals, via sqlglot)
that, applied with the ``sqlite3`` shell or ``executescript`` to a copy of the target taken before
the re-import, gives the same database. Reads (detection queries) are not steps: they change
nothing.
"""

from __future__ import annotations

import math
import os
import sqlite3
import struct
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeAlias

from sqlglot import exp
from sqlglot.tokens import Tokenizer, TokenType

from recovery.engine.sqlbuild import sql
from recovery.model.spill import SPILL_ENV, spill_after

Statement: TypeAlias = exp.Expression | str
"""A sqlglot tree, or (only for the application's own trigger DDL, kept byte for byte) SQL text."""


def literal(value: Any) -> str:
    """``value`` as the SQLite literal text that stores what binding it stores: integers and reals
    keep their storage class (a real as :func:`_real` writes it reads back as the same double), text is quoted by sqlglot, bytes are ``X'…'``, NaN binds as NULL."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "NULL"
    if isinstance(value, (bool, int)):
        return str(int(value))
    if isinstance(value, float):
        return _real(value) if math.isfinite(value) else ("9e999" if value > 0 else "-9e999")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"X'{bytes(value).hex()}'"
    return exp.Literal.string(str(value)).sql(dialect="sqlite")


_READER = sqlite3.connect(":memory:", check_same_thread=False)


def _real(value: float) -> str:
    """The shortest decimal text of ``value`` that SQLite's own text-to-real conversion reads back
    bit for bit (it is not correctly rounded for every double: ``repr`` alone can land one ulp
    off), with a ``.`` or an exponent so it stays a real."""
    if _reads_back(repr(value), value):
        return repr(value)
    # m * 2**e, m in [0.5, 1) read exactly, times exact powers of two: every product is exact
    m, e = math.frexp(value)
    step, rest = (1024.0, 2.0 ** (e % 10)) if e > 0 else (0.0009765625, 0.5 ** (-e % 10))
    factors = [repr(step)] * (abs(e) // 10) + ([repr(rest)] if rest != 1.0 else [])
    text = "(" + " * ".join([repr(m), *factors]) + ")"
    return text if _reads_back(text, value) else repr(value)


def _reads_back(text: str, value: float) -> bool:
    back = _READER.execute(f"SELECT {text}").fetchone()[0]
    return isinstance(back, float) and struct.pack("<d", back) == struct.pack("<d", value)


def bind(text: str, params: Sequence[Any]) -> str:
    """``text`` with each ``?`` placeholder replaced, in textual order (SQLite's binding order), by
    the literal of the matching value. Placeholders are found by sqlglot's tokenizer, so a ``?``
    inside a string or identifier is left alone."""
    if not params:
        return text
    marks = [t for t in Tokenizer().tokenize(text) if t.token_type == TokenType.PLACEHOLDER]
    if len(marks) != len(params):
        raise ValueError(f"{len(marks)} placeholders for {len(params)} values")
    out, at = [], 0
    for token, value in zip(marks, params, strict=True):
        out += [text[at : token.start], literal(value)]
        at = token.end + 1
    return "".join(out) + text[at:]


@dataclass(frozen=True)
class Step:
    """One statement the re-import executed, with the values bound to it."""

    stmt: Statement
    params: tuple[Any, ...] = ()
    rendered: str | None = field(default=None, compare=False, repr=False)
    """The statement's SQL text, kept from when it was executed (rendered once)."""

    def text(self) -> str:
        if self.rendered is not None:
            return self.rendered
        return self.stmt if isinstance(self.stmt, str) else sql(self.stmt)

    def render(self) -> str:
        """The statement with its values as literals, ending in ``;`` (on a line of its own after
        stored DDL whose last line could end in a ``--`` comment)."""
        text = bind(self.text(), self.params).rstrip().rstrip(";")
        return text + (
            "\n;" if isinstance(self.stmt, str) and "--" in text.rsplit("\n", 1)[-1] else ";"
        )


SPILL_VALUES = 256
"""A step with more bound values than this (a batch of merged JSON cells, the recorded outcome's
text counted by its length / 1024) is rendered when it runs and kept in a temporary file, not in
memory: the script's memory stays bounded whatever the size of the run. ``$RECOVERY_SPILL_AFTER``
(:data:`recovery.model.spill.SPILL_ENV`), when set lower, lowers it (the tests spill every step
with values)."""


def _spill_values() -> int:
    return min(SPILL_VALUES, spill_after()) if os.environ.get(SPILL_ENV) else SPILL_VALUES


@dataclass(frozen=True)
class SpilledStep:
    """A step already rendered (:meth:`Step.render`) into the script's temporary file."""

    file: IO[bytes]
    offset: int
    size: int

    def render(self) -> str:
        self.file.seek(self.offset)
        return self.file.read(self.size).decode("utf-8")


def _weight(params: Sequence[Any]) -> int:
    """How heavy a step's values are: their number, a long text or blob counting per KiB."""
    return sum(1 + len(v) // 1024 if isinstance(v, (str, bytes, bytearray)) else 1 for v in params)


@dataclass
class Script:
    """Executes the re-import's writes on ``conn`` and keeps them, in order, as :class:`Step` s
    (a step heavier than :data:`SPILL_VALUES` as a :class:`SpilledStep`)."""

    conn: sqlite3.Connection
    steps: list[Step | SpilledStep] = field(default_factory=list)
    marks: list[tuple[str, int]] = field(default_factory=list)
    """Open savepoints: (name, index of its SAVEPOINT step)."""
    deferred: list[Step] = field(default_factory=list)
    """Statements the run did not execute but would on request (DELETEs without ``--apply-deletes``)."""

    spill_file: IO[bytes] | None = field(default=None, repr=False)
    """The temporary file of the spilled steps (deleted when closed or collected)."""

    def execute(self, stmt: Statement, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        """Run a writing statement; recorded only once SQLite accepted it."""
        text = stmt if isinstance(stmt, str) else sql(stmt)
        step = Step(stmt, tuple(params), text)
        cur = self.conn.execute(text, step.params)
        self.steps.append(self._spill(step) if _weight(step.params) > _spill_values() else step)
        return cur

    def _spill(self, step: Step) -> SpilledStep:
        """``step`` rendered now and appended to the temporary file."""
        if self.spill_file is None:
            self.spill_file = tempfile.TemporaryFile(prefix="recovery-script-")
        data = step.render().encode("utf-8")
        end = self.spill_file.seek(0, os.SEEK_END)
        self.spill_file.write(data)
        return SpilledStep(self.spill_file, end, len(data))

    def execute_rows(self, stmt: exp.Insert, rows: Iterable[Sequence[Any]]) -> int:
        """One INSERT … VALUES carrying every row of ``rows`` (``stmt``'s VALUES holds one tuple of
        placeholders: the template). Returns the number of rows."""
        rows = [tuple(r) for r in rows]
        if not rows:
            return 0
        template = stmt.expression.expressions[0]
        many = stmt.copy()
        many.set("expression", exp.Values(expressions=[template.copy() for _ in rows]))
        return self.execute(many, [v for r in rows for v in r]).rowcount

    def savepoint(self, name: str) -> None:
        self.marks.append((name, len(self.steps)))
        self.execute(exp.Command(this="SAVEPOINT", expression=exp.to_identifier(name, quoted=True)))

    def release(self, name: str) -> None:
        """RELEASE the innermost savepoint ``name`` (its steps stay)."""
        assert self.marks and self.marks[-1][0] == name
        self.marks.pop()
        self.execute(exp.Command(this="RELEASE", expression=exp.to_identifier(name, quoted=True)))

    def rollback(self, name: str) -> None:
        """``ROLLBACK TO`` and ``RELEASE`` the innermost savepoint ``name``: its steps are dropped,
        the SAVEPOINT included (what it undid never happened, as far as the script goes)."""
        assert self.marks and self.marks[-1][0] == name
        _, at = self.marks.pop()
        ident = exp.to_identifier(name, quoted=True).sql(dialect="sqlite")
        self.conn.execute(f"ROLLBACK TO {ident}")
        self.conn.execute(f"RELEASE {ident}")
        dropped = [s for s in self.steps[at:] if isinstance(s, SpilledStep)]
        if dropped and self.spill_file is not None:  # what was undone leaves the file too
            self.spill_file.truncate(dropped[0].offset)
        del self.steps[at:]

    def lines(
        self, head: Sequence[Statement], foot: Sequence[Statement], comment: str = ""
    ) -> Iterable[str]:
        """The script line by line: ``comment`` lines, ``head`` (PRAGMA, ATTACH, BEGIN), every
        step, ``foot`` (COMMIT or ROLLBACK)."""
        yield from (f"-- {ln}".rstrip() for ln in comment.splitlines())
        yield from (Step(s).render() for s in head)
        yield from (s.render() for s in self.steps)
        yield from (Step(s).render() for s in foot)


def attach(path: Path, alias: str) -> exp.Expression:
    """``ATTACH DATABASE 'path' AS alias`` (the plain path: the sqlite3 shell and ``executescript``
    both take it), made absolute: the script is applied by hand from any folder, and a relative
    path that does not resolve there would make ATTACH create a new empty file."""
    return exp.Attach(this=exp.alias_(exp.Literal.string(os.path.abspath(path)), alias))


def header(rows_db: Path, base_db: Path, bundle_alias: str, base_alias: str) -> list[Statement]:
    """What the tool does on the connection before the first step: foreign keys off (no cascade
    may fire), the bundle's two data files attached, one write transaction."""
    return [
        exp.Command(this="PRAGMA", expression=exp.var("foreign_keys = OFF")),
        attach(rows_db, bundle_alias),
        attach(base_db, base_alias),
        exp.Command(this="BEGIN", expression=exp.var("IMMEDIATE")),
    ]


def commented(text: str) -> str:
    """Every line of ``text`` turned into an SQL comment: readable, never executed."""
    return "\n".join(f"-- {ln}".rstrip() for ln in text.splitlines()) + "\n"


REIMPORT_SQL = "reimport.sql"
DELETES_SQL = "deletes.sql"


def _write_private(path: Path, lines: Iterable[str]) -> None:
    """Write ``lines`` to ``path`` (mode 0600: it holds users' data) via a temporary file renamed
    over it."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    os.fchmod(fd, 0o600)
    with open(fd, "w", encoding="utf-8") as fh:
        for line in lines:
            fh.write(line + "\n")
    os.replace(tmp, path)


def write_run_scripts(
    run_dir: Path,
    script: Script,
    rows_db: Path,
    base_db: Path,
    bundle_alias: str,
    base_alias: str,
    committed: bool,
    note: str,
) -> tuple[Path, Path]:
    """Write ``reimport.sql`` (every step, in order, ending in COMMIT — or ROLLBACK when the run
    rolled back) and ``deletes.sql`` (the deferred statements, every line commented out) into
    ``run_dir``. ``note``: what the run was (first comment lines)."""
    run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    head = header(rows_db, base_db, bundle_alias, base_alias)
    end = exp.Command(this="COMMIT" if committed else "ROLLBACK")
    comment = (
        f"{note}\nThe re-import exactly as executed, in order, with its bound values as literals: "
        "applied to a copy of the target\ntaken before the re-import (sqlite3 target.db < reimport.sql) "
        "it gives the same database.\nTEMP tables hold the staged rows; the bundle's data files are "
        "attached below."
    )
    paths = run_dir / REIMPORT_SQL, run_dir / DELETES_SQL
    _write_private(paths[0], script.lines(head, [end], comment))
    deletes = [
        "-- Deletes listed for review and NOT applied (recovery reimport --apply-deletes applies them).",
        "-- Every statement is commented out; each deletes only rows unchanged since the backup that no",
        "-- row references. To run one by hand: attach the bundle's base.db as base, then uncomment it.",
    ]
    deletes += (
        [commented(Step(s).render()).rstrip("\n") for s in [attach(base_db, base_alias)]]
        if script.deferred
        else []
    )
    deletes += [commented(s.render()).rstrip("\n") for s in script.deferred]
    _write_private(paths[1], deletes)
    return paths
