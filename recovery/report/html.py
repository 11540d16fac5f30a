"""The HTML report: ONE self-contained file (inline CSS, charts as ``data:`` SVG images, no scripts,
no external fonts or links) that opens offline and reads well on screen and on paper.

Every value from the data goes through :func:`html.escape` or pandas' ``to_html(escape=True)``;
the page contains no ``<script>`` at all, so markup in the data can only ever show as text. Table
cells are cut to :data:`recovery.escape.SHOW_LIMIT` characters (the CSVs keep them whole).
"""

from __future__ import annotations

from collections.abc import Callable
from html import escape
from typing import Any

import pandas as pd

from recovery.escape import cut
from recovery.report import charts
from recovery.report.tables import (
    LIST_LIMIT,
    conflicts_frame,
    deletes_frame,
    deletes_more,
    files_frame,
    files_more,
    lost_frame,
    lost_more,
    lost_total,
    not_carried_frame,
    not_carried_more,
    plain_words,
    tables_frame,
    users_frame,
)

CSS = """
:root{--ink:#0f172a;--muted:#64748b;--line:#e2e8f0;--bg:#f8fafc;--ok:#15803d;--okbg:#f0fdf4;
--warn:#b45309;--warnbg:#fffbeb;--bad:#b91c1c;--badbg:#fef2f2}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);font:15px/1.5 system-ui,-apple-system,"Segoe UI",
Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1120px;margin:0 auto;padding:32px 28px 64px}
header h1{font-size:26px;margin:0 0 4px;letter-spacing:-.01em}
header p{margin:0;color:var(--muted)}
.banner{display:flex;gap:16px;align-items:center;border-radius:12px;padding:18px 22px;margin:22px 0;
border:1px solid}
.banner .icon{font-size:30px;line-height:1;font-weight:700}
.banner h2{margin:0;font-size:21px}
.banner p{margin:2px 0 0}
.banner.ok{background:var(--okbg);border-color:#bbf7d0;color:var(--ok)}
.banner.review{background:var(--warnbg);border-color:#fde68a;color:var(--warn)}
.banner.bad{background:var(--badbg);border-color:#fecaca;color:var(--bad)}
.banner p{color:var(--ink)}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(128px,1fr));gap:12px;margin:0 0 8px}
.card{background:#fff;border:1px solid var(--line);border-radius:10px;padding:14px 16px}
.card .n{font-size:30px;font-weight:700;font-variant-numeric:tabular-nums;line-height:1.15}
.card .l{color:var(--muted);font-size:13px}
.card.good .n{color:var(--ok)} .card.warn .n{color:var(--warn)} .card.bad .n{color:var(--bad)}
.meta{display:grid;grid-template-columns:max-content 1fr;gap:4px 18px;margin:14px 0 0;font-size:14px}
.meta dt{color:var(--muted)} .meta dd{margin:0;font-variant-numeric:tabular-nums}
section{background:#fff;border:1px solid var(--line);border-radius:12px;padding:20px 22px;margin:18px 0}
section h2{font-size:18px;margin:0 0 4px}
section .sub{color:var(--muted);margin:0 0 14px;font-size:14px}
ul.reasons{margin:8px 0 0;padding-left:20px}
img.chart{display:block;max-width:100%;height:auto;margin:6px 0}
table.data{border-collapse:collapse;width:100%;font-size:13.5px;font-variant-numeric:tabular-nums}
table.data th{text-align:left;font-weight:600;color:#334155;background:#f1f5f9;border-bottom:1px solid var(--line);
padding:7px 10px;white-space:nowrap}
table.data td{padding:6px 10px;border-bottom:1px solid var(--line);vertical-align:top;overflow-wrap:break-word}
table.data tr:nth-child(even) td{background:#fcfdfe}
.empty,.more{color:var(--muted);font-style:italic}
footer{color:var(--muted);font-size:12.5px;margin-top:28px}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px}
@media print{body{background:#fff} section,.card{break-inside:avoid}}
"""

MODE_TITLES = {
    "rollback": "Rollback recovery report",
    "dry-run": "Rollback recovery report — dry run",
    "bundle": "Recovery bundle report — before re-import",
}


def _t(v: Any) -> str:
    return escape("" if v is None else str(v))


def _table(df: pd.DataFrame, empty: str) -> str:
    if df.empty:
        return f'<p class="empty">{_t(empty)}</p>'
    shown = plain_words(df).map(cut)
    return shown.to_html(index=False, escape=True, border=0, classes="data", na_rep="")


