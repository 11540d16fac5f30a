"""Terminal rendering (rich) and CSV output shared by the commands.

Every value that comes from the data or the file system is shown as plain text: table cells are
rich ``Text`` (:func:`recovery.escape.term_text`), values inside a markup string go through
:func:`recovery.escape.term_markup` (markup escaped, control characters shown as ``\x1b``), and
shown values are cut to :data:`recovery.escape.SHOW_LIMIT` characters."""

from __future__ import annotations

import csv
import itertools
import sys
from collections.abc import Iterable
from typing import IO, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table as RichTable

from recovery.model.kinds import RowKind
from recovery.model.values import COUNT_KEYS
from recovery.escape import (
    csv_safe_row,
    json_for_terminal,
    plain,
    short_repr,
    term_markup,
    term_text,
)

T = term_text
M = term_markup

_consoles: dict[bool, Console] = {}


class OutputConsole(Console):
    """A rich console that, when its file is not a terminal (a pipe, a log file), prints every
    table as full-width plain text (:func:`plain_table`) and never wraps a line: what a script or
    a log reads is never cut (``inser…``) nor folded. On a terminal it is rich's console."""

    def print(self, *objects: Any, **kwargs: Any) -> None:
        if self.is_terminal:
            return super().print(*objects, **kwargs)
        kwargs.setdefault("soft_wrap", True)
        for obj in objects:
            if isinstance(obj, RichTable):
                self.file.write(plain_table(obj))
                self.file.flush()
            else:
                super().print(obj, **kwargs)


def _cell_text(cell: Any) -> str:
    """A table cell as plain text: a rich ``Text`` as it reads (already escaped by
    :func:`recovery.escape.term_text`), a markup string without its markup and with its control
    characters escaped; several lines joined with `` | ``."""
    from rich.text import Text

    if isinstance(cell, Text):
        text = cell.plain
    elif isinstance(cell, str):
        text = Text.from_markup(cell, emoji=False).plain
    else:
        text = "" if cell is None else str(cell)
    return plain(" | ".join(text.split("\n")), None)


def plain_table(t: RichTable) -> str:
    """A rich table as fixed-width plain text: the title line, a header line, one line per row,
    columns as wide as their widest cell, two spaces between; no border, nothing cut or wrapped."""
    from rich.text import Text

    headers = [_cell_text(c.header) for c in t.columns]
    columns = [[_cell_text(cell) for cell in c.cells] for c in t.columns]
    rows = [headers] + [list(r) for r in zip(*columns, strict=False)] if columns else [headers]
    widths = [max(len(r[i]) for r in rows) for i in range(len(headers))]
    lines = []
    if t.title:
        title = t.title.plain if isinstance(t.title, Text) else _cell_text(t.title)
        lines.append(title)
    for r in rows:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    return "\n".join(lines) + "\n"


def console(stderr: bool = False) -> Console:
    if stderr not in _consoles:
        # no emoji codes either: ``:warning:`` in a value stays those nine characters
        _consoles[stderr] = OutputConsole(
            stderr=stderr, highlight=False, soft_wrap=False, emoji=False
        )
    return _consoles[stderr]


def has_bare_cr(cells: Iterable[Any]) -> bool:
    """A cell holds a carriage return: Python 3.11's ``QUOTE_MINIMAL`` with ``\n`` line ends leaves
    it unquoted and a CSV reader splits the row there, so such a row is written fully quoted."""
    return any(isinstance(c, str) and "\r" in c for c in cells)


def write_csv(
    out: IO[str], rows: Iterable[dict[str, Any]], fields: list[str] | None = None
) -> None:
    """The ``--csv`` output of a command: one row per dict, every cell through
    :func:`recovery.escape.csv_safe` (no spreadsheet formulas from the data)."""
    rows = iter(rows)
    first = next(rows, None)
    if fields is None:
        fields = list(first) if first else []
    writer = csv.writer(out, lineterminator="\n")
    quoted = None
    shown = _isatty(
        out
    )  # read by a person: control characters shown escaped, as everywhere on a terminal
    writer.writerow(csv_safe_row(fields))
    for r in itertools.chain([first] if first is not None else [], rows):
        cells = csv_safe_row(r.get(f) for f in fields)
        if shown:
            cells = tuple(plain(c, None) if isinstance(c, str) else c for c in cells)
        if has_bare_cr(cells):
            quoted = quoted or csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL)
            quoted.writerow(cells)
        else:
            writer.writerow(cells)


def _isatty(out: Any) -> bool:
    try:
        return bool(out.isatty())
    except (AttributeError, ValueError):
        return False


def stdout_text(text: str, json_text: bool = False) -> str:
    """``text`` for stdout: unchanged into a pipe or file; on a terminal with control characters
    escaped (JSON keeps valid ``\\u`` escapes, Markdown/CSV text shows ``\\x1b``)."""
    if not _isatty(sys.stdout):
        return text
    if json_text:
        return json_for_terminal(text)
    return "\n".join(plain(line, None) for line in text.split("\n"))


