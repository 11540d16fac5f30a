"""``recovery ARGS`` in a process of its own, forked from a server that has already imported the
libraries the package uses, answering as ``subprocess.run(..., capture_output=True, text=True)``
does.

Why: a kill test (``RECOVERY_TEST_KILL_*``) needs the command in a process of its own — the kill
hook SIGKILLs the process that runs it, and the test checks what that death leaves on disk — but a
fresh ``python -m recovery`` spends about a second and a half of CPU before the command starts (the
interpreter, then sqlalchemy, alembic, sqlglot, pandas, matplotlib, psycopg). Here one server per
test process pays that once; each command then runs in a child forked from it.

The child is a real process: its own pid, its own file descriptors, SQLite and PostgreSQL
connections and ``fcntl`` locks (none are inherited: the server opens no database and takes no
lock), its own working folder and environment (replaced whole, as ``subprocess`` replaces them),
stdout and stderr to files read back here, stdin ``/dev/null``. The server never imports the
package itself: the child imports ``recovery`` as a fresh interpreter does, so every module-level
value of the package (a process's lock key, caches, registrations) is the child's own. The kill
hooks SIGKILL it exactly as they would a fresh interpreter, and its exit status comes back as
``subprocess`` reports it (``-9`` for a SIGKILL). What differs from a fresh interpreter is only
that the third-party libraries are already imported and the hash seed is the server's. A test about
the interpreter itself (``python -m recovery``, an installed package, a terminal) runs its own
``subprocess``.
"""

from __future__ import annotations

import atexit
import json
import locale
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_SERVER = r"""
import importlib, json, os, sys
sys.path.insert(0, sys.argv[1])
from tests.forkrun import _child, _libraries
for name in _libraries():
    try:
        importlib.import_module(name)
    except Exception:
        pass
assert not [n for n in sys.modules if n == "recovery" or n.startswith("recovery.")]
replies = os.fdopen(os.dup(1), "w")
os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
print("ready", file=replies, flush=True)
for line in sys.stdin:
    req = json.loads(line)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        replies.close()
        _child(req)
    print(pid, file=replies, flush=True)
    _, status = os.waitpid(pid, 0)
    print(status, file=replies, flush=True)
"""


def _libraries() -> list[str]:
    """The modules other than the package's own that importing every module of ``recovery``
    brings in, in the order they were imported: found in a forked child, so that this process
    never imports the package itself."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read)
            import importlib
            import pkgutil

            import recovery

            for m in pkgutil.walk_packages(recovery.__path__, "recovery."):
                if not m.name.endswith("__main__"):
                    importlib.import_module(m.name)
            names = [n for n in sys.modules if not n.startswith(("recovery", "tests", "__main__"))]
            with os.fdopen(write, "w") as out:
                json.dump(names, out)
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as src:
        text = src.read()
    os.waitpid(pid, 0)
    return list(json.loads(text or "[]"))


def _child(req: dict[str, object]) -> None:
    """The forked child: the request's stdio, folder and environment, then the command; never
    returns (``os._exit`` after the interpreter's own exit work: ``atexit`` and flushing)."""
    code = 1
    try:
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        for fd, path in ((1, req["stdout"]), (2, req["stderr"])):
            f = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(f, fd)
            os.close(f)
        os.chdir(str(req["cwd"]))
        env = req["env"]
        assert isinstance(env, dict)
        os.environ.clear()
        os.environ.update(env)
        argv = [str(a) for a in req["argv"]]  # type: ignore[attr-defined]
        sys.argv = ["recovery", *argv]
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from recovery.cli import main

        main(args=argv, prog_name="recovery")
        code = 0
    except SystemExit as e:
        if e.code is None:
            code = 0
        elif isinstance(e.code, int):
            code = e.code
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001 - as the interpreter does: traceback, exit 1
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        try:  # the interpreter's exit: wait for the non-daemon threads, then the atexit handlers
            threading._shutdown()  # type: ignore[attr-defined]
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


class _Server:
    """One forking server: requests on its stdin, the child's pid then its wait status back."""

    def __init__(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RECOVERY_")}
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER, str(ROOT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
            bufsize=1,
        )
        self.lock = threading.Lock()
        assert self._line(300) == "ready", "the fork server did not start"

    def _line(self, timeout: float) -> str | None:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], max(timeout, 0))
        if not ready:
            return None
        return self.proc.stdout.readline().strip()

    def run(
        self, argv: list[str], cwd: str, env: dict[str, str], timeout: float
    ) -> tuple[int, bytes, bytes]:
        with self.lock, tempfile.TemporaryDirectory(prefix="forkrun-") as tmp:
            out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
            req = {"argv": argv, "cwd": cwd, "env": env, "stdout": str(out), "stderr": str(err)}
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
            deadline = time.monotonic() + timeout
            pid = int(self._line(60) or "0")
            assert pid > 0, "the fork server did not fork"
            status = self._line(deadline - time.monotonic())
            if status is None:
                os.kill(pid, signal.SIGKILL)
                self._line(60)
                raise subprocess.TimeoutExpired(["recovery", *argv], timeout)
            return os.waitstatus_to_exitcode(int(status)), out.read_bytes(), err.read_bytes()

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


_server: _Server | None = None


def _the_server() -> _Server:
    global _server
    if _server is None or _server.proc.poll() is not None:
        _server = _Server()
        atexit.register(_server.close)
    return _server


def forked(
    *args: object,
    env: Mapping[str, str | None] | None = None,
    cwd: Path | str | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """``recovery ARGS`` in a child process forked from the server; ``env`` is laid over
    ``os.environ`` (a ``None`` value unsets that variable), ``cwd`` is the child's working folder.
    stdout and stderr decoded as ``subprocess.run(..., text=True)`` decodes them."""
    res = forked_bytes(*args, env=env, cwd=cwd, timeout=timeout)
    return subprocess.CompletedProcess(
        res.args, res.returncode, _text(res.stdout), _text(res.stderr)
    )


def forked_bytes(
    *args: object,
    env: Mapping[str, str | None] | None = None,
    cwd: Path | str | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[bytes]:
    """:func:`forked` with stdout and stderr as the bytes the command wrote."""
    full = dict(os.environ)
    for k, v in (env or {}).items():
        if v is None:
            full.pop(k, None)
        else:
            full[k] = v
    argv = [str(a) for a in args]
    code, out, err = _the_server().run(argv, str(cwd or os.getcwd()), full, timeout)
    return subprocess.CompletedProcess(["recovery", *argv], code, out, err)


def _text(data: bytes) -> str:
    """As ``subprocess.run(..., text=True)`` decodes: the locale's encoding, universal newlines."""
    text = data.decode(locale.getpreferredencoding(False))
    return text.replace("\r\n", "\n").replace("\r", "\n")
