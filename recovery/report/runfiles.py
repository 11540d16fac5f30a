"""The files every re-import (and rollback, and dry run) leaves in its run folder, and
``recovery report`` — the same report regenerated from a run folder or made from a bundle alone.

``report.json`` has a documented shape (``docs/REPORT.md``): ``bundle``, ``summary`` (the headline
numbers), ``outcome`` (``Outcome.to_dict()``) and ``report`` — every number the HTML and Markdown
show, computed once by :func:`recovery.report.model.build`. The renderers read only that section,
so a run folder re-renders without its bundle (a dry run's bundle is gone when it ends).
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from recovery.bundle.store import FILLED_TABLE, LOST_TABLE, Bundle, open_bundle
from recovery.errors import RecoveryError
from recovery.report.lost import count_rows, csv_cell, csv_rows, iter_outcome_lost, open_ro
from recovery.report.lost import has_lost as _has_lost
from recovery.model.kinds import RowKind
from recovery.model.outcome import OUTCOME_FORMAT, Outcome, OutcomeFormatError
from recovery.report import charts, csvlines, csvout, notcarried
from recovery.report.html import made_ahead as html_made_ahead
from recovery.report.html import render_html
from recovery.report.jsonout import list_texts
from recovery.report.markdown import made_ahead as md_made_ahead
from recovery.report.markdown import render_markdown
from recovery.report.model import Prepared, build, draft, files_list, finish, prepare
from recovery.report.tables import CONFLICT_COLUMNS, FILE_COLUMNS, LOST_COLUMNS, deletes_columns

FORMAT = "recovery-report/1"
RUN_FILES = (
    "report.json",
    "conflicts.csv",
    "lost_values.csv",
    "reimport.sql",
    "report.md",
    "report.html",
    "deletes_for_review.csv",
    "files.csv",
    "not_carried.csv",
    "filled_by_upgrade.csv",
)
FORMATS = ("html", "md", "csv", "json")

log = logging.getLogger(__name__)


def summary(
    outcome: Outcome, bundle: Bundle, section: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The ``summary`` object of report.json (stable keys; see docs/REPORT.md)."""
    counts = bundle.table_counts
    tot = outcome.to_dict()["totals"]
    head = (section or {}).get("headline", {})
    return {
        "deploy_time": bundle.manifest.get("deploy_time"),
        "rollback_time": head.get("rollback_time"),
        "records_created_after_deploy": sum(c.inserted for c in counts.values()),
        "records_changed_after_deploy": sum(c.updated for c in counts.values()),
        "records_deleted_after_deploy": sum(c.deleted for c in counts.values()),
        "records_carried": head.get("carried"),
        "records_not_carried": head.get("not_carried"),
        "files_affected": head.get("files_affected"),
        "rows_inserted": tot[RowKind.INSERTED],
        "rows_updated": tot[RowKind.UPDATED],
        "rows_deleted": tot[RowKind.DELETED],
        "rows_skipped": tot["skipped"],
        "keys_remapped": tot["remapped"],
        "conflicts": tot["conflicts"],
        "lost_values": tot["lost"],
        "verdict": head.get("verdict") or outcome.verdict().verdict,
        "verified": bool(outcome.verification.get("ok")) if outcome.verification else None,
        "already_applied": outcome.already_applied,
        "dry_run": outcome.dry_run,
        "aborted": outcome.aborted,
    }


def _bundle_summary(section: dict[str, Any]) -> dict[str, Any]:
    h = section["headline"]
    return {
        "deploy_time": h["deploy_time"],
        "rollback_time": None,
        "records_created_after_deploy": h["records_created"],
        "records_changed_after_deploy": h["records_changed"],
        "records_deleted_after_deploy": h["records_deleted"],
        "records_carried": h["carried"],
        "records_not_carried": h["not_carried"],
        "files_affected": h["files_affected"],
        "conflicts": 0,
        "lost_values": h["lost_values"],
        "verdict": h["verdict"],
        "verified": None,
        "dry_run": None,
        "already_applied": False,
        "aborted": False,
    }


