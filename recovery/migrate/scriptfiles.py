"""The application's Alembic revision files read as text, never run in this process.

Alembic's own :class:`~alembic.script.ScriptDirectory` imports every revision file to learn its
``revision`` and ``down_revision``: the file's module-level code (an ``import`` of the app's
models, an engine made at import, anything) would then run in the tool's own process, beside the
real databases, outside the sandbox (:mod:`recovery.migrate.sandbox`) that is the only place the
application's code may run. :func:`revision_files` is that ScriptDirectory with one change: each
file is parsed (:mod:`ast`) and its ``revision``, ``down_revision``, ``branch_labels`` and
``depends_on`` are read as literals, its docstring as the doc, and whether its ``downgrade`` is a
stub from the function's body. The revision graph, its errors and its walks stay Alembic's.

A value that is not a literal (computed at import) cannot be known without running the file: that
is refused with one line. Sourceless (``.pyc``-only) revisions likewise.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from alembic.config import Config
from alembic.script import Script, ScriptDirectory

from recovery.errors import RecoveryError

_FIELDS = ("revision", "down_revision", "branch_labels", "depends_on")


def stub_body(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """A function that does nothing: only ``pass``, a docstring/comments, ``...`` or
    ``raise NotImplementedError``."""
    for stmt in fn.body:
        if isinstance(stmt, ast.Pass):
            continue
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            continue  # docstring or ...
        if isinstance(stmt, ast.Raise):
            target = stmt.exc.func if isinstance(stmt.exc, ast.Call) else stmt.exc
            if isinstance(target, ast.Name) and target.id == "NotImplementedError":
                continue
        return False
    return True


class StaticScript(Script):
    """A revision read from its file's text: ``module`` holds only the literals read, the doc,
    and ``downgrade = None``; :attr:`downgrade_stub` says whether the file's ``downgrade`` does
    nothing (no ``downgrade`` at all counts as a stub)."""

    downgrade_stub: bool


def read_revision_file(path: Path) -> StaticScript | None:
    """The revision in ``path`` (None when the file names no ``revision``: not a revision file;
    Alembic's legacy file-name ids are not read). Raises :class:`RecoveryError` for a file that
    is not Python, or whose values are not literals."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (OSError, SyntaxError, ValueError) as exc:
        raise RecoveryError(
            f"cannot read the Alembic revision file {path}: {exc}",
            "fix the file (it is read as text, never run by recovery itself)",
        ) from None
    values: dict[str, Any] = {}
    downgrade: ast.FunctionDef | ast.AsyncFunctionDef | None = None
    for node in tree.body:
        value: ast.expr | None
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "downgrade":
            downgrade = node
            continue
        if isinstance(node, ast.Assign):
            names, value = [t.id for t in node.targets if isinstance(t, ast.Name)], node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names, value = [node.target.id], node.value
        else:
            continue
        for name in names:
            if name not in _FIELDS or value is None:
                continue
            try:
                values[name] = ast.literal_eval(value)
            except ValueError:
                raise RecoveryError(
                    f"the Alembic revision file {path} computes its {name} "
                    f"({ast.unparse(value)}): it cannot be known without running the file, and "
                    "recovery runs the application's code only in its sandbox",
                    f"write {name} as a literal (a string, a tuple of strings or None)",
                ) from None
    revision = values.get("revision")
    if revision is None:
        return None
    if not isinstance(revision, str):
        raise RecoveryError(
            f"the Alembic revision file {path} has a revision that is not a string ({revision!r})",
            "write revision as a string literal",
        )
    module = SimpleNamespace(
        __doc__=ast.get_docstring(tree, clean=False),
        down_revision=values.get("down_revision"),
        branch_labels=values.get("branch_labels"),
        depends_on=values.get("depends_on"),
        downgrade=None,
    )
    script = StaticScript(module, revision, path)  # type: ignore[arg-type]
    script.downgrade_stub = downgrade is None or stub_body(downgrade)
    return script


def _read_all(script: ScriptDirectory) -> Iterator[Script]:
    """Every revision of ``script``'s version folders (as Alembic lists them), read as text."""
    seen: set[Path] = set()
    for folder in [v for v in script._version_locations if v.exists()]:
        for path in Script._list_py_dir(script, folder):
            real = path.resolve()
            if real in seen or not _is_revision_file_name(real.name):
                continue
            seen.add(real)
            if real.suffix != ".py":
                if not script.sourceless:  # (Alembic lists compiled files only when sourceless)
                    continue
                raise RecoveryError(
                    f"the Alembic revision {real} has no source (sourceless = true): it "
                    "cannot be read without running it",
                    "keep the revision files' .py sources beside the application",
                )
            read = read_revision_file(real)
            if read is not None:
                yield read


def _is_revision_file_name(name: str) -> bool:
    """As Alembic lists revision files: ``*.py`` (and compiled ones, refused above) but editor
    lock files (``.#…``) and ``__init__``."""
    return not name.startswith((".#", "__init__")) and name.endswith((".py", ".pyc", ".pyo"))


def config_from_ini(alembic_ini: str | os.PathLike[str]) -> Config:
    """The application's alembic ``Config``; a missing ini is refused with one clear line."""
    ini = Path(alembic_ini)
    if not ini.is_file():
        raise RecoveryError(
            f"--alembic-ini {ini} does not exist", "point it at the application's alembic.ini"
        )
    return Config(str(ini))


def static_revisions(
    script: ScriptDirectory, upper: str | None, lower: str | None
) -> list[StaticScript]:
    """``script.iterate_revisions(upper, lower)`` of a :func:`revision_files` directory, whose
    every revision is a :class:`StaticScript` (Alembic's walk and errors)."""
    revs = list(script.iterate_revisions(upper, lower))
    static = [r for r in revs if isinstance(r, StaticScript)]
    if len(static) != len(revs):
        raise TypeError("static_revisions needs a directory made by revision_files")
    return static


def revision_files(alembic_ini: str | os.PathLike[str]) -> ScriptDirectory:
    """Alembic's ScriptDirectory of the application (``alembic_ini``'s ``script_location`` and
    ``version_locations``) whose revision map is built from the files read as text
    (:func:`read_revision_file`) instead of imported: the graph, its walks and its errors stay
    Alembic's."""
    from alembic.script.revision import RevisionMap

    script = ScriptDirectory.from_config(config_from_ini(alembic_ini))
    script.revision_map = RevisionMap(lambda: _read_all(script))
    return script
