"""Which column names a row to a person (part_number, quote_number, …): the label reports and
conflict lists show beside a row's key. Read by the extract and the re-import alike."""

from __future__ import annotations

from typing import Any, Protocol

LABEL_COLUMNS = (
    "part_number",
    "quote_number",
    "code",
    "username",
    "filename",
    "order_number",
    "number",
    "name",
    "title",
    "email",
)


class HasColumns(Protocol):
    def column(self, name: str) -> Any: ...


def label_column(t: HasColumns) -> str | None:
    """The column that names a row to a person (part_number, quote_number, …), if the table has one."""
    return next((n for n in LABEL_COLUMNS if t.column(n) is not None), None)