def _private_open(path: Path, **kw: Any) -> IO[str]:
    """``path`` opened for writing text, mode 0600 (report files hold users' data)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    os.fchmod(fd, 0o600)
    return open(fd, "w", encoding="utf-8", **kw)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with _private_open(tmp) as fh:
        fh.write(text)
    os.replace(tmp, path)


def _atomic_write_json(path: Path, data: Any, known: Any = None) -> None:
    """``dump_json(data)`` written in batches (never the whole text in memory), by
    :func:`recovery.report.jsonout.dump`: the same text as ``json.dump`` in about half the time.
    ``known``: texts of its long lists made before (:func:`recovery.report.jsonout.list_texts`)."""
    from recovery.report.jsonout import dump

    tmp = path.with_name(path.name + ".tmp")
    with _private_open(tmp) as fh:
        dump(data, fh, _json_default, known=known)
        fh.write("\n")
    os.replace(tmp, path)


def _atomic_write_csv(path: Path, write: Callable[[IO[str]], Any]) -> None:
    os.replace(_csv_tmp(path, write), path)


def _csv_tmp(path: Path, write: Callable[[IO[str]], Any]) -> Path:
    """``path``'s ``.tmp`` sibling, written complete by ``write`` (mode 0600)."""
    tmp = path.with_name(path.name + ".tmp")
    with _private_open(tmp, newline="", buffering=1 << 20) as fh:
        write(fh)
    return tmp


def write_lost_csv(fh: IO[str], items: Iterable[dict[str, Any]] | _CsvRows) -> None:
    """The lost-values CSV of ``items`` — dicts (``Outcome.lost``) or rows already shaped as CSV
    cells (:func:`stream_csv_rows`), streamed; the format is that of
    ``frame(all, LOST_COLUMNS).to_csv(index=False)``."""
    if isinstance(items, _CsvRows):
        if not items.write_lines(fh):
            csvout.write_rows(fh, LOST_COLUMNS, items)
    else:
        csvout.write_rows(
            fh, LOST_COLUMNS, (tuple(csv_cell(r.get(c)) for c in LOST_COLUMNS) for r in items)
        )


def _bundle_has_lost(bundle_rows_db: Path) -> bool:
    if not bundle_rows_db.is_file():
        return False
    conn = open_ro(bundle_rows_db)
    try:
        return _has_lost(conn)
    finally:
        conn.close()


class _CsvRows:
    """Every lost value of a rows.db as lost_values.csv rows (SQLite sorts and shapes them); the
    connection closes when the rows are exhausted."""

    name = LOST_TABLE

    def __init__(self, path: Path) -> None:
        self.path = path

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        with closing(open_ro(self.path)) as conn:
            yield from csv_rows(conn)

    def write_lines(self, fh: IO[str]) -> bool:
        """The whole CSV written from lines SQLite makes (:mod:`recovery.report.csvlines`);
        False, with nothing written, when these rows need the csv module."""
        if not self.path.is_file():
            return False
        with closing(open_ro(self.path)) as conn:
            return csvlines.write_lines(fh, conn, LOST_COLUMNS, self.name)


class _FilledRows(_CsvRows):
    """The bundle's "filled by the upgrade, not verified" list (``_recovery_filled``) as CSV rows
    shaped like lost_values.csv; empty for a bundle without that table."""

    name = FILLED_TABLE

    def __init__(self, path: Path) -> None:
        self.path = path

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        if not self.path.is_file():
            return
        with closing(open_ro(self.path)) as conn:
            yield from csv_rows(conn, name=FILLED_TABLE)


def filled_count(bundle: Bundle) -> int:
    """How many values the bundle lists as filled by the upgrade, not verified (not lost)."""
    if not bundle.rows_db.is_file():
        return 0
    with closing(open_ro(bundle.rows_db)) as conn:
        return count_rows(conn, name=FILLED_TABLE)


def stream_csv_rows(path: Path) -> _CsvRows:
    return _CsvRows(path)


def _all_lost(outcome: Outcome, bundle: Bundle) -> Iterable[Any]:
    """Every lost value in ``Outcome.lost``'s order, exact: streamed from the bundle's rows.db
    (``_recovery_lost``), which the outcome's sample (values cut for showing) was loaded from; the
    outcome's own list only for a bundle without that table."""
    if _bundle_has_lost(bundle.rows_db):
        return stream_csv_rows(bundle.rows_db)
    return iter_outcome_lost(outcome)


