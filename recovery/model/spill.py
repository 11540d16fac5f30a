"""``SpillList``: a list whose length grows with the rows of a run, kept in bounded memory.

The re-import's outcome lists one entry per row deleted after the deploy, per conflict and per
row skipped with its unit; at 10M parts that is hundreds of thousands of Python objects. A
``SpillList`` keeps its first :func:`spill_after` items in memory (what the report shows and
slices) and writes every later one, encoded as JSON text, to a private temporary SQLite file
(``sqlite3.connect("")``: on disk, deleted by SQLite when the connection closes, a small page
cache). Reading it back gives equal items in the same order.

It is a ``list`` subclass so that the code that builds and reads the outcome does not change:
``append``, ``extend``/``+=``, ``len``, truth, iteration, ``reversed``, indexing and slicing,
item assignment, ``==``, ``in`` all see every item. Code in C that reads a list's storage
directly (the ``json`` module's C encoder, ``str.join``, ``list.sort``) sees only the head, so
the outcome's JSON is written by :func:`recovery.model.outcome.outcome_json_chunks` item by item,
and ``json.dump(..., indent=...)`` (the pure-Python encoder, which iterates) reads it whole.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, SupportsIndex, TypeVar, overload

T = TypeVar("T")
R = TypeVar("R")

SPILL_ENV = "RECOVERY_SPILL_AFTER"
"""Environment variable: how many items a :class:`SpillList` keeps in memory (default
:data:`SPILL_AFTER`); the tests set it small so the spilled path runs on small worlds."""
SPILL_AFTER = 2000
"""Items kept in memory by default: more than the report lists of any section (1,000)."""
_BATCH = 512


def spill_after() -> int:
    """The in-memory head's size: ``$RECOVERY_SPILL_AFTER`` when it is a whole number >= 0."""
    text = os.environ.get(SPILL_ENV, "")
    return int(text) if text.isdigit() else SPILL_AFTER


def _in_memory(name: str) -> Any:
    """List method ``name`` for a :class:`SpillList` all in memory; refused once it spilled."""
    method = getattr(list, name)

    def call(self: SpillList[Any], *args: Any, **kwargs: Any) -> Any:
        if self.spilled:
            raise TypeError(f"a SpillList with spilled items has no {name}()")
        return method(self, *args, **kwargs)

    call.__name__ = name
    return call