TABLES: dict[str, tuple[Callable[[dict[str, Any]], pd.DataFrame], str]] = {
    "tables": (tables_frame, "No table had post-deploy changes."),
    "users": (users_frame, "No post-deploy work."),
    "lost": (lost_frame, "Nothing was lost."),
    "conflicts": (conflicts_frame, "No conflicts."),
    "not_carried": (not_carried_frame, ""),
    "deletes": (deletes_frame, ""),
    "files": (files_frame, ""),
}
"""The page's tables: the frame each is made of, and what is shown when it is empty."""


def made_ahead(report: dict[str, Any]) -> dict[str, str | None]:
    """The page's tables and its outcome chart, made from the section's lists and table counts
    alone: :func:`render_html`'s ``made``, for this same section (a rollback makes them while
    its verification finishes; the verdict, the verification and the time come later)."""
    made: dict[str, str | None] = {
        name: _table(frame(report), empty)
        for name, (frame, empty) in TABLES.items()
        if name not in ("not_carried", "deletes", "files") or _listed(report, name)
    }
    made["outcome_chart"] = charts.outcome_chart(report["tables"])
    return made


def _listed(report: dict[str, Any], name: str) -> bool:
    """Whether the page has the section ``name`` of the optional three."""
    if name == "files":
        return bool(report["files"].get("affected"))
    return bool(report.get({"deletes": "deletes_for_review"}.get(name, name)))


def verdict_reasons(h: dict[str, Any]) -> list[str]:
    """The verdict's reasons as report.json holds them (a report.json written before they were
    kept: rebuilt from its numbers)."""
    if "verdict_reasons" in h:
        return list(h["verdict_reasons"])
    parts = []
    if h.get("not_carried"):
        parts.append(f"{h['not_carried']} record(s) not carried back")
    if h.get("lost_values"):
        parts.append(f"{h['lost_values']} value(s) with no place in the old release")
    if h.get("conflicts"):
        parts.append(f"{h['conflicts']} conflict(s)")
    if h.get("verified") is False:
        parts.append("verification failed")
    return parts


def verdict_text(h: dict[str, Any]) -> tuple[str, str, str]:
    """(css class, title, sentence) of the verdict banner. The title is the verdict of
    report.json (``recovery.model.outcome.judge``) in words — never another judgement; the renderers
    list :func:`verdict_reasons` under the sentence."""
    ahead = h["mode"] != "rollback"
    verdict = str(h["verdict"])
    carried = (
        f"{h['carried']} of {h['records_total']} records {'would be' if ahead else 'were'} carried back"
        + (" (dry run: nothing was changed)" if h["mode"] == "dry-run" else "")
    )
    if verdict == "all recovered":
        return "ok", "All recovered", f"{carried}; nothing was lost and nothing is left to review."
    return (
        ("bad" if verdict == "failed" else "review"),
        verdict[:1].upper() + verdict[1:],
        carried + ":",
    )


def _cards(h: dict[str, Any]) -> str:
    ahead = h["mode"] != "rollback"
    cards = [
        (h["records_created"], "records created after the deploy", ""),
        (h["records_changed"], "records changed after the deploy", ""),
        (h["carried"], "would be carried back" if ahead else "carried back", "good"),
        (h["not_carried"], "not carried back", "warn" if h["not_carried"] else "good"),
        (h["lost_values"], "values lost (listed below)", "warn" if h["lost_values"] else "good"),
        (h["conflicts"], "conflicts", "warn" if h["conflicts"] else "good"),
        (h["files_affected"], "files affected", ""),
    ]
    return (
        '<div class="cards">'
        + "".join(
            f'<div class="card {cls}"><div class="n" data-metric="{_t(label)}">{_t(n)}</div>'
            f'<div class="l">{_t(label)}</div></div>'
            for n, label, cls in cards
        )
        + "</div>"
    )


def _when(v: Any) -> Any:
    """ISO time as people write it (``2026-11-20 14:00:00``); anything else unchanged."""
    return v.replace("T", " ", 1) if isinstance(v, str) and len(v) >= 16 and v[10:11] == "T" else v


