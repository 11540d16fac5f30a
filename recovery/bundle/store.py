"""``Bundle``: the durable, self-contained unit on disk that everything after extract reads.

Layout (format ``recovery-bundle/1``)::

    BUNDLE_DIR/
      manifest.json     schemas (old, new), schema diff, column mapping and its sources, deploy time,
                        source DB hashes, tool version, per-table counts, files, planning errors,
                        and the sha256 of every other file in the bundle
      manifest.sha256   sha256 of manifest.json (tamper check for the manifest itself)
      rows.db           changed rows in the NEW schema, one table per new table (same names, columns
                        untyped so values keep their storage class) plus "_recovery_kind":
                        inserted | updated | closure; and "_recovery_lost" (table, key, label,
                        column, value) — every value the old schema has no place for
      base.db           backup images in the OLD schema of rows updated ("updated") or deleted
                        ("deleted") after the deploy, for the three-way merge and review
      files/<path>      copies of uploaded files the re-import may need (see recovery/files/uploads.py)
      reimport.sql      the transpiled plan as reviewable SQL (SQLite)

Nothing downstream reads the failed live database again.

A bundle is untrusted input: whoever hands one over may have edited it and recomputed every hash.
Opening one therefore (1) verifies every hash, (2) checks that ``bundle_id`` is the hash of the
sealed manifest (which holds every file's hash), so any edit, re-sealed or not, gives another id
than the one ``recovery extract`` printed, (3) refuses symbolic links and anything but regular
files and folders, and (4) validates everything it will run: each mapping expression and column
default with the mapping file's rules (:func:`recovery.transpile.mapping.check_tree`), each table and column
name against the recorded schemas, and the tables of ``rows.db``/``base.db`` against them.
The folder and its files are created ``0700``/``0600``: they hold users' data.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recovery.errors import RecoveryError
from recovery.transpile.mapping import (
    ColumnMapping,
    ColumnRule,
    TableMapping,
    check_mapping,
    check_tree,
    parse_expression,
)
from recovery.engine.schema import Schema
from recovery.engine.sqlite_io import file_uri, sha256_file
from recovery.model.kinds import KIND_COLUMN
from recovery.model.values import COUNT_KEYS, TableCounts  # noqa: F401 - COUNT_KEYS named here too

FORMAT = "recovery-bundle/1"
LOST_TABLE = "_recovery_lost"
FILLED_TABLE = "_recovery_filled"
"""Values the upgrade may have filled in unchanged rows, not verified: the same columns as the lost list."""
ID_SCHEME = "sha256-of-sealed-manifest/1"
"""``manifest["id_scheme"]``: ``bundle_id`` is :func:`content_id` of the sealed manifest. A bundle
without it (written before the scheme) keeps its recorded id, which does not bind its content."""
LOST_COLUMNS = ("table", "key", "label", "column", "value", "reason")
DIR_MODE = 0o700
FILE_MODE = 0o600


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: dict[str, Any]
    old: Schema
    new: Schema
    mapping: ColumnMapping

    @property
    def rows_db(self) -> Path:
        return self.path / "rows.db"

    @property
    def base_db(self) -> Path:
        return self.path / "base.db"

    @property
    def files_dir(self) -> Path:
        return self.path / "files"

    @property
    def bundle_id(self) -> str:
        return str(self.manifest["bundle_id"])

    @property
    def id_binds_content(self) -> bool:
        """The id is the hash of the sealed content (checked when the bundle was opened)."""
        return self.manifest.get("id_scheme") == ID_SCHEME

    def identity(self) -> dict[str, Any]:
        """What lets the operator check this is the bundle they extracted: its id, the live
        source's fingerprint (sha256) and path, and when it was extracted."""
        live = (self.manifest.get("sources") or {}).get("live") or {}
        return {
            "bundle_id": self.bundle_id,
            "id_binds_content": self.id_binds_content,
            "live_sha256": live.get("sha256"),
            "source_db": live.get("path"),
            "extracted_at": self.manifest.get("created_at"),
        }

    def check_expected_id(self, expected: str | None) -> None:
        """Refuse (exit 2) when ``expected`` is given and is not this bundle's content-bound id."""
        if expected is None:
            return
        if not self.id_binds_content:
            raise RecoveryError(
                f"bundle {self.path} was written by an older recovery: its id does not bind "
                "its content, so --expect-bundle-id cannot be checked",
                "extract the bundle again with this version; nothing was changed",
            )
        if expected.strip().lower() != self.bundle_id.lower():
            raise RecoveryError(
                f"bundle {self.path} has id {self.bundle_id}, not the expected {expected.strip()}",
                "this is not the bundle that was extracted (edited or swapped); nothing was changed",
            )

    @property
    def counts(self) -> dict[str, dict[str, int]]:
        """The manifest's ``counts`` as written (:attr:`table_counts` reads them typed)."""
        return self.manifest["counts"]

    @property
    def table_counts(self) -> dict[str, TableCounts]:
        """Each table's counts, typed (checked when the bundle was opened)."""
        return {t: TableCounts.from_dict(c) for t, c in self.counts.items()}

    def tables_with_rows(self) -> set[str]:
        return {t for t, c in self.table_counts.items() if c.carried}

    def tables_with_deletes(self) -> set[str]:
        """Tables with rows deleted after the deploy (their backup images are in base.db)."""
        return {t for t, c in self.table_counts.items() if c.deleted}