def _rollback_time(extra: dict[str, Any] | None) -> str:
    restore = ((extra or {}).get("journal") or {}).get("restore") or {}
    return str(restore.get("at") or datetime.now().isoformat(sep="T", timespec="seconds"))


@dataclass
class PreparedRun:
    """The part of :func:`write_run_files` that depends on the bundle alone, done before the
    outcome exists (:func:`prepare_run_files`): the report section's bundle reads, the filled
    count, and lost_values.csv / filled_by_upgrade.csv / files.csv written complete to their
    ``.tmp`` names (the first two streamed from rows.db, files.csv from the bundle's file
    records, whatever the outcome). :meth:`close` removes what :func:`write_run_files` did not
    put in place (:attr:`advanced`'s files too)."""

    model: Prepared
    filled: int
    csv: dict[str, Path]
    drawn: dict[str, tuple[Any, str | None]] = field(default_factory=dict)
    """Charts drawn from the bundle alone (:func:`recovery.report.html.render_html`'s ``drawn``)."""
    advanced: Advanced | None = None
    """What :func:`advance_run_files` did for one outcome."""

    def close(self) -> None:
        self.model.close()
        for tmp in [*self.csv.values(), *(self.advanced.csv.values() if self.advanced else ())]:
            tmp.unlink(missing_ok=True)


@dataclass
class Advanced:
    """The part of :func:`write_run_files` that depends on the outcome's rows but not on its
    verification or the late-commit check (:func:`advance_run_files`): the report section's
    draft (:func:`recovery.report.model.draft`) and conflicts.csv, deletes_for_review.csv and
    not_carried.csv written complete to their ``.tmp`` names. Used only for the very ``outcome``
    object it was made from and the same rollback time."""

    outcome: Outcome
    rollback_time: str
    section: dict[str, Any]
    csv: dict[str, Path]
    json: Any = None
    """report.json's long lists as text (:func:`recovery.report.jsonout.list_texts`)."""
    html: dict[str, str | None] | None = None
    """report.html's tables and outcome chart (:func:`recovery.report.html.made_ahead`)."""
    md: dict[str, str] | None = None
    """report.md's tables (:func:`recovery.report.markdown.made_ahead`)."""


def prepare_run_files(run_dir: Path, bundle: Bundle) -> PreparedRun:
    """:class:`PreparedRun` for ``bundle``'s run folder ``run_dir``."""
    model = prepare(bundle)
    try:
        csv: dict[str, Path] = {}
        if _bundle_has_lost(bundle.rows_db):  # else the outcome's own list: written at the end
            tmp = _csv_tmp(
                run_dir / "lost_values.csv", lambda fh: write_lost_csv(fh, _CsvRows(bundle.rows_db))
            )
            csv["lost_values.csv"] = tmp
        csv["filled_by_upgrade.csv"] = _csv_tmp(
            run_dir / "filled_by_upgrade.csv",
            lambda fh: write_lost_csv(fh, _FilledRows(bundle.rows_db)),
        )
        csv["files.csv"] = _csv_tmp(  # the bundle's file records: no outcome needed
            run_dir / "files.csv",
            lambda fh: csvout.write_dicts(fh, FILE_COLUMNS, files_list(bundle)),
        )
        drawn: dict[str, tuple[Any, str | None]] = {}
        if model.activity is not None:
            drawn["activity"] = (model.activity, charts.activity_chart(model.activity))
        return PreparedRun(model, filled_count(bundle), csv, drawn)
    except BaseException:
        model.close()
        raise