def release_line(h: dict[str, Any]) -> str:
    """``bb006 → aa001 (release v1.4.0)``: the Alembic revisions, with the previous release's tag
    from the backup's snapshot manifest when it recorded one."""
    tag = h.get("to_release")
    return f"{h.get('from_revision') or '?'} → {h.get('to_revision') or '?'}" + (
        f" (release {tag})" if tag else ""
    )


def _meta(h: dict[str, Any], report: dict[str, Any]) -> str:
    rollback = h.get("rollback_time") or (
        "dry run — nothing changed" if h["mode"] == "dry-run" else "not rolled back yet"
    )
    items = [
        ("Deploy time", _when(h.get("deploy_time")) or "unknown"),
        ("Rollback time", _when(rollback)),
        ("Database", h.get("database") or "unknown"),
        ("Release", release_line(h)),
        (
            "Deleted after the deploy",
            f"{h['records_deleted']} record(s), restored and listed for review"
            if h["records_deleted"]
            else "none",
        ),
        (
            "Verification",
            {
                True: "passed (integrity, foreign keys, row counts, revision)",
                False: "FAILED — see below",
                None: "not run",
            }[h.get("verified")],
        ),
        ("Bundle", report.get("bundle_id") or ""),
    ]
    return (
        '<dl class="meta">'
        + "".join(f"<dt>{_t(k)}</dt><dd>{_t(v)}</dd>" for k, v in items)
        + "</dl>"
    )


def _reasons(h: dict[str, Any]) -> str:
    lines = [
        f"{r['records']} record(s) in {', '.join(r['tables'])}: {r['reason']}"
        for r in h["not_carried_reasons"]
    ]
    lines += [f"{n} value(s): {reason}" for reason, n in h.get("lost_reasons", {}).items()]
    if not lines:
        return ""
    return (
        '<section><h2>Why some work was not carried back</h2><ul class="reasons">'
        + "".join(f"<li>{_t(line)}</li>" for line in lines)
        + "</ul></section>"
    )


