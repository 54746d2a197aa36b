"""Prepared statements for the per-message path, run on the connection's own DBAPI cursor.

A conversation turn is four tiny statements. Through SQLAlchemy's execution machinery each costs
about 60 µs of Python on this machine type, against about 6 µs for the same statement on the
driver's cursor; at a thousand messages a second that difference is the budget. So these few
statements are compiled once per dialect *by SQLAlchemy* (same SQL, same bind casts), and their
values go through the column types' own bind and result processors (same storage format as
everything else), but they execute on the raw cursor inside the caller's transaction.
Driver errors are wrapped into SQLAlchemy's exception classes, so callers see one error tree.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement

Processor = Callable[[Any], Any] | None


@dataclass(frozen=True, slots=True)
class _Compiled:
    sql: str
    names: tuple[str, ...]  # parameter names in the order the driver wants them
    positional: bool
    binds: Mapping[str, Processor]
    defaults: Mapping[str, Any]  # values fixed in the statement (e.g. status == 'draft')
    results: tuple[tuple[int, Callable[[Any], Any]], ...]  # (column, processor), where one is
    returns_rows: bool


_CURSOR = "homevisit.fastsql.cursor"


def _cursor(conn: Connection, raw: Any) -> Any:
    """The driver cursor kept with this driver connection (making one costs ~20 µs a statement).

    A connection is used by one thread at a time and its statements run one after another, so
    one cursor per connection is enough; it goes when the connection is closed or replaced.
    """
    info = conn.connection.info
    kept = info.get(_CURSOR)
    if kept is None or kept[0] is not raw:
        kept = info[_CURSOR] = (raw, raw.cursor())
    return kept[1]


class Prepared:
    """A statement compiled once per dialect. `columns` are the selected/returned columns; rows
    come back as named tuples of them (`row.name`, as SQLAlchemy's rows)."""

    def __init__(self, stmt: ClauseElement, columns: Iterable[ColumnElement[Any]] = ()) -> None:
        self.stmt = stmt
        self.columns = tuple(columns)
        names = [c.key or f"_{i}" for i, c in enumerate(self.columns)]
        self._make: Callable[[Iterable[Any]], tuple[Any, ...]] = (
            namedtuple("Row", names, rename=True)._make if names else tuple  # type: ignore[attr-defined]
        )
        self._compiled: dict[str, _Compiled] = {}

    def _for(self, dialect: Dialect) -> _Compiled:
        compiled = self._compiled.get(dialect.name)
        if compiled is None:
            c = cast(SQLCompiler, self.stmt.compile(dialect=dialect))
            if "POSTCOMPILE" in c.string:  # IN (...) of a list, literal_execute parameters
                raise ValueError(f"cannot prepare a statement SQLAlchemy completes late: {c}")
            # The processors SQLAlchemy itself applies for this dialect (its own cache).
            binds = cast(
                dict[str, Processor], {name: c._bind_processors.get(name) for name in c.binds}
            )
            positional = bool(c.positional)
            names = tuple(c.positiontup or ()) if positional else tuple(binds)
            defaults = {name: b.value for name, b in c.binds.items() if not b.required}
            processors = [col.type._cached_result_processor(dialect, None) for col in self.columns]
            results = tuple((i, p) for i, p in enumerate(processors) if p is not None)
            is_dml = c.isinsert or c.isupdate or c.isdelete
            returns_rows = not is_dml or bool(c.effective_returning)
            compiled = _Compiled(
                c.string, names, positional, binds, defaults, results, returns_rows
            )
            self._compiled[dialect.name] = compiled
        return compiled

    def execute(
        self, conn: Connection, params: Mapping[str, Any]
    ) -> tuple[list[tuple[Any, ...]], int]:
        """Run inside `conn`'s transaction; returns (rows with result processing, rowcount)."""
        c = self._for(conn.dialect)
        values = {}
        for name, proc in c.binds.items():
            value = params[name] if name in params else c.defaults[name]
            values[name] = proc(value) if proc is not None else value
        args: Any = tuple(values[n] for n in c.names) if c.positional else values
        raw = conn.connection.driver_connection
        assert raw is not None
        cursor = _cursor(conn, raw)
        try:
            cursor.execute(c.sql, args)
            rows = cursor.fetchall() if c.returns_rows else []
            count = cursor.rowcount
        except conn.dialect.loaded_dbapi.Error as exc:
            lost = conn.dialect.is_disconnect(exc, raw, cursor)
            conn.connection.info.pop(_CURSOR, None)  # a fresh cursor next time
            cursor.close()
            raise DBAPIError.instance(
                c.sql,
                args,
                exc,
                conn.dialect.loaded_dbapi.Error,
                hide_parameters=True,  # parameters hold answers and names: never in a message
                connection_invalidated=lost,
                dialect=conn.dialect,
            ) from exc
        if not rows:
            return [], count
        make = self._make
        if c.results:  # (a loop over the processed columns only: no generator per row)
            out = []
            for row in rows:
                cells = list(row)
                for i, p in c.results:
                    cells[i] = p(cells[i])
                out.append(make(cells))
            return out, count
        return [make(row) for row in rows], count