def advance_run_files(
    prepared: PreparedRun,
    run_dir: Path,
    outcome: Outcome,
    bundle: Bundle,
    extra: dict[str, Any] | None = None,
) -> None:
    """Do :class:`Advanced`'s part of :func:`write_run_files` now (a rollback does it while the
    verification's reads finish, after the relink). ``outcome``'s rows, conflicts, deletes for
    review and file report must not change after; :func:`write_run_files` with the same
    ``prepared``, ``outcome`` and ``extra`` then writes the same files as without it."""
    if prepared.model.bundle_id != bundle.bundle_id or prepared.advanced is not None:
        return
    rollback_time = _rollback_time(extra)
    section = draft(bundle, outcome, rollback_time, prepared.model)
    advanced = Advanced(outcome, rollback_time, section, {})
    prepared.advanced = advanced  # its files are removed by close() from here on
    for name, tmp in _outcome_csv_tmps(run_dir, outcome, bundle, section):
        advanced.csv[name] = tmp
    advanced.json = list_texts(  # the section, and the outcome's lists that stay as they are,
        [  # both met at depth 1 of report.json (write_run_files)
            (section, 1),
            (
                {
                    "deletes_for_review": outcome.deletes_for_review,
                    "skipped_rows": outcome.skipped_rows,
                    "files": outcome.files,
                },
                1,
            ),
        ],
        _json_default,
    )
    advanced.md = md_made_ahead(section)
    advanced.html = html_made_ahead(section)


def _outcome_csv_tmps(
    run_dir: Path, outcome: Outcome, bundle: Bundle, section: dict[str, Any]
) -> Iterator[tuple[str, Path]]:
    """conflicts.csv, deletes_for_review.csv and not_carried.csv written to their ``.tmp``
    names, each yielded as it is complete."""
    yield (
        "conflicts.csv",
        _csv_tmp(
            run_dir / "conflicts.csv",
            lambda fh: csvout.write_dicts(
                fh, CONFLICT_COLUMNS, (c.to_dict() for c in outcome.conflicts)
            ),
        ),
    )
    deletes = section["deletes_for_review"]
    yield (
        "deletes_for_review.csv",
        _csv_tmp(
            run_dir / "deletes_for_review.csv",
            lambda fh: csvout.write_dicts(fh, deletes_columns(deletes), deletes),
        ),
    )
    not_carried = notcarried.whole_records(bundle, [] if outcome.aborted else outcome.not_carried())
    yield (
        "not_carried.csv",
        _csv_tmp(
            run_dir / "not_carried.csv",
            lambda fh: csvout.write_rows(
                fh, notcarried.NOT_CARRIED_COLUMNS, notcarried.csv_rows(not_carried)
            ),
        ),
    )