def render_snapshot(snap: Any) -> None:
    c = console()
    m = snap.manifest
    c.print(f"[bold]backup[/]    {M(snap.backup, None)}")
    c.print(f"[bold]manifest[/]  {M(snap.manifest_path, None)}")
    git = m.get("git") or {}
    c.print(
        f"revision {M(m['alembic_revision'] or '-')} · integrity {M(m['integrity_check'])} · "
        f"{m['size']:,} bytes · git {M(git.get('tag') or git.get('commit') or '-')}"
    )
    t = RichTable("table", "rows", title=None)
    for name, n in m["tables"].items():
        t.add_row(T(name), f"{n:,}")
    c.print(t)
    if m.get("uploads"):
        c.print(f"uploads: {len(m['uploads']['files'])} files recorded")


def render_diff(result: Any, rows: bool) -> None:
    c = console()
    s = result.schema
    c.print(f"[bold]schema[/] {M(s.old_revision or '-')} → {M(s.new_revision or '-')}")
    lines = []
    lines += [f"+ table {t}" for t in s.tables_added]
    lines += [f"- table {t}" for t in s.tables_removed]
    renamed = {(r.table, r.old) for r in s.renames} | {(r.table, r.new) for r in s.renames}
    for t, cols in sorted(s.columns_added.items()):
        lines += [f"+ column {t}.{col}" for col in cols if (t, col) not in renamed]
    for t, cols in sorted(s.columns_removed.items()):
        lines += [f"- column {t}.{col}" for col in cols if (t, col) not in renamed]
    lines += [f"~ rename {r.table}.{r.old} → {r.new} ({r.evidence})" for r in s.renames]
    lines += [
        f"~ rename table {r.old} → {r.new} ({r.evidence})" for r in getattr(s, "table_renames", ())
    ]
    for tname, tm in sorted(result.mapping.tables.items()):
        for rule in tm.rules:
            ev = rule.check or {}
            if rule.source == "inferred" or ev.get("verdict") == "disagrees":
                lines.append(
                    f"~ rule {tname}.{rule.column} = {rule.sql} [{rule.source}]: "
                    f"{ev.get('rows_agreeing', 0)} of {ev.get('rows_checked', 0)} unchanged rows agree"
                    + (" (disagrees; trusted)" if ev.get("trusted") else "")
                )
    lines += [
        f"~ {ch.kind} {ch.table}.{ch.column}: {ch.old} → {ch.new}" for ch in s.columns_changed
    ]
    for kind, d in (("view", s.views), ("trigger", s.triggers), ("index", s.indexes)):
        for change, names in d.items():
            mark = {"added": "+", "removed": "-", "changed": "~"}[change]
            lines += [f"{mark} {kind} {n}" for n in names]
    for line in lines or ["(no schema change)"]:
        c.print(T(f"  {line}", None))
    since = f" (after deploy {result.since})" if result.since else ""
    t = RichTable()
    # names fold instead of ending in an ellipsis, which could make two tables look alike
    t.add_column("table", overflow="fold")
    t.add_column("key", overflow="fold")
    for name in ("inserted", "updated", "deleted", "after deploy", "note"):
        t.add_column(name)
    for name, tc in sorted(result.changes.tables.items()):
        after = _after(tc)
        note = tc.status if tc.status != "compared" else ""
        if tc.keyed_by == "all columns":
            note = (note + "; " if note else "") + "no primary key: keyed by all columns"
        if tc.uncompared_columns:
            note = (
                (note + "; " if note else "") + "not compared: " + ", ".join(tc.uncompared_columns)
            )
        if getattr(tc, "changed_only_in_new_columns", 0):
            note = (note + "; " if note else "") + (
                f"{tc.changed_only_in_new_columns} updated row(s) changed only in "
                f"new-schema columns: {tc.values_at_risk} value(s) at risk"
            )
        if getattr(tc, "filled_by_upgrade", 0):
            note = (note + "; " if note else "") + (
                f"{tc.filled_by_upgrade} value(s) in new-schema columns filled "
                "by the upgrade, not verified (not at risk)"
            )
        t.add_row(
            T(name),
            T(",".join(tc.key)),
            str(tc.inserted),
            str(tc.updated),
            str(tc.deleted),
            after,
            T(note, None),
        )
    c.print(t)
    if since:
        c.print(T(f"deploy time: {result.since}"))
    if rows:
        for name, tc in sorted(result.changes.tables.items()):
            for r in tc.rows or ():
                cells = ", ".join(
                    f"{x.column}: {short_repr(x.old)} → {short_repr(x.new)}" for x in r.cells
                )
                c.print(T(f"  {name} {r.kind} {short_repr(list(r.key))} {cells}", None))


def _after(tc: Any) -> str:
    """'+inserted ~updated' attributed to after the deploy, '-' where the table has no timestamps."""
    ad = tc.after_deploy
    if not ad or not tc.timestamp_columns:
        return "-"
    ins = "?" if ad[RowKind.INSERTED] is None else ad[RowKind.INSERTED]
    upd = "?" if ad[RowKind.UPDATED] is None else ad[RowKind.UPDATED]
    return f"+{ins} ~{upd}"


