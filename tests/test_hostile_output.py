"""Hostile values in every output: the attacks of issue 15 (items 4-6) carried through real runs.

A small two-release world whose users typed spreadsheet formulas, rich markup, terminal escape
sequences (OSC-8 hyperlinks, screen clears, BEL, bidi overrides) and Markdown/HTML into every
value the tool shows — lost values, conflicting cells, labels, keys of a table the old schema
lacks, a deleted row — goes through extract → reimport → report and the other commands, each a
real ``recovery`` process. Then:

* every CSV the tool writes (run folder files and every ``--csv``) has each formula cell with a
  leading ``'``, plain numbers unchanged, while report.json and the bundle keep the exact values;
* no terminal output holds a raw control character from the data (and never an OSC-8 link even
  with colours forced), ``[/bold]`` in a value crashes nothing;
* report.md rendered by a CommonMark renderer has no link, image or HTML from the data and every
  table row keeps its columns; report.html has no element or attribute from the data;
* a 10 MB value in a post-deploy row of the sample world rolls back under an address-space limit
  that the unguarded report build exceeded, with peak RSS under 600 MB.
"""

from __future__ import annotations

import csv
import io
import json
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from recovery.escape import SHOW_LIMIT, csv_safe, md_text, plain
from tests.forkrun import forked_bytes

ROOT = Path(__file__).resolve().parents[1]
BACKUP = "app.db.bak.20261120_140000"

FORMULAS = [
    "=1+1",
    "+1+1",
    "-1+1",
    "@SUM(A1)",
    "\t=1",
    "\r=1",
    '=HYPERLINK("http://evil.example","x")',
    "-cmd",
]
NUMBERS = ["-12.5", "+3", "-0.5e3"]
MARKUP = [
    "[/bold]",
    "[link=http://evil.example]click[/link]",
    "\x1b]8;;http://evil.example\x1b\\click\x1b]8;;\x1b\\",
    "\x1b[2J\x1b[31mred",
    "bell\x07",
    "\x9b31m",
    "[x](http://evil.example)",
    "![i](http://evil.example/i.png)",
    "<img src=x onerror=alert(1)>",
    "<script>alert(1)</script>",
    "a|b\nc",
    "\u202eexe.gnp",
    "**bold** _em_ `code` ~~s~~ &lt;",
    ":warning: :1st_place_medal:",
]
VALUES = FORMULAS + NUMBERS + MARKUP
CONFLICTED = (
    4  # the old app changed ``b`` of items 1..4 too: update_update conflicts on hostile values
)
CONTROL = [chr(c) for c in (*range(0x00, 0x09), *range(0x0B, 0x20), 0x7F, *range(0x80, 0xA0))] + [
    "\u202e"
]


