"""The Markdown report: readable as plain text in a terminal and rendered in a ticket.

Every value from the data goes through :func:`recovery.escape.md_text`: cut to
:data:`recovery.escape.SHOW_LIMIT` characters, line breaks as spaces, control characters as
``\x1b``, and the characters that start inline markup backslash-escaped (CommonMark) — so a value
shows as text in a ticket renderer: no link, image, HTML, emphasis or broken table row.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from recovery.escape import md_text
from recovery.report.html import release_line, verdict_reasons, verdict_text
from recovery.report.tables import (
    conflicts_frame,
    deletes_frame,
    deletes_more,
    lost_frame,
    lost_more,
    lost_total,
    not_carried_frame,
    not_carried_more,
    plain_words,
    tables_frame,
    users_frame,
)


def md_table(df: pd.DataFrame, empty: str, numbers: bool = False) -> str:
    """``numbers``: right-align numeric columns (counts); off for data, where ``0012`` is text."""
    if df.empty:
        return f"_{empty}_"
    clean = plain_words(df).map(lambda v: md_text(v) if isinstance(v, str) or v is None else v)
    clean.columns = [md_text(c) for c in clean.columns]
    return clean.to_markdown(index=False, disable_numparse=not numbers)


TABLES: dict[str, tuple[Callable[[dict[str, Any]], pd.DataFrame], str, bool]] = {
    "tables": (tables_frame, "No post-deploy changes.", True),
    "users": (users_frame, "No post-deploy work.", True),
    "lost": (lost_frame, "Nothing was lost.", False),
    "conflicts": (conflicts_frame, "No conflicts.", False),
    "not_carried": (not_carried_frame, "", False),
    "deletes": (deletes_frame, "", False),
}
"""The text's tables: the frame each is made of, what is shown when it is empty, and whether
its numbers are right-aligned (:func:`md_table`)."""


def made_ahead(report: dict[str, Any]) -> dict[str, str]:
    """The text's tables, made from the section's lists alone: :func:`render_markdown`'s
    ``made``, for this same section (a rollback makes them while its verification finishes)."""
    return {
        name: md_table(frame(report), empty, numbers)
        for name, (frame, empty, numbers) in TABLES.items()
        if name not in ("not_carried", "deletes")
        or report.get({"deletes": "deletes_for_review"}.get(name, name))
    }


def render_markdown(report: dict[str, Any], made: dict[str, str] | None = None) -> str:
    """The Markdown report of a ``report`` section. ``made``: :func:`made_ahead` of this section,
    whose lists have not changed since."""
    h = report["headline"]

    def table(name: str) -> str:
        if made is not None and name in made:
            return made[name]
        frame, empty, numbers = TABLES[name]
        return md_table(frame(report), empty, numbers)

    _, title, sentence = verdict_text(h)
    rollback = h.get("rollback_time") or (
        "dry run — nothing changed" if h["mode"] == "dry-run" else "not rolled back yet"
    )
    ahead = h["mode"] != "rollback"
    out = [
        (
            f"# {'Recovery bundle report' if h['mode'] == 'bundle' else 'Rollback recovery report'}"
            f"{' (dry run)' if h['mode'] == 'dry-run' else ''}"
        ),
        "",
        f"**{title.upper()}** — {md_text(sentence)}",
        *[f"- {md_text(r, None)}" for r in verdict_reasons(h)],
        "",
        f"- Deploy time: {md_text(h.get('deploy_time'))}",
        f"- Rollback time: {md_text(rollback)}",
        f"- Database: {md_text(h.get('database') or 'unknown', None)}",
        f"- Release: {md_text(release_line(h), None)}",
        f"- Records created after the deploy: **{h['records_created']}**",
        f"- Records changed after the deploy: **{h['records_changed']}**",
        f"- {'Would be carried back' if ahead else 'Carried back'}: **{h['carried']}**",
        f"- Not carried back: **{h['not_carried']}**",
    ]
    out += [
        f"  - {r['records']} in {md_text(', '.join(r['tables']), None)}: {md_text(r['reason'])}"
        for r in h["not_carried_reasons"]
    ]
    out += [f"- Lost values: **{h['lost_values']}** (in {h['records_with_lost_values']} record(s))"]
    out += [f"  - {n}: {md_text(reason)}" for reason, n in h.get("lost_reasons", {}).items()]
    out += [
        f"- Conflicts: **{h['conflicts']}**",
        f"- Files affected: **{h['files_affected']}**",
        *(
            [
                (
                    f"- Triggers suspended while rows were carried (re-created unchanged): "
                    f"{md_text(', '.join(report['triggers_suspended']))}"
                )
            ]
            if report.get("triggers_suspended")
            else []
        ),
        f"- Deleted after the deploy (restored, for review): {h['records_deleted']}",
        f"- Verification: {({True: 'passed', False: 'FAILED', None: 'not run'})[h.get('verified')]}",
        f"- Verdict: **{h['verdict']}**",
    ]
    out += [
        "",
        "## Per table",
        "",
        table("tables"),
        "",
        "## Per user",
        "",
        table("users"),
        "",
        f"## Lost values ({lost_total(report)})",
        "",
        "Values the old release has no place for — re-enter them from this list"
        + (
            f" (the first {len(report['lost']):,} by table, key and column; all {lost_total(report):,} are in "
            "lost_values.csv)."
            if lost_more(report)
            else "."
        ),
        "",
        table("lost"),
    ]
    if lost_more(report):
        out += ["", f"_{md_text(lost_more(report))}_"]
    if report.get("filled_by_upgrade"):
        out += [
            "",
            (
                f"Filled by the upgrade, not verified: {report['filled_by_upgrade']:,} value(s) in columns only the "
                "new release has, in records nobody changed in the old release's columns — not lost (the rollback "
                "restores those records as the backup has them); listed in filled_by_upgrade.csv."
            ),
        ]
    out += [
        "",
        f"## Conflicts ({len(report['conflicts'])})",
        "",
        table("conflicts"),
    ]
    if report.get("not_carried"):
        out += [
            "",
            f"## Not carried back ({report.get('not_carried_total')})",
            "",
            (
                "Records the re-import skipped, each with every value it held after the deploy (its items "
                "too); every column of each is in not_carried.csv."
            ),
            "",
            table("not_carried"),
        ]
        if not_carried_more(report):
            out += ["", f"_{md_text(not_carried_more(report))}_"]
    if report.get("deletes_for_review"):
        out += [
            "",
            f"## Deleted after the deploy ({len(report['deletes_for_review'])})",
            "",
            table("deletes"),
        ]
        if deletes_more(report):
            out += ["", f"_{md_text(deletes_more(report))}_"]
    if report.get("conflicts_mode") == "row":
        out += [
            "",
            (
                "Conflicts were judged by row (`--conflicts row`): any change to the same row after the deploy "
                "and in the database since is a conflict."
            ),
        ]
    if report.get("migration_notes"):
        out += ["", "## Migration notes", ""] + [
            f"- {md_text(n)}" for n in report["migration_notes"]
        ]
    if report.get("rules"):
        out += [
            "",
            "## Column rules",
            "",
            (
                "How old columns were produced from the new schema, and what the rows "
                "nobody changed after the deploy say about each rule."
            ),
            "",
        ]
        out += [
            f"- {md_text(r['table'])}.{md_text(r['column'])} = {md_text(r['expression'] or '(no source)')} "
            f"[{md_text(r['source'])}]: {md_text(r['verdict'] or 'not checked')}"
            + (
                f", {r['rows_agreeing']} of {r['rows_checked']} unchanged rows agree"
                if r.get("rows_checked") is not None
                else ""
            )
            + (" — kept by --trust-mapping" if r.get("trusted") else "")
            for r in report["rules"]
        ]
    return "\n".join(out) + "\n"