def render_extract(summary: dict[str, Any]) -> None:
    c = console()
    c.print(
        f"[bold]bundle[/] {M(summary['bundle'], None)} (id {M(summary['bundle_id'])}, "
        f"deploy {M(summary['deploy_time'] or '-')})"
    )
    t = RichTable("table", "inserted", "updated", "deleted", "closure", "lost", "status")
    for name, n in summary["counts"].items():
        t.add_row(T(name), *(str(n.get(k, 0)) for k in COUNT_KEYS), T(n["status"]))
    c.print(t)
    for table, cols in summary["mapping_sources"].items():
        for column, source in cols.items():
            c.print(T(f"  {table}.{column}: {source}", None))
    for err in summary["planning_errors"]:
        c.print(f"[red]planning error:[/] {M(err)}")
    files = summary.get("files")
    if files:
        c.print(
            f"files: {len(files['records'])} referenced, {len(files['unrecorded'])} unrecorded, "
            f"{len(files['unsafe'])} unsafe"
        )
    c.print(
        f"{summary['lost']} value(s) cannot be carried to the old schema (see the bundle's lost list)"
    )


def render_plan(plan: dict[str, Any]) -> None:
    c = console(stderr=True)
    c.print(
        f"[bold]rollback plan[/] {M(plan['from_revision'])} → {M(plan['to_revision'])} "
        f"(deploy {M(plan['deploy_time'] or '-')})"
    )
    c.print(
        f"  carry back: {plan[RowKind.INSERTED]} new and {plan[RowKind.UPDATED]} changed rows; "
        f"{plan[RowKind.DELETED]} rows deleted after the deploy will be listed for review; "
        f"{plan['lost']} value(s) have no place in the old schema (lost, listed)"
    )


def render_outcome(res: Any) -> None:
    c = console()
    if res.finished_before:
        c.print(
            T(
                f"this run already finished; nothing changed. Report: {res.run_dir / 'report.json'}",
                None,
            )
        )
        return
    o = res.outcome
    if o is None:
        return
    if o.already_applied:
        c.print("[bold]this bundle was already applied to the database; nothing changed[/]")
    lost_by_table = o.lost_by_table()
    t = RichTable("table", "inserted", "updated", "deleted", "skipped", "remapped", "lost values")
    t.columns[0].no_wrap = True
    for name in sorted(set(o.tables) | set(lost_by_table)):
        to = o.tables.get(name)
        counts = [
            getattr(to, k) if to else 0
            for k in ("inserted", "updated", "deleted", "skipped", "remapped")
        ]
        lost = lost_by_table.get(name, 0)
        if any(counts) or lost:
            t.add_row(T(name + ("" if to else " *")), *(str(n) for n in counts), str(lost))
    c.print(t)
    if set(lost_by_table) - set(o.tables):
        c.print("* not in the old schema: every value of its post-deploy rows is listed as lost")
    files = o.files or {}
    if any((files.get("counts") or {}).values()):
        c.print(
            "files: "
            + ", ".join(f"{k.replace('_', ' ')} {n}" for k, n in files["counts"].items() if n)
        )
    kinds: dict[str, int] = {}
    for cf in o.conflicts:
        kinds[cf.kind] = kinds.get(cf.kind, 0) + 1
    if kinds:
        c.print("conflicts: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
    if o.deletes_for_review:
        c.print(
            f"{len(o.deletes_for_review)} row(s) deleted after the deploy were restored; listed for review"
        )
    v = o.verification or {}
    if v:
        c.print(
            f"verification: {'[green]ok[/]' if v.get('ok') else '[red]FAILED[/]'} "
            f"(integrity {M(v.get('integrity_check'))}, fk problems {len(v.get('foreign_key_check', []))}, "
            f"revision {M(v.get('alembic_revision', {}).get('actual'))})"
        )
    if o.aborted:
        note = getattr(res, "note", None)
        c.print(
            f"[red]{escape(note)}[/]"
            if note
            else "[red]aborted: conflicts found, nothing was changed[/]"
        )
    late = getattr(res, "late", None) or {}
    if late.get("needs_review"):
        c.print(
            f"[red]late commits:[/] {late.get('late_commits') if late.get('checked') else 'unknown'} row change(s) "
            f"committed into the replaced database after the safety copy are NOT in the restored one: "
            f"{late.get('file')}",
            soft_wrap=True,
        )
    judged = res.verdict if hasattr(res, "verdict") else o.verdict(late)
    verdict = judged.verdict
    if o.dry_run:
        verdict = f"dry run, nothing changed — {verdict}"
    c.print(
        f"[bold]{verdict}[/]: {o.lost_total} lost value(s), {len(o.conflicts)} conflict(s), "
        f"{len(o.not_carried())} record(s) not carried back."
    )
    for reason in judged.reasons:
        c.print(T(f"  - {reason}", None), soft_wrap=True)
    html = res.run_dir / "report.html"
    c.print(T(f"Report: {html if html.exists() else res.run_dir}", None), soft_wrap=True)