def mapping_from_dict(data: dict[str, Any], where: str = "bundle manifest") -> ColumnMapping:
    """The mapping a manifest records, each expression parsed and checked by the mapping file's
    validator (:func:`recovery.transpile.mapping.parse_expression`): a manifest is as untrusted as a file."""
    tables = {}
    for name, t in data.items():
        rules = tuple(
            ColumnRule(
                r["column"],
                parse_expression(r["expression"], f"{where}: mapping {name}.{r['column']}")
                if r["expression"] is not None
                else None,
                r["source"],
                r.get("evidence", ""),
            )
            for r in t["columns"]
        )
        tables[name] = TableMapping(
            name, rules, bool(t.get("skip")), t.get("new_table"), t.get("table_rename_evidence", "")
        )
    return ColumnMapping(tables)


def write_json_atomic(path: Path, data: Any, mode: int = 0o666) -> None:
    """Write ``data`` as JSON via a temporary file, fsynced and renamed over ``path``; ``mode``
    (masked by the umask) for a file that holds users' data (``0o600``)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(
        os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, mode),
        "w",
        encoding="utf-8",
    ) as fh:
        if mode != 0o666:
            os.fchmod(fh.fileno(), mode)  # an existing tmp keeps its mode otherwise
        fh.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _hashes(folder: Path, rels: list[str]) -> dict[str, str]:
    """{relative path: sha256} of files in ``folder``, on four threads (hashlib and file reads
    release the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="recovery-hash") as pool:
        return dict(zip(rels, pool.map(sha256_file, [folder / rel for rel in rels]), strict=True))


