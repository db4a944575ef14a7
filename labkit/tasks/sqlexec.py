"""Run model-written SQL safely, and score it by what it returns (execution accuracy).

A fine-tuned model writes arbitrary text. It must never change the database, hang the kernel or
flood memory, so each query runs on a read-only connection, with an authorizer that allows
only reads, a wall-clock limit enforced by a progress handler, a size limit on values, one
statement only, and a cap on the rows fetched. Any failure is an *answer that is wrong*,
never an exception.
"""

from __future__ import annotations

import functools
import math
import re
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_TIMEOUT_S = 1.0
DEFAULT_MAX_ROWS = 10_000
_PROGRESS_EVERY = 1_000  # SQLite VM instructions between time checks
_ALLOWED_ACTIONS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION}
_ALLOWED_ACTIONS |= {getattr(sqlite3, "SQLITE_RECURSIVE", 33)}
_DENIED_FUNCTIONS = {"load_extension", "readfile", "writefile", "edit", "fts3_tokenizer"}


@dataclass
class SQLResult:
    """What running one query gave: rows, or an error message (never both)."""

    ok: bool
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    error: str = ""
    seconds: float = 0.0


def _authorizer(action: int, arg1: Any, arg2: Any, dbname: Any, source: Any) -> int:
    if action not in _ALLOWED_ACTIONS:
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_FUNCTION and str(arg2).lower() in _DENIED_FUNCTIONS:
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_READ and dbname not in (None, "main"):
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def clean_sql(sql: str) -> str:
    """The query in a model's answer: the first Markdown code block if there is one, else the
    whole text; whitespace and trailing semicolons stripped."""
    text = sql.strip()
    fence = re.search(r"```(?:[\w+-]*[ \t]*\n)?(.*?)(?:```|$)", text, flags=re.S)
    if fence:
        text = fence.group(1)
    return text.strip().rstrip(";").strip()


def run_sql(
    db_path: str | Path,
    sql: str,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> SQLResult:
    """Run one read-only query with a time limit; any error or limit hit gives ``ok=False``."""
    start = time.perf_counter()
    text = clean_sql(sql)
    if not text:
        return SQLResult(False, error="empty query")
    uri = f"{Path(db_path).resolve().as_uri()}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=timeout_s, check_same_thread=False)
    except sqlite3.Error as exc:
        return SQLResult(False, error=f"cannot open database: {exc}")
    deadline = start + timeout_s
    try:
        if hasattr(conn, "setlimit"):  # Python >= 3.11; the authorizer already denies ATTACH
            conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
            conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 1_000_000)
            conn.setlimit(sqlite3.SQLITE_LIMIT_SQL_LENGTH, 100_000)
        conn.set_authorizer(_authorizer)
        conn.set_progress_handler(lambda: 1 if time.perf_counter() > deadline else 0, _PROGRESS_EVERY)
        cursor = conn.execute(text)  # sqlite3 refuses more than one statement here
        rows = cursor.fetchmany(max_rows + 1)
        if len(rows) > max_rows:
            return SQLResult(False, error=f"more than {max_rows} rows", seconds=time.perf_counter() - start)
        columns = [d[0] for d in cursor.description or []]
        if not columns:
            return SQLResult(False, error="not a query", seconds=time.perf_counter() - start)
        return SQLResult(True, rows=[tuple(r) for r in rows], columns=columns, seconds=time.perf_counter() - start)
    except (sqlite3.Error, sqlite3.Warning, ValueError, OverflowError, MemoryError) as exc:
        message = str(exc)
        if time.perf_counter() > deadline or "interrupted" in message:
            message = f"time limit of {timeout_s:g} s exceeded"
        return SQLResult(False, error=message or type(exc).__name__, seconds=time.perf_counter() - start)
    finally:
        conn.close()


def _norm_value(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        return round(float(value), 4)  # 7 and 7.0 match; float sums in another order match
    if isinstance(value, bytes):
        return value.hex()
    return value


def normalize_rows(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Rows with numbers rounded to 4 decimals (as floats), so equal answers compare equal."""
    return [tuple(_norm_value(v) for v in row) for row in rows]


def has_order_by(sql: str) -> bool:
    """Whether the query's result order is meaningful (an ORDER BY anywhere in it)."""
    return re.search(r"\border\s+by\b", sql, flags=re.I) is not None


def rows_match(pred: list[tuple[Any, ...]], gold: list[tuple[Any, ...]], *, ordered: bool) -> bool:
    """Ordered comparison, or multiset comparison of normalized rows."""
    p, g = normalize_rows(pred), normalize_rows(gold)
    if ordered:
        return p == g
    return Counter(p) == Counter(g)


@functools.lru_cache(maxsize=4096)
def _gold_result(db_path: str, gold_sql: str, mtime: float) -> SQLResult:
    return run_sql(db_path, gold_sql, timeout_s=10.0)


def execution_match(pred_sql: str, gold_sql: str, db_path: str | Path | None = None) -> bool:
    """True when ``pred_sql`` runs safely and returns the same rows as ``gold_sql``.

    Ordered comparison when the gold query has ORDER BY, else multiset comparison. Column names
    are ignored (aliases do not matter); column order is not.
    """
    if db_path is None:
        from labkit.data.chinook import chinook_db

        db_path = chinook_db()
    path = str(Path(db_path).resolve())
    gold = _gold_result(path, gold_sql, Path(path).stat().st_mtime)
    if not gold.ok:
        raise ValueError(f"gold SQL fails ({gold.error}): {gold_sql}")
    pred = run_sql(path, pred_sql)
    if not pred.ok:
        return False
    return rows_match(pred.rows, gold.rows, ordered=has_order_by(gold_sql))