class SpillList(list[T]):
    """A list of ``T`` that spills every item past the first ``head`` to a temporary SQLite
    file. ``encode`` turns an item into text and ``decode`` back into an equal item (default:
    plain JSON)."""

    def __init__(
        self,
        items: Iterable[T] = (),
        *,
        encode: Callable[[T], str] = json.dumps,
        decode: Callable[[str], T] = json.loads,
        head: int | None = None,
    ) -> None:
        super().__init__()
        self._encode = encode
        self._decode = decode
        self._limit = spill_after() if head is None else head
        self._db: sqlite3.Connection | None = None
        self._spilled = 0
        self._lock = threading.Lock()
        # answers of stored_object_keys / stored_json_types, for the spilled items as they were
        # (any write to the file clears them)
        self._asked: dict[tuple[str, str], Any] = {}
        self.extend(items)

    # -- the spilled tail ----------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            db = sqlite3.connect("", check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA cache_size = -1024")  # 1 MB of pages; the rest stays on disk
            db.execute("PRAGMA journal_mode = OFF")
            db.execute("CREATE TABLE spill (i INTEGER PRIMARY KEY, v TEXT NOT NULL)")
            db.execute("BEGIN")  # never committed: the file lives as long as the connection
            self._db = db
        return self._db

    @property
    def spilled(self) -> int:
        """How many items live in the temporary file (0: the list is all in memory)."""
        return self._spilled

    def _spill(self, items: Iterable[T]) -> None:
        """Append ``items`` to the file, in batches (encoded one by one: bounded memory)."""
        self._spill_texts(self._encode(x) for x in items)

    def _spill_texts(self, texts: Iterable[str]) -> None:
        """Append items given as their ``encode`` text to the file, in batches."""
        with self._lock:
            self._asked.clear()
            db = self._conn()
            batch: list[tuple[int, str]] = []
            for text in texts:
                batch.append((self._spilled + len(batch), text))
                if len(batch) >= _BATCH:
                    db.executemany("INSERT INTO spill (i, v) VALUES (?, ?)", batch)
                    self._spilled += len(batch)
                    batch = []
            if batch:
                db.executemany("INSERT INTO spill (i, v) VALUES (?, ?)", batch)
                self._spilled += len(batch)

    def _tail(self, start: int = 0, stop: int | None = None) -> Iterator[T]:
        """The spilled items ``start`` <= i < ``stop``, in order, read in batches."""
        at, stop = start, self._spilled if stop is None else stop
        while at < stop:
            with self._lock:
                if self._db is None:
                    return
                rows = self._db.execute(
                    "SELECT i, v FROM spill WHERE i >= ? AND i < ? ORDER BY i LIMIT ?",
                    (at, stop, _BATCH),
                ).fetchall()
            if not rows:
                return
            for _, v in rows:
                yield self._decode(v)
            at = rows[-1][0] + 1

    def close(self) -> None:
        """Drop the temporary file (SQLite deletes it); the list is then only its head."""
        with self._lock:
            self._asked.clear()
            if self._db is not None:
                self._db.close()
                self._db = None
            self._spilled = 0

    def __del__(self) -> None:
        db = getattr(self, "_db", None)
        if db is not None:
            db.close()

    # -- growing -----------------------------------------------------------------------------

    def append(self, item: T) -> None:
        if not self._spilled and super().__len__() < self._limit:
            super().append(item)
        else:
            self._spill([item])

    def extend(self, items: Iterable[T]) -> None:
        it = iter(items)
        while not self._spilled and super().__len__() < self._limit:
            try:
                super().append(next(it))
            except StopIteration:
                return
        self._spill(it)

    def extend_rows(
        self, rows: Iterable[R], make: Callable[[R], T], text: Callable[[R], str | None]
    ) -> None:
        """``extend(make(r) for r in rows)``, but a row that goes to the file is stored as
        ``text(r)`` when that gives one, without ``make`` or ``encode`` (rows whose item's text was
        already made, e.g. by SQLite). ``text(r)`` must be None or exactly ``encode(make(r))``."""
        it = iter(rows)
        while not self._spilled and super().__len__() < self._limit:
            try:
                super().append(make(next(it)))
            except StopIteration:
                return
        self._spill_texts(t if (t := text(r)) is not None else self._encode(make(r)) for r in it)

    def __iadd__(self, items: Iterable[T]) -> SpillList[T]:  # type: ignore[override,misc]
        self.extend(items)
        return self

    def clear(self) -> None:
        super().clear()
        self.close()

    def encoded(self, encode: Callable[[T], str]) -> Iterator[str]:
        """Every item as text, in order: ``encode`` of each item held in memory, and the spilled
        ones as stored — their own ``encode``'s text, not decoded and encoded again. Only for
        ``encode`` that gives the same text as this list's own (the caller checks)."""
        for x in super().__iter__():
            yield encode(x)
        at = 0
        while at < self._spilled:
            with self._lock:
                if self._db is None:
                    return
                rows = self._db.execute(
                    "SELECT i, v FROM spill WHERE i >= ? ORDER BY i LIMIT ?", (at, _BATCH)
                ).fetchall()
            if not rows:
                return
            for _, v in rows:
                yield v
            at = rows[-1][0] + 1

    def stored_object_keys(self) -> set[str] | None:
        """The keys of the JSON objects the spilled items are stored as, read from their text by
        SQLite (``json_each``: nothing decoded in Python); None when a stored text is not a JSON
        object. It names the items' keys only for an ``encode`` that writes each item as an
        object with its keys (the caller checks, as for :meth:`encoded`). Read once while the
        spilled items stay as they are."""
        with self._lock:
            if self._db is None:
                return set()
            if ("keys", "") not in self._asked:
                self._asked[("keys", "")] = self._object_keys(self._db)
            found = self._asked[("keys", "")]
            return None if found is None else set(found)

    @staticmethod
    def _object_keys(db: sqlite3.Connection) -> set[str] | None:
        try:
            odd = db.execute(
                "SELECT 1 FROM spill WHERE json_type(v) IS NOT 'object' LIMIT 1"
            ).fetchone()
            if odd is not None:
                return None
            return {
                str(k)
                for (k,) in db.execute("SELECT DISTINCT j.key FROM spill, json_each(spill.v) AS j")
            }
        except sqlite3.Error:  # text SQLite's JSON functions refuse
            return None

    def stored_json_types(self, path: str) -> set[str] | None:
        """The JSON types (``json_type``: ``array``, ``object``, ``text`` …, ``None`` where the
        path is absent) found at ``path`` (e.g. ``$.key``) in the spilled items' stored text,
        read by SQLite; None when a stored text is not JSON. Read once per ``path`` while the
        spilled items stay as they are."""
        with self._lock:
            if self._db is None:
                return set()
            if ("types", path) not in self._asked:
                try:
                    self._asked[("types", path)] = {
                        t
                        for (t,) in self._db.execute(
                            "SELECT DISTINCT json_type(v, ?) FROM spill", (path,)
                        )
                    }
                except sqlite3.Error:
                    self._asked[("types", path)] = None
            found = self._asked[("types", path)]
            return None if found is None else set(found)

    def encodes_with(self, encode: Callable[[T], str]) -> bool:
        """Whether this list stores its spilled items as ``encode``'s text."""
        return self._encode is encode

    def map_in_memory(self, fn: Callable[[T], T]) -> None:
        """Replace each item held in memory (the first ``head``) by ``fn`` of it; the spilled ones
        stay as their ``encode``/``decode`` give them back. :func:`recovery.model.outcome.as_read_back`
        uses it where ``decode(encode(x))`` already equals ``fn(x)``."""
        for i in range(super().__len__()):
            super().__setitem__(i, fn(super().__getitem__(i)))

    # -- reading -----------------------------------------------------------------------------

    def __len__(self) -> int:
        return super().__len__() + self._spilled

    def __bool__(self) -> bool:
        return len(self) > 0

    def __iter__(self) -> Iterator[T]:
        yield from super().__iter__()
        if self._spilled:
            yield from self._tail()

    def __reversed__(self) -> Iterator[T]:
        for i in range(len(self) - 1, -1, -1):
            yield self[i]

    def __contains__(self, item: object) -> bool:
        return any(x == item for x in self)

    @overload
    def __getitem__(self, i: SupportsIndex) -> T: ...
    @overload
    def __getitem__(self, i: slice) -> list[T]: ...
    def __getitem__(self, i: SupportsIndex | slice) -> T | list[T]:
        n, head = len(self), super().__len__()
        if isinstance(i, slice):
            start, stop, step = i.indices(n)
            if step == 1:
                out = list(super().__getitem__(slice(start, min(stop, head))))
                if stop > head and self._spilled:
                    out += self._tail(max(start, head) - head, stop - head)
                return out
            return [self[k] for k in range(start, stop, step)]
        k = i.__index__()
        k = k + n if k < 0 else k
        if not 0 <= k < n:
            raise IndexError("list index out of range")
        if k < head:
            return super().__getitem__(k)
        return next(self._tail(k - head, k - head + 1))

    def __setitem__(self, i: Any, value: Any) -> None:
        if isinstance(i, slice):
            raise TypeError("a SpillList takes item assignment by index only")
        n, head = len(self), super().__len__()
        k = i.__index__()
        k = k + n if k < 0 else k
        if not 0 <= k < n:
            raise IndexError("list assignment index out of range")
        if k < head:
            super().__setitem__(k, value)
            return
        with self._lock:
            assert self._db is not None
            self._asked.clear()
            self._db.execute("UPDATE spill SET v = ? WHERE i = ?", (self._encode(value), k - head))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, (list, tuple)) or len(self) != len(other):
            return False
        return all(a == b for a, b in zip(self, other, strict=True))

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = None

    def __repr__(self) -> str:
        shown = list(super().__iter__())[:3]
        return f"SpillList({len(self)} items, {self._spilled} spilled, first {shown!r})"

    def copy(self) -> list[T]:
        """A plain list of every item (all in memory: for small lists and tests)."""
        return list(self)

    def __copy__(self) -> SpillList[T]:
        return SpillList(self, encode=self._encode, decode=self._decode, head=self._limit)

    def __deepcopy__(self, memo: dict[int, Any]) -> SpillList[T]:
        return self.__copy__()

    def __reduce__(self) -> Any:
        return (list, (list(self),))

    insert = _in_memory("insert")
    pop = _in_memory("pop")
    remove = _in_memory("remove")
    sort = _in_memory("sort")
    reverse = _in_memory("reverse")
    index = _in_memory("index")
    count = _in_memory("count")
    __delitem__ = _in_memory("__delitem__")
    __imul__ = _in_memory("__imul__")


class LazyMap(list[Any]):
    """``fn`` of each item of ``items``, computed as it is iterated: a list to ``json.dump`` (which
    iterates lists) without a second copy of a long list in memory. Like :class:`SpillList`, its
    storage is empty to C code that reads a list's storage (``json.dumps`` without ``indent``)."""

    def __init__(self, fn: Any, items: Any) -> None:
        super().__init__()
        self._fn, self._items = fn, items

    def __iter__(self) -> Iterator[Any]:
        return (self._fn(x) for x in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return len(self._items) > 0

    def __getitem__(self, i: Any) -> Any:
        got = self._items[i]
        return [self._fn(x) for x in got] if isinstance(i, slice) else self._fn(got)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, (list, tuple)) and list(self) == list(other)

    __hash__ = None

    def __reduce__(self) -> Any:
        return (list, (list(self),))