def run(
    *args: Any, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``recovery ARGS`` as its own process (no terminal: rich writes plain text), forked from a
    server that has the package imported (:mod:`tests.forkrun`)."""
    full_env: dict[str, str | None] = dict.fromkeys(("FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE"))
    full_env.update(COLUMNS="200", **(env or {}))
    res = forked_bytes(*args, env=full_env, cwd=cwd, timeout=300)
    # decoded by hand: text mode would turn a \r inside a CSV cell into a line end
    return subprocess.CompletedProcess(
        res.args,
        res.returncode,
        res.stdout.decode("utf-8", "surrogateescape"),
        res.stderr.decode("utf-8", "surrogateescape"),
    )


def assert_no_crash(res: subprocess.CompletedProcess[str], codes: tuple[int, ...] = (0, 1)) -> None:
    assert "Traceback" not in res.stderr and "MarkupError" not in res.stderr, res.stderr[-2000:]
    assert res.returncode in codes, (res.returncode, res.stderr[-2000:])


def assert_plain_terminal(text: str) -> None:
    """No control character but new lines reached the terminal (nor ESC of an OSC-8 link)."""
    raw = sorted({c for c in text if c in CONTROL and c not in "\n"})
    assert not raw, f"raw control characters on the terminal: {raw!r}"


def build_world(folder: Path) -> tuple[Path, Path, Path]:
    """(backup, live, target): items whose values users replaced with the hostile ones after the
    deploy (the new release added ``note``: those values are lost), new items, a new ``tag``
    table keyed by hostile text, a deleted item labelled with a formula, and a target where the
    old app changed ``b`` of the first items too (conflicts)."""
    folder.mkdir(parents=True)
    backup, live, target = folder / BACKUP, folder / "app.db", folder / "target" / "app.db"
    n = len(VALUES)
    old = "CREATE TABLE item (id INTEGER PRIMARY KEY, code TEXT, b TEXT);" + "".join(
        f"INSERT INTO item VALUES ({i}, 'C{i}', 'b{i}');" for i in range(1, n + 2)
    )
    with sqlite3.connect(backup) as c:
        c.executescript(old)
        c.execute(
            "UPDATE item SET code = ? WHERE id = ?",
            ('=HYPERLINK("http://evil.example")[/bold]', n + 1),
        )
    c.close()
    shutil.copyfile(backup, live)
    with sqlite3.connect(live) as c:
        c.execute("ALTER TABLE item ADD COLUMN note TEXT")
        c.execute("CREATE TABLE tag (name TEXT PRIMARY KEY, v TEXT)")
        for i, v in enumerate(VALUES, start=1):
            c.execute("UPDATE item SET code = ?, b = ?, note = ? WHERE id = ?", (v, v, v, i))
            c.execute("INSERT INTO item (code, b, note) VALUES (?, ?, ?)", (v, v, v))
            c.execute("INSERT INTO tag VALUES (?, ?)", (v, v))
        c.execute("DELETE FROM item WHERE id = ?", (n + 1,))
    c.close()
    target.parent.mkdir()
    shutil.copyfile(backup, target)
    with sqlite3.connect(target) as c:
        for i in range(1, CONFLICTED + 1):
            c.execute("UPDATE item SET b = ? WHERE id = ?", (f"x{i}", i))
    c.close()
    return backup, live, target


def _rehearse_args(h: dict[str, Any]) -> list[Any]:
    return [h["live"], "--backup", h["backup"], "--same-installation"]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The world, its bundle (``recovery extract``) and a re-import's run folder (``recovery reimport``)."""
    folder = tmp_path_factory.mktemp("hostile-output")
    backup, live, target = build_world(folder / "world")
    extracted = run("extract", backup, live, "--out", folder / "bundle", "--csv")
    assert_no_crash(extracted)
    reimported = run("reimport", folder / "bundle", target, "--out", folder / "run", "--yes")
    assert_no_crash(reimported)
    return {
        "folder": folder,
        "backup": backup,
        "live": live,
        "target": target,
        "bundle": folder / "bundle",
        "run": folder / "run",
        "extract": extracted,
        "reimport": reimported,
    }


def read(path: Path) -> str:
    with path.open(encoding="utf-8", newline="") as fh:
        return fh.read()


def read_csv(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


def assert_csv_safe(text: str, where: str, expect: list[str] = ()) -> None:
    """No cell of ``text`` would run as a formula; each value of ``expect`` is there, neutralised."""
    cells = [c for row in read_csv(text) for c in row]
    bad = [c for c in cells if c != csv_safe(c)]
    assert not bad, f"{where}: formula cells {bad!r}"
    for v in expect:
        assert csv_safe(v) in cells, f"{where}: {csv_safe(v)!r} missing"
    for v in NUMBERS:
        assert "'" + v not in cells, f"{where}: the number {v} was quoted"


# ---------------------------------------------------------------------------------------------
# item 4: spreadsheet formulas


def test_csv_safe_rules() -> None:
    for v in FORMULAS:
        assert csv_safe(v) == "'" + v and csv_safe(csv_safe(v)) == "'" + v  # idempotent
    for v in [*NUMBERS, "12", "-0", ".5", "", "plain", "a=b", 5, -5, -1.5, None, b"=x"]:
        assert csv_safe(v) == v
    assert csv_safe("-1e5x") == "'-1e5x" and csv_safe("- 1") == "'- 1"


def test_every_run_folder_csv_neutralises_formulas(hostile: dict[str, Any]) -> None:
    run_dir = hostile["run"]
    lost = read(run_dir / "lost_values.csv")
    assert_csv_safe(lost, "lost_values.csv", FORMULAS)
    rows = read_csv(lost)
    assert {r[0] for r in rows[1:]} == {"item", "tag"}
    tag_keys = {r[1] for r in rows[1:] if r[0] == "tag"}
    assert {csv_safe(v) for v in FORMULAS} <= tag_keys  # key cells too
    assert {r[2] for r in rows[1:] if r[0] == "item"} >= {
        csv_safe(v) for v in FORMULAS
    }  # labels too
    conflicts = read(run_dir / "conflicts.csv")
    assert_csv_safe(conflicts, "conflicts.csv", [v for v in VALUES[:CONFLICTED] if v in FORMULAS])
    assert len(read_csv(conflicts)) - 1 >= CONFLICTED
    deletes = read(run_dir / "deletes_for_review.csv")
    assert_csv_safe(deletes, "deletes_for_review.csv", ['=HYPERLINK("http://evil.example")[/bold]'])
    assert_csv_safe(read(run_dir / "files.csv"), "files.csv")


def test_files_csv_writer_neutralises_paths(tmp_path: Path) -> None:
    """files.csv goes through the same writer: an uploaded file named like a formula."""
    from recovery.report import csvout
    from recovery.report.tables import FILE_COLUMNS

    out = io.StringIO(newline="")
    csvout.write_dicts(
        out,
        FILE_COLUMNS,
        [{"path": "=cmd|' /C calc'!A0.pdf", "record": "-1+2", "size": -12, "status": "@x"}],
    )
    assert read_csv(out.getvalue())[1] == ["'=cmd|' /C calc'!A0.pdf", "'-1+2", "-12", "'@x"]


CELLS = st.one_of(
    st.none(),
    st.integers(),
    st.floats(allow_nan=False),
    st.binary(max_size=4),
    st.text(alphabet=st.sampled_from(list('ab ,"\n\r=+-@\t1.')), max_size=14),
)


@settings(max_examples=120, deadline=None)
@given(
    rows=st.lists(st.tuples(CELLS, CELLS, CELLS), max_size=12),
    big=st.integers(min_value=1, max_value=12),
)
@example(rows=[(None, "1", "\n")], big=1)  # a short cell of a long row: quoted for its "\n" too
def test_long_rows_are_written_in_pieces_with_the_same_bytes(
    rows: list[tuple[Any, ...]], big: int
) -> None:
    """A row longer than BIG_CELL goes out cell by cell, long cells in pieces: the same bytes as
    the csv module writing the whole row (with the same \\r rule and formula quotes)."""
    from recovery.report import csvout

    want = io.StringIO(newline="")
    csvout.write_rows(want, ["a", "b", "c"], rows)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(csvout, "BIG_CELL", big)
        got = io.StringIO(newline="")
        csvout.write_rows(got, ["a", "b", "c"], rows)
    assert got.getvalue() == want.getvalue()
    back = read_csv(got.getvalue())[1:]
    assert len(back) == len(rows)
    for r, b in zip(rows, back, strict=True):
        assert [b[j] for j, c in enumerate(r) if isinstance(c, str)] == [
            csv_safe(c) for c in r if isinstance(c, str)
        ]


def test_json_and_bundle_keep_exact_values(hostile: dict[str, Any]) -> None:
    doc = json.loads(read(hostile["run"] / "report.json"))
    shown = {x["value"] for x in doc["report"]["lost"]} | {
        x["value"] for x in doc["outcome"]["lost"]
    }
    assert set(VALUES) <= shown
    assert {c["bundle_value"] for c in doc["outcome"]["conflicts"]} >= set(VALUES[:CONFLICTED])
    with sqlite3.connect(f"file:{hostile['bundle'] / 'rows.db'}?mode=ro", uri=True) as c:
        stored = {r[0] for r in c.execute("SELECT value FROM _recovery_lost")}
    c.close()
    assert set(VALUES) <= stored
    with sqlite3.connect(
        f"file:{hostile['target']}?mode=ro", uri=True
    ) as c:  # carried byte-exact too
        carried = {r[0] for r in c.execute("SELECT code FROM item")}
    c.close()
    assert set(VALUES) <= carried


def test_every_csv_option_neutralises_formulas(hostile: dict[str, Any], tmp_path: Path) -> None:
    """``--csv`` of extract, diff, snapshot, report --format csv and rehearse."""
    assert_csv_safe(hostile["extract"].stdout, "extract --csv")
    diff = run("diff", hostile["backup"], hostile["live"], "--csv")
    assert_no_crash(diff)
    assert_csv_safe(diff.stdout, "diff --csv")  # values there are JSON objects: {"code": "=1+1", …}
    assert '""=1+1""' in diff.stdout
    snap_db = tmp_path / "snap.db"
    with sqlite3.connect(snap_db) as c:
        c.execute('CREATE TABLE "=1+1" (x)')
        c.execute('CREATE TABLE "@SUM(A1)" (x)')
    c.close()
    snap = run("snapshot", snap_db, "--out", tmp_path / "snaps", "--csv")
    assert_no_crash(snap)
    assert_csv_safe(snap.stdout, "snapshot --csv", ["=1+1", "@SUM(A1)"])
    for folder in (hostile["run"], hostile["bundle"]):
        rep = run("report", folder, "--format", "csv")
        assert_no_crash(rep)
        assert_csv_safe(rep.stdout, f"report {folder.name} --format csv", FORMULAS)
    reh = run("rehearse", *_rehearse_args(hostile), "--out", tmp_path / "reh", "--csv")
    assert_no_crash(reh)
    assert_csv_safe(reh.stdout, "rehearse --csv", FORMULAS)
    assert_csv_safe(
        read(tmp_path / "reh" / "lost_values.csv"), "rehearsal lost_values.csv", FORMULAS
    )


# ---------------------------------------------------------------------------------------------
# item 5: terminal and Markdown markup


def test_plain_escapes_every_control_character() -> None:
    for ch in CONTROL:
        assert ch not in plain("a" + ch + "b")
    assert (
        plain("\x1b[31m") == "\\x1b[31m"
        and plain("\u202e") == "\\u202e"
        and plain("a\nb") == "a\\x0ab"
    )


def test_a_world_whose_every_row_was_edited_needs_the_operators_word(
    hostile: dict[str, Any], tmp_path: Path
) -> None:
    """Users edited every sampled row after the deploy: by the rows alone, the backup looks like
    another installation's, so the rollback refuses and names the option that vouches for it."""
    reh = run("rehearse", hostile["live"], "--backup", hostile["backup"], "--out", tmp_path / "reh")
    assert "another" in reh.stdout + reh.stderr and "--same-installation" in reh.stdout + reh.stderr


def test_terminal_output_is_plain_text(hostile: dict[str, Any], tmp_path: Path) -> None:
    """rehearse (the would-be losses table), diff --rows, extract, reimport: no raw control
    character, ``[/bold]`` shown as text, escapes visible as ``\\x1b``."""
    reh = run("rehearse", *_rehearse_args(hostile), "--out", tmp_path / "reh")
    assert_no_crash(reh)
    assert "Rollback test:" in reh.stdout and "[/bold]" in reh.stdout and "\\x1b" in reh.stdout
    assert ":warning:" in reh.stdout and "⚠" not in reh.stdout + reh.stderr  # no emoji codes either
    diff = run("diff", hostile["backup"], hostile["live"], "--rows")
    assert_no_crash(diff)
    assert "[/bold]" in diff.stdout and "\\x1b" in diff.stdout
    for res in (reh, diff, hostile["extract"], hostile["reimport"]):
        assert_plain_terminal(res.stdout + res.stderr)
    md = read(tmp_path / "reh" / "rehearsal.md")
    assert_markdown_inert(md, "rehearsal.md")


def test_no_hyperlink_even_with_colours_forced(hostile: dict[str, Any], tmp_path: Path) -> None:
    """With a colour terminal rich writes its own ESC sequences; never an OSC-8 link or a BEL."""
    reh = run(
        "rehearse",
        *_rehearse_args(hostile),
        "--out",
        tmp_path / "reh",
        env={"FORCE_COLOR": "1", "TERM": "xterm-256color"},
    )
    assert_no_crash(reh)
    out = reh.stdout + reh.stderr
    assert "\x1b[" in out  # colours are on: the assertion below can fail
    assert "\x1b]" not in out and "\x07" not in out and "\x9b" not in out and "\u202e" not in out


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.rows: list[int] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "tr":
            self.rows.append(0)
        elif tag in ("td", "th") and self.rows:
            self.rows[-1] += 1


def assert_markdown_inert(md: str, where: str) -> list[int]:
    """Rendered as CommonMark with GFM tables: no link, image or HTML element from the data."""
    from markdown_it import MarkdownIt

    html = MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(md)
    p = _Tags()
    p.feed(html)
    names = {t for t, _ in p.tags}
    assert not names & {"a", "img", "script", "del", "code"}, (
        f"{where}: markup from the data: {names}"
    )
    assert "evil.example" not in json.dumps([a for _, a in p.tags]), where
    assert "**bold** _em_ `code` ~~s~~ &amp;lt;" in html, (
        f"{where}: emphasis from the data"
    )  # (ours: _No conflicts._)
    return p.rows


class _Cell(HTMLParser):
    """The text and the elements inside the first table cell of rendered Markdown."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.tags: list[str] = []
        self.inside = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "td":
            self.inside = True
        elif self.inside:
            self.tags.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self.inside = False

    def handle_data(self, data: str) -> None:
        if self.inside:
            self.text.append(data)


MD_PIECES = [
    *"ab1 .:/@!#()[]{}<>*_`~|&;\\$%^+-=\"'é",
    "http://",
    "www.",
    "&amp;",
    "&#x41;",
    "<b>",
    "](",
    "![",
]


@settings(max_examples=300, deadline=None)
@given(v=st.lists(st.sampled_from(MD_PIECES), max_size=20).map("".join))
def test_md_text_renders_as_itself(v: str) -> None:
    """Any text in a table cell: CommonMark renders exactly that text, and no element."""
    from markdown_it import MarkdownIt

    p = _Cell()
    p.feed(
        MarkdownIt("commonmark")
        .enable(["table", "strikethrough"])
        .render(f"| h |\n|---|\n| {md_text(v)} |\n")
    )
    assert p.tags == [] and "".join(p.text) == v.strip(" "), md_text(v)


def test_report_md_renders_values_as_text(hostile: dict[str, Any]) -> None:
    md = read(hostile["run"] / "report.md")
    rows = assert_markdown_inert(md, "report.md")
    assert rows and len(set(rows)) > 1  # tables with different widths…
    tables = md.split("\n\n")
    for block in tables:  # …and within each table every row has its header's columns
        lines = [ln for ln in block.splitlines() if ln.startswith("|")]
        if lines:
            from markdown_it import MarkdownIt

            p = _Tags()
            p.feed(MarkdownIt("commonmark").enable("table").render("\n".join(lines)))
            assert len(set(p.rows)) == 1, block[:300]
    for v in ("[x](http://evil.example)", "<img src=x onerror=alert(1)>", "[/bold]"):
        assert md_text(v) in md
    bundle_md = run("report", hostile["bundle"], "--format", "md")
    assert_no_crash(bundle_md)
    assert_markdown_inert(bundle_md.stdout, "bundle report md")


def test_report_html_has_no_markup_from_data(hostile: dict[str, Any]) -> None:
    html = read(hostile["run"] / "report.html")
    p = _Tags()
    p.feed(html)
    assert {t for t, _ in p.tags} <= {
        "html",
        "head",
        "meta",
        "title",
        "style",
        "body",
        "main",
        "header",
        "h1",
        "h2",
        "p",
        "div",
        "dl",
        "dt",
        "dd",
        "section",
        "ul",
        "li",
        "img",
        "table",
        "thead",
        "tbody",
        "tr",
        "th",
        "td",
        "footer",
        "code",
    }
    for tag, attrs in p.tags:
        assert "evil.example" not in json.dumps(attrs) and "onerror" not in attrs
        if tag == "img":
            assert attrs.get("class") == "chart" and (attrs.get("src") or "").startswith(
                "data:image/svg+xml;base64,"
            )
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>" not in html


# ---------------------------------------------------------------------------------------------
# item 6: one large value


BIG = 10_000_000
RSS_LIMIT_MB = 600
AS_LIMIT_MB = 800
"""Address space for the rollback: measured, the sample world's rollback runs in ~550 MB (Python,
pandas, matplotlib mapped) and in ~230 MB peak RSS with the 10 MB value; the report build that
rendered it whole needed over 1.2 GB (peak RSS 1.56 GB) and died of MemoryError here."""


def test_a_10mb_value_rolls_back_in_bounded_memory(world: Path, tmp_path: Path) -> None:
    w = tmp_path / "world"
    shutil.copytree(world, w)
    big = "=" + "x" * (BIG - 2) + "\x1b"
    with sqlite3.connect(w / "gestima.db") as c:
        rid = c.execute("SELECT min(id) FROM production_records").fetchone()[0]
        c.execute("UPDATE production_records SET machine = ? WHERE id = ?", (big, rid))
    c.close()
    out, err = (tmp_path / "stdout").open("w"), (tmp_path / "stderr").open("w")

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT_MB << 20, AS_LIMIT_MB << 20))

    # one BLAS thread and two malloc arenas: reserved address space then does not grow with cores
    env = dict(
        os.environ,
        OPENBLAS_NUM_THREADS="1",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        MALLOC_ARENA_MAX="2",
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "recovery",
            "rollback",
            w / "gestima.db",
            "--backup",
            w / "gestima.db.bak.20261120_140000",
            "--uploads",
            w / "uploads",
            "--alembic-ini",
            ROOT / "sample_dbs" / "app" / "alembic.ini",
            "--out",
            w / "run",
            "--yes",
        ],
        stdout=out,
        stderr=err,
        env=env,
        preexec_fn=limit,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    out.close()
    err.close()
    stderr = (tmp_path / "stderr").read_text(encoding="utf-8", errors="replace")
    assert proc.returncode == 1, stderr[-2000:]  # review: the world's lost values
    assert "MemoryError" not in stderr and "Traceback" not in stderr
    peak_mb = usage.ru_maxrss / 1024
    assert peak_mb < RSS_LIMIT_MB, f"peak RSS {peak_mb:.0f} MB"
    run_dir = w / "run"
    with (run_dir / "lost_values.csv").open(encoding="utf-8", newline="") as fh:
        csv.field_size_limit(BIG * 2)
        values = [r["value"] for r in csv.DictReader(fh)]
    assert "'" + big in values  # whole, neutralised
    doc = json.loads(read(run_dir / "report.json"))
    shown = [x for x in doc["report"]["lost"] if x.get("value_size")]
    assert [x["value_size"] for x in shown] == [BIG]
    assert shown[0]["value"] == big[:SHOW_LIMIT] + "…"
    for name in ("report.json", "report.md", "report.html"):
        assert (run_dir / name).stat().st_size < 1_000_000, name
    assert "\x1b" not in read(run_dir / "report.md")


def run_tty(*args: Any) -> tuple[int, str]:
    """``recovery ARGS`` with stdout on a pseudo-terminal (a person reading it); stderr discarded."""
    import pty

    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "NO_COLOR")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "recovery", *map(str, args)],
        stdout=slave,
        stderr=subprocess.DEVNULL,
        env=dict(env, COLUMNS="200"),
    )
    os.close(slave)
    out = bytearray()
    while True:
        try:
            chunk = os.read(master, 1 << 16)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    return proc.wait(timeout=300), out.decode("utf-8", "surrogateescape").replace("\r\n", "\n")


def test_csv_and_json_on_a_terminal_escape_control_characters(hostile: dict[str, Any]) -> None:
    """``--csv`` / ``--json`` / ``report --format`` printed to a terminal: no control character
    from the data reaches it raw (into a pipe they stay exact: the tests above)."""
    code, out = run_tty("report", hostile["run"], "--format", "json")
    assert code == 1
    assert_plain_terminal(out)
    doc = json.loads(out)  # still JSON, with the exact values
    assert set(VALUES) <= {x["value"] for x in doc["report"]["lost"]}
    code, out = run_tty("report", hostile["run"], "--format", "csv")
    assert code == 1
    assert_plain_terminal(out)
    assert "'\\x09=1" in out and "\\x1b]8;;http://evil.example" in out
    code, out = run_tty("diff", hostile["backup"], hostile["live"], "--csv")
    assert code == 1
    assert_plain_terminal(out)
    code, out = run_tty("report", hostile["run"], "--format", "md")
    assert_plain_terminal(out)