def seal(folder: Path, manifest: dict[str, Any], known: dict[str, str] | None = None) -> None:
    """Make every folder ``0700`` and file ``0600``, hash every bundle file into the manifest, set
    ``bundle_id`` to the hash of the sealed manifest (:func:`content_id`), then write manifest.json
    and manifest.sha256.

    ``known``: {relative path: sha256} of files whose digest the caller took of the very bytes it
    wrote into this private folder (the upload copies, hashed as they were written): those are
    not read again. Every file the folder holds is still listed and hashed into the manifest;
    a known path that is not among them is ignored."""
    private(folder)
    # exactly what open_bundle verifies (every name: an upload may well be called "x.tmp")
    todo = [
        rel
        for rel in sorted(_content_files(folder))
        if rel not in ("manifest.json", "manifest.sha256") and (folder / rel).is_file()
    ]
    given = {rel: known[rel] for rel in todo if known and rel in known}
    hashed = _hashes(folder, [rel for rel in todo if rel not in given])
    manifest["hashes"] = {rel: given[rel] if rel in given else hashed[rel] for rel in todo}
    manifest["id_scheme"] = ID_SCHEME
    manifest.pop("bundle_id", None)
    manifest["bundle_id"] = content_id(json.loads(json.dumps(manifest, default=str)))
    write_json_atomic(folder / "manifest.json", manifest, FILE_MODE)
    digest = sha256_file(folder / "manifest.json")
    fd = os.open(
        folder / "manifest.sha256",
        os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW,
        FILE_MODE,
    )
    with open(fd, "w", encoding="utf-8") as fh:
        fh.write(digest + "  manifest.json\n")


def content_id(manifest: dict[str, Any]) -> str:
    """The bundle id: sha256 (128 bits, hex) of the manifest without its ``bundle_id``, in one
    canonical JSON form. The manifest holds the hash of every other file, so the id binds the
    whole bundle: rows, backup images, file copies, plan, mapping and schemas."""
    body = {k: v for k, v in manifest.items() if k != "bundle_id"}
    canon = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()[:32]


def private(folder: Path) -> None:
    """``folder`` and every folder under it ``0700``, every file ``0600`` (symlinks untouched,
    never followed). One ``scandir`` per folder: the entry types come from the listing (thousands
    of upload copies: one ``chmod`` per entry, no ``lstat``); a folder is made ``0700`` before it
    is listed. No recursion: any depth is walked."""
    os.chmod(folder, DIR_MODE)
    todo = [os.fspath(folder)]
    while todo:
        with os.scandir(todo.pop()) as it:
            for e in it:
                if e.is_symlink():
                    continue
                if e.is_dir(follow_symlinks=False):
                    os.chmod(e.path, DIR_MODE)
                    todo.append(e.path)
                else:
                    os.chmod(e.path, FILE_MODE)


def _content_files(folder: Path) -> list[str]:
    """The bundle's own files: top-level files and everything under ``files/``. Other folders
    (run folders that ``recovery reimport`` writes inside the bundle) are not bundle content."""
    out = [p.name for p in folder.iterdir() if p.is_file() or p.is_symlink()]
    files = folder / "files"
    if files.is_dir():
        out += _tree_files(os.fspath(files), "files")
    return out


def _tree_files(path: str, rel: str) -> list[str]:
    """Every entry under ``path`` that is a file or a symbolic link (to anything), as
    ``rel``-prefixed POSIX paths, folder by folder in the order ``rglob`` gives (a folder's entries,
    then its sub-folders' in turn); folders are entered, symbolic links to folders are not. One
    ``scandir`` per folder: the entry types come from the directory listing, a ``stat`` only for
    a symbolic link (thousands of uploads: no stat per file). No recursion: any depth is listed."""
    out: list[str] = []
    todo = [(path, rel)]
    while todo:
        here, prefix = todo.pop()
        with os.scandir(here) as it:
            entries = list(it)
        below = []
        for e in entries:
            name = f"{prefix}/{e.name}"
            if e.is_symlink() or e.is_file():
                out.append(name)
            elif e.is_dir(follow_symlinks=False):
                below.append((e.path, name))
        todo += reversed(below)
    return out


def _refuse(
    folder: Path, what: str, hint: str = "extract the bundle again from the safety copy"
) -> RecoveryError:
    return RecoveryError(f"bundle {folder}: {what}", hint)