def write_run_files(
    run_dir: Path,
    outcome: Outcome,
    bundle: Bundle,
    extra: dict[str, Any] | None = None,
    prepared: PreparedRun | None = None,
) -> dict[str, Path]:
    """Write report.json, conflicts.csv, lost_values.csv, not_carried.csv, deletes_for_review.csv,
    files.csv, reimport.sql, report.md and report.html. ``prepared``: :func:`prepare_run_files`
    of this bundle and folder (the files are the same without it; the caller closes it)."""
    run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if prepared is not None and (
        prepared.model.bundle_id != bundle.bundle_id
        or any(tmp.parent != run_dir for tmp in prepared.csv.values())
    ):  # prepared for another bundle or folder: not used
        prepared = None
    late = (extra or {}).get("late_commits")
    advanced = prepared.advanced if prepared is not None else None
    if (
        advanced is not None
        and advanced.outcome is outcome
        and advanced.rollback_time == _rollback_time(extra)
        and all(tmp.parent == run_dir for tmp in advanced.csv.values())
    ):
        section = finish(advanced.section, outcome, late)
        after, known, md_made, html_made = advanced.csv, advanced.json, advanced.md, advanced.html
    else:
        section = build(
            bundle,
            outcome,
            _rollback_time(extra),
            late,
            prepared.model if prepared is not None else None,
        )
        after, known, md_made, html_made = {}, None, None, None
    section["filled_by_upgrade"] = prepared.filled if prepared is not None else filled_count(bundle)
    section["migration_notes"] = list(
        (bundle.manifest.get("lineage") or {}).get("notes") or []
    )  # e.g. a failed downgrade
    section["conflicts_mode"] = getattr(outcome, "conflicts_mode", "cell") if outcome else "cell"
    report = {
        "format": FORMAT,
        "bundle": {"path": str(bundle.path), "id": bundle.bundle_id, "counts": bundle.counts},
        "summary": summary(outcome, bundle, section),
        "outcome": outcome.to_dict(),
        **(extra or {}),
        "report": section,
    }
    report["filled_by_upgrade"] = {
        "total": section["filled_by_upgrade"],
        "csv": "filled_by_upgrade.csv",
    }
    report["migration_notes"] = section["migration_notes"]
    paths = {n: run_dir / n for n in RUN_FILES}
    _atomic_write_json(paths["report.json"], report, known)
    del report
    # streamed from the bundle: the caller keeps the bundle until we return (a dry run's is deleted after)
    done = prepared.csv if prepared is not None else {}
    if "lost_values.csv" in done:
        os.replace(done.pop("lost_values.csv"), paths["lost_values.csv"])
    else:
        _atomic_write_csv(
            paths["lost_values.csv"], lambda fh: write_lost_csv(fh, _all_lost(outcome, bundle))
        )
    if "filled_by_upgrade.csv" in done:
        os.replace(done.pop("filled_by_upgrade.csv"), paths["filled_by_upgrade.csv"])
    else:
        _atomic_write_csv(
            paths["filled_by_upgrade.csv"],
            lambda fh: write_lost_csv(fh, _FilledRows(bundle.rows_db)),
        )
    if len(after) == 3:  # advanced: written complete already
        for name in ("conflicts.csv", "deletes_for_review.csv", "not_carried.csv"):
            os.replace(after.pop(name), paths[name])
    else:  # each put in place as soon as it is complete
        for name, tmp in _outcome_csv_tmps(run_dir, outcome, bundle, section):
            os.replace(tmp, paths[name])
    if "files.csv" in done:
        os.replace(done.pop("files.csv"), paths["files.csv"])
    else:
        _atomic_write_csv(
            paths["files.csv"],
            lambda fh: csvout.write_dicts(fh, FILE_COLUMNS, section["files"].get("list") or []),
        )
    if not paths[
        "reimport.sql"
    ].exists():  # the re-import writes the plan it executed; else the bundle's
        shutil.copyfile(bundle.path / "reimport.sql", paths["reimport.sql"])
        os.chmod(paths["reimport.sql"], 0o600)
    _atomic_write(paths["report.md"], render_markdown(section, md_made))
    _atomic_write(
        paths["report.html"],
        render_html(section, prepared.drawn if prepared is not None else None, html_made),
    )
    return paths


def dump_json(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False, default=_json_default) + "\n"


def _json_default(v: Any) -> Any:
    return "0x" + v.hex() if isinstance(v, bytes) else str(v)


# ---------------------------------------------------------------------------------------------
# recovery report RUN_DIR | BUNDLE_DIR


@dataclass
class ReportResult:
    """What :func:`report` made: the full report.json-shaped document, the rendered text, and the
    file written (None when the text is for stdout)."""

    document: dict[str, Any]
    text: str
    path: Path | None
    source: str  # "run" | "bundle"

    @property
    def headline(self) -> dict[str, Any]:
        return self.document["report"]["headline"]


def read_outcome_file(path: Path) -> Outcome:
    """``outcome.json`` read back as data only; a file of any other shape is refused (exit 2)."""
    try:
        return Outcome.from_json(path.read_bytes())
    except OutcomeFormatError as exc:
        raise RecoveryError(
            f"{path} is not a {OUTCOME_FORMAT} file ({exc})",
            "the run folder was changed by hand; use a copy made by `recovery` itself",
        ) from None