def render_html(
    report: dict[str, Any],
    drawn: dict[str, tuple[Any, str | None]] | None = None,
    made: dict[str, str | None] | None = None,
) -> str:
    """The full page for a ``report`` section (see ``model.build``). ``drawn``: charts already
    drawn, {"activity": (the ``activity`` section drawn, its data URI)} — used when the section
    is that one (the same input draws the same chart). ``made``: :func:`made_ahead` of this
    section, whose lists and table counts have not changed since."""
    h = report["headline"]

    def table(name: str) -> str:
        if made is not None and name in made:
            return str(made[name])
        frame, empty = TABLES[name]
        return _table(frame(report), empty)

    cls, title, sentence = verdict_text(h)
    icon = {"ok": "✓", "review": "!", "bad": "✕"}[cls]
    done = (drawn or {}).get("activity")
    activity_uri = (
        done[1]
        if done is not None and done[0] == report["activity"]
        else charts.activity_chart(report["activity"])
    )
    outcome_uri = (
        made["outcome_chart"]
        if made is not None and "outcome_chart" in made
        else charts.outcome_chart(report["tables"])
    )
    untimed = report["activity"].get("untimed") or {}
    untimed_note = (
        ("; not shown (no timestamp): " + ", ".join(f"{n} in {t}" for t, n in untimed.items()))
        if untimed
        else ""
    )
    users_note = {"ids": "users shown by id (no users table found)"}.get(
        report.get("user_names_from", "ids"),
        f"names from the {report.get('user_names_from')} users table",
    )
    body = [
        (
            f"<header><h1>{_t(MODE_TITLES.get(h['mode'], 'Recovery report'))}</h1>"
            f"<p>Generated {_t(report.get('generated_at'))} by recovery</p></header>"
        ),
        f'<div class="banner {cls}" role="status" data-verdict="{_t(h["verdict"])}"><div class="icon">{icon}</div>'
        f'<div><h2 id="verdict">{_t(title)}</h2><p>{_t(sentence)}</p>'
        + (
            '<ul class="reasons">'
            + "".join(f"<li>{_t(r)}</li>" for r in verdict_reasons(h))
            + "</ul>"
            if verdict_reasons(h)
            else ""
        )
        + "</div></div>",
        _cards(h),
        _meta(h, report),
        _reasons(h),
        '<section><h2>Per table</h2><p class="sub">Records created or changed after the deploy and what '
        "became of them.</p>"
        + (
            f'<img class="chart" alt="Outcome per table" src="{outcome_uri}">'
            if outcome_uri
            else ""
        )
        + table("tables")
        + "</section>",
        "<section><h2>Post-deploy activity</h2>"
        f'<p class="sub">Records created or changed per {_t(report["activity"].get("bin_minutes"))} minutes '
        f"after the deploy{_t(untimed_note)}.</p>"
        + (
            f'<img class="chart" alt="Post-deploy activity over time" src="{activity_uri}">'
            if activity_uri
            else '<p class="empty">No timestamped post-deploy activity.</p>'
        )
        + "</section>",
        f'<section><h2>Per user</h2><p class="sub">Who did the work ({_t(users_note)}; a change is '
        "attributed to updated_by where the table has it, else to the record's owner).</p>"
        + table("users")
        + "</section>",
        f'<section><h2>Lost values ({lost_total(report)})</h2><p class="sub">Values the old release has '
        "no place for — the list to re-enter from once the new release is back"
        + (
            f"; the first {len(report['lost']):,} by table, key and column are listed here, all "
            f"{lost_total(report):,} are in lost_values.csv"
            if lost_more(report)
            else ""
        )
        + ".</p>"
        + table("lost")
        + (f'<p class="more">{_t(lost_more(report))}</p>' if lost_more(report) else "")
        + (
            f'<p class="sub">Filled by the upgrade, not verified: {int(report["filled_by_upgrade"]):,} value(s) in '
            "columns only the new release has, in records nobody changed in the old release's columns — not lost; "
            "listed in filled_by_upgrade.csv.</p>"
            if report.get("filled_by_upgrade")
            else ""
        )
        + "</section>",
        f'<section><h2>Conflicts ({len(report["conflicts"])})</h2><p class="sub">Both values and how each '
        "was resolved.</p>" + table("conflicts") + "</section>",
    ]
    if report.get("not_carried"):
        more = not_carried_more(report)
        body.append(
            f"<section><h2>Not carried back ({_t(report.get('not_carried_total'))})</h2>"
            '<p class="sub">Records the re-import skipped, each with every value it held after the '
            "deploy (its items too), to enter again by hand; every column of each is in not_carried.csv"
            + (f"; the first {LIST_LIMIT:,} are listed here" if more else "")
            + ".</p>"
            + table("not_carried")
            + (f'<p class="more">{_t(more)}</p>' if more else "")
            + "</section>"
        )
    if report.get("deletes_for_review"):
        more = deletes_more(report)
        body.append(
            f"<section><h2>Deleted after the deploy ({len(report['deletes_for_review'])})</h2>"
            '<p class="sub">The backup still had these rows, so the restore brought them back; '
            "delete them again if the deletion was intended"
            + (f"; the first {LIST_LIMIT:,} are listed here" if more else "")
            + ".</p>"
            + table("deletes")
            + (f'<p class="more">{_t(more)}</p>' if more else "")
            + "</section>"
        )
    files = report["files"]
    if files.get("affected"):
        status = ", ".join(f"{n} {s}" for s, n in files.get("by_status", {}).items())
        more = files_more(report)
        body.append(
            f'<section><h2>Files ({files["affected"]})</h2><p class="sub">Uploads referenced by '
            f"post-deploy records ({_t(status)})"
            + (f"; the first {LIST_LIMIT:,} are listed here" if more else "")
            + ".</p>"
            + table("files")
            + (f'<p class="more">{_t(more)}</p>' if more else "")
            + "</section>"
        )
    if report.get("conflicts_mode") == "row":
        body.append(
            '<section><p class="sub">Conflicts were judged by row (<code>--conflicts row</code>): any '
            "change to the same row after the deploy and in the database since is a conflict.</p></section>"
        )
    if report.get("migration_notes"):
        body.append(
            "<section><h2>Migration notes</h2><ul>"
            + "".join(f"<li>{_t(n)}</li>" for n in report["migration_notes"])
            + "</ul></section>"
        )
    body.append(
        "<footer>Numbers match report.json (section <code>report</code>); lost values, conflicts, "
        "records not carried back, deletes for review and files are also in lost_values.csv, "
        "conflicts.csv, not_carried.csv, deletes_for_review.csv and files.csv.</footer>"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
        "style-src 'unsafe-inline'\">"
        f"<title>{_t(title)} — {_t(MODE_TITLES.get(h['mode'], 'Recovery report'))}</title>"
        f"<style>{CSS}</style></head><body><main>" + "\n".join(body) + "</main></body></html>\n"
    )