def open_bundle(path: str | os.PathLike[str], verify: bool = True) -> Bundle:
    """Open a bundle folder as untrusted input (see the module docstring): with ``verify``, the
    manifest's and every file's hash, the content-bound id, and no symlink or special file;
    always, every expression and name it carries. Any problem: :class:`RecoveryError`, exit 2."""
    folder = Path(path)
    mpath = folder / "manifest.json"
    if not folder.is_dir() or not mpath.is_file():
        raise RecoveryError(
            f"{folder} is not a recovery bundle (no manifest.json)",
            "pass the folder `recovery extract` wrote",
        )
    if verify:
        _refuse_links(folder)
        recorded = (
            (folder / "manifest.sha256").read_text(encoding="utf-8").split()[0]
            if (folder / "manifest.sha256").is_file()
            else None
        )
        if recorded != sha256_file(mpath):
            raise _refuse(folder, "manifest.json was changed after extraction (hash mismatch)")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RecoveryError(f"bundle {folder}: manifest.json is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise RecoveryError(f"bundle {folder}: unknown format {found!r}", f"expected {FORMAT}")
    if verify:
        _verify_hashes(folder, manifest)
    if manifest.get("id_scheme") == ID_SCHEME and manifest.get("bundle_id") != content_id(manifest):
        raise _refuse(
            folder,
            f"its id {manifest.get('bundle_id')!r} is not the hash of its content "
            "(edited and re-sealed after extraction)",
        )
    try:
        old = Schema.from_dict(manifest["schemas"]["old"])
        new = Schema.from_dict(manifest["schemas"]["new"])
        mapping = mapping_from_dict(manifest["mapping"], f"bundle {folder}")
        counts = manifest["counts"]
        if not isinstance(counts, dict) or not all(isinstance(c, dict) for c in counts.values()):
            raise TypeError("counts must map tables to counts")
        for c in counts.values():
            TableCounts.from_dict(
                c
            )  # each count a non-negative int (COUNT_KEYS and filled_by_upgrade)
    except RecoveryError:
        raise
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise _refuse(folder, f"manifest.json is malformed ({type(exc).__name__}: {exc})") from None
    _check_names(folder, old, new, mapping, counts)
    if verify:
        _check_databases(
            folder, old, new, {t: m.new_table for t, m in mapping.tables.items() if m.new_table}
        )
    return Bundle(folder, manifest, old, new, mapping)


def _refuse_links(folder: Path) -> None:
    """Every bundle entry is a real folder or a regular file: a symlink could make the re-import or
    relink read (and copy into the uploads) a file outside the bundle."""
    for rel in _content_files(folder):
        st = os.lstat(folder / rel)
        if not stat.S_ISREG(st.st_mode):
            raise _refuse(folder, f"{rel} is not a regular file (a symbolic link or special file)")
    files = folder / "files"
    if files.is_symlink():
        raise _refuse(folder, "files/ is a symbolic link")
    if files.is_dir():
        for dirpath, dirnames, _ in os.walk(files):
            for d in dirnames:
                if os.path.islink(os.path.join(dirpath, d)):
                    raise _refuse(
                        folder, f"{Path(dirpath, d).relative_to(folder)} is a symbolic link"
                    )


def _verify_hashes(folder: Path, manifest: dict[str, Any]) -> None:
    recorded = manifest.get("hashes", {})
    if not isinstance(recorded, dict):
        raise _refuse(folder, "manifest.json has no file hashes")
    recorded_files = set(recorded) | {"manifest.json", "manifest.sha256"}
    extra = sorted(rel for rel in _content_files(folder) if rel not in recorded_files)
    if extra:
        raise _refuse(folder, f"{extra[0]} was added after extraction (not in the manifest)")
    bad = next((rel for rel in recorded if not _inside(rel)), None)
    if bad is not None:
        raise _refuse(folder, f"the manifest names a file outside the bundle ({bad!r})")
    missing = next((rel for rel in recorded if not (folder / rel).is_file()), None)
    if missing is not None:
        raise RecoveryError(f"bundle {folder}: {missing} is missing", "extract the bundle again")
    actual = _hashes(folder, list(recorded))
    changed = next((rel for rel, digest in recorded.items() if actual[rel] != digest), None)
    if changed is not None:
        raise _refuse(folder, f"{changed} was changed after extraction (hash mismatch)")


def _inside(rel: object) -> bool:
    return (
        isinstance(rel, str)
        and bool(rel)
        and not rel.startswith("/")
        and "\x00" not in rel
        and ".." not in rel.split("/")
    )


def _check_names(
    folder: Path, old: Schema, new: Schema, mapping: ColumnMapping, counts: dict[str, Any]
) -> None:
    """Every name and expression the re-import will build SQL from is one the recorded schemas
    know, checked with the mapping file's rules."""
    where = f"bundle {folder}"
    check_mapping(mapping, old, new, where)
    renamed = {
        t
        for t, tm in mapping.tables.items()
        if tm.new_table and new.table(tm.new_table) is not None
    }
    unknown = sorted(t for t in counts if new.table(t) is None and t not in renamed)
    if unknown:
        raise _refuse(folder, f"counts name {unknown[0]!r}, not a table of the new schema")
    from recovery.transpile.passes import default_value

    for schema in (old, new):
        for t in schema.tables.values():
            for c in t.columns:
                dv = default_value(c.default)
                if dv is not None:
                    check_tree(dv, f"{where}: default of {t.name}.{c.name}", c.default)


def _check_databases(
    folder: Path, old: Schema, new: Schema, renamed: dict[str, str] | None = None
) -> None:
    """rows.db holds tables of the new schema (their columns plus the kind) and the lost list; a
    table renamed by the new release is there under its old name (``renamed``: old → new name);
    base.db tables of the old schema (plus SQLite's and ``_recovery_*`` bookkeeping tables) — and
    no view or trigger, which a forger could use to run something when a table is read."""
    import sqlite3

    for name, schema, extra in (
        ("rows.db", new, {LOST_TABLE: LOST_COLUMNS, FILLED_TABLE: LOST_COLUMNS}),
        ("base.db", old, {}),
    ):
        path = folder / name
        if not path.is_file():
            continue
        try:
            conn = sqlite3.connect(file_uri(Path(path), mode="ro"), uri=True)
            try:
                entries = conn.execute("SELECT type, name FROM sqlite_master").fetchall()
                for kind, tname in entries:
                    if kind in ("view", "trigger"):  # code that would run when a table is read
                        raise _refuse(
                            folder, f"{name} holds a {kind} {tname!r} (only tables belong there)"
                        )
                    if kind != "table" or (
                        tname.startswith(("sqlite_", "_recovery_")) and tname not in extra
                    ):
                        continue  # indexes (never written: read-only), SQLite's and our own bookkeeping
                    t = schema.table(
                        (renamed or {}).get(tname, tname) if name == "rows.db" else tname
                    )
                    want = extra.get(tname) or (
                        (*t.column_names, KIND_COLUMN) if t is not None else None
                    )
                    if want is None:
                        raise _refuse(
                            folder, f"{name} holds a table {tname!r} its schema does not have"
                        )
                    have = tuple(
                        r[1] for r in conn.execute("SELECT * FROM pragma_table_info(?)", (tname,))
                    )
                    if have != tuple(want):
                        raise _refuse(
                            folder, f"{name} table {tname!r} has other columns than its schema"
                        )
            finally:
                conn.close()
        except sqlite3.DatabaseError as exc:
            raise _refuse(folder, f"{name} is not a readable SQLite database ({exc})") from None


def bundle_id_for(manifest: dict[str, Any]) -> str:
    """A stable identity: the hash of the sources and the extracted content."""
    h = hashlib.sha256()
    h.update(json.dumps(manifest.get("sources", {}), sort_keys=True).encode())
    h.update(json.dumps(manifest.get("counts", {}), sort_keys=True).encode())
    return h.hexdigest()[:16]