def load(folder: str | os.PathLike[str]) -> tuple[dict[str, Any], str]:
    """A report.json-shaped document for a run folder (its report.json, re-built from its bundle
    and saved outcome when that report.json predates the ``report`` section) or a bundle folder."""
    p = Path(folder)
    if not p.is_dir():
        raise RecoveryError(
            f"{p} is not a folder", "pass a run folder (with report.json) or a bundle folder"
        )
    rj = p / "report.json"
    if rj.is_file():
        try:
            doc = json.loads(rj.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RecoveryError(
                f"{rj} is not valid JSON: {exc}", "run the rollback or reimport again"
            ) from None
        if doc.get("format") != FORMAT:
            raise RecoveryError(f"{rj}: unknown format {doc.get('format')!r}", f"expected {FORMAT}")
        if "report" not in doc:
            if not ((p / "bundle" / "manifest.json").is_file() and (p / "outcome.json").is_file()):
                raise RecoveryError(
                    f"{rj} predates this report format and its bundle is gone",
                    "run `recovery report` on the bundle folder instead",
                )
            bundle = open_bundle(p / "bundle")
            outcome = read_outcome_file(p / "outcome.json")
            doc["report"] = build(bundle, outcome, _rollback_time(doc), doc.get("late_commits"))
        return doc, "run"
    bundle_dir = p if (p / "manifest.json").is_file() else p / "bundle"
    if not (bundle_dir / "manifest.json").is_file():
        raise RecoveryError(
            f"{p} holds neither report.json nor a bundle (manifest.json)",
            "pass the --out folder of `recovery rollback`/`reimport`, or an extracted bundle",
        )
    bundle = open_bundle(bundle_dir)
    section = build(bundle, None)
    return (
        {
            "format": FORMAT,
            "bundle": {"path": str(bundle.path), "id": bundle.bundle_id, "counts": bundle.counts},
            "summary": _bundle_summary(section),
            "report": section,
        },
        "bundle",
    )


def render(document: dict[str, Any], fmt: str) -> str:
    if fmt == "html":
        return render_html(document["report"])
    if fmt == "md":
        return render_markdown(document["report"])
    if fmt == "json":
        return dump_json(document)
    if fmt == "csv":
        buf = io.StringIO(newline="")
        write_lost_csv(buf, document["report"]["lost"])
        return buf.getvalue()
    raise RecoveryError(f"unknown report format {fmt!r}", f"use one of {', '.join(FORMATS)}")


def _lost_csv_text(folder: Path, document: dict[str, Any], source: str) -> str:
    """The complete lost-values CSV: a run folder's lost_values.csv, else streamed from the
    bundle's rows.db; report.json alone holds only the first 1,000 (a note on stderr says so)."""
    if source == "run" and (folder / "lost_values.csv").is_file():
        with (folder / "lost_values.csv").open(
            encoding="utf-8", newline=""
        ) as fh:  # a \r in a cell stays one
            return fh.read()
    rows_db = Path((document.get("bundle") or {}).get("path") or folder) / "rows.db"
    for candidate in [folder / "rows.db", folder / "bundle" / "rows.db", rows_db]:
        if _bundle_has_lost(candidate):
            buf = io.StringIO(newline="")
            write_lost_csv(buf, stream_csv_rows(candidate))
            return buf.getvalue()
    section = document["report"]
    total = max(int(section.get("lost_total") or 0), len(section["lost"]))
    if total > len(section["lost"]):
        log.warning(
            f"note: only the first {len(section['lost']):,} of {total:,} lost values are in report.json and "
            f"{folder / 'lost_values.csv'} is gone; the CSV below lists only those"
        )
    return render(document, "csv")


def report(
    folder: str | os.PathLike[str], fmt: str = "html", out: str | os.PathLike[str] | None = None
) -> ReportResult:
    """Render the report of a run folder or a bundle folder as html, md, csv (the lost values) or
    json. ``out``: the file to write; by default HTML goes to RUN_DIR/report.html (for a bundle,
    ``<bundle>-report.html`` beside it — a bundle's content is sealed) and the others to stdout.
    ``csv`` is the complete list: the run folder's lost_values.csv, or the bundle's."""
    document, source = load(folder)
    text = _lost_csv_text(Path(folder), document, source) if fmt == "csv" else render(document, fmt)
    target: Path | None = Path(out) if out else None
    if target is None and fmt == "html":
        p = Path(folder)
        target = (
            p / "report.html"
            if source == "run"
            else p.resolve().parent / f"{p.resolve().name}-report.html"
        )
    if target is not None:
        if target.is_dir():
            target = (
                target
                / {
                    "html": "report.html",
                    "md": "report.md",
                    "json": "report.json",
                    "csv": "lost_values.csv",
                }[fmt]
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(target, text)
    return ReportResult(document, text, target, source)
