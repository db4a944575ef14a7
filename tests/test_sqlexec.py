"""Model-written SQL runs read-only, time-limited, one statement, capped — and never raises."""

from __future__ import annotations

import hashlib
import sqlite3
import time
from pathlib import Path

import pytest

from labkit.tasks.sqlexec import clean_sql, execution_match, has_order_by, rows_match, run_sql


@pytest.fixture()
def db(tmp_path: Path) -> Path:
    path = tmp_path / "t.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE Genre (GenreId INTEGER PRIMARY KEY, Name TEXT)")
    conn.executemany("INSERT INTO Genre VALUES (?, ?)", [(1, "Rock"), (2, "Jazz"), (3, "Metal"), (4, "Blues")])
    conn.execute("CREATE TABLE N (x INTEGER)")
    conn.executemany("INSERT INTO N VALUES (?)", [(i,) for i in range(2000)])
    conn.commit()
    conn.close()
    return path


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


HOSTILE = [
    "CREATE TABLE x (a)",
    "CREATE TEMP TABLE x AS SELECT 1",
    "DROP TABLE Genre",
    "INSERT INTO Genre VALUES (9, 'Pop')",
    "UPDATE Genre SET Name = 'x'",
    "DELETE FROM Genre",
    "ATTACH ':memory:' AS m",
    "ATTACH DATABASE 'evil.sqlite' AS evil",
    "SELECT 1; DROP TABLE Genre",
    "SELECT 1; SELECT 2",
    "PRAGMA writable_schema = 1",
    "PRAGMA table_info(Genre)",
    "VACUUM",
    "VACUUM INTO 'copy.sqlite'",
    "BEGIN",
    "SELECT load_extension('x')",
    "SELECT randomblob(100000000)",
    "not sql at all",
    "",
]


@pytest.mark.parametrize("sql", HOSTILE)
def test_hostile_sql_fails_cleanly_and_changes_nothing(db: Path, sql: str, monkeypatch) -> None:
    monkeypatch.chdir(db.parent)  # a relative ATTACH/VACUUM INTO target would land here
    before = _digest(db.parent)
    res = run_sql(db, sql)
    assert not res.ok and res.error
    assert _digest(db.parent) == before  # same files, same bytes
    assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM Genre").fetchone() == (4,)


def test_runaway_cross_join_hits_the_time_limit(db: Path) -> None:
    start = time.perf_counter()
    res = run_sql(db, "SELECT COUNT(*) FROM N a, N b, N c", timeout_s=0.3)
    assert not res.ok and "time limit" in res.error
    assert time.perf_counter() - start < 2.0


def test_infinite_recursive_cte_is_stopped_by_the_row_cap(db: Path) -> None:
    res = run_sql(db, "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT n FROM r",
                  max_rows=100)
    assert not res.ok and "more than 100 rows" in res.error


def test_a_good_query_returns_rows(db: Path) -> None:
    res = run_sql(db, "```sql\nSELECT Name FROM Genre WHERE GenreId <= 2 ORDER BY GenreId;\n```")
    assert res.ok and res.rows == [("Rock",), ("Jazz",)] and res.columns == ["Name"]


def test_clean_sql_and_order_detection() -> None:
    assert clean_sql("  SELECT 1 ;; ") == "SELECT 1"
    assert clean_sql("Here it is:\n```sql\nSELECT a\nFROM t;\n```\nThis returns a.") == "SELECT a\nFROM t"
    assert clean_sql("```SELECT 5```") == "SELECT 5"
    assert has_order_by("select a from t order  by a") and not has_order_by("SELECT a FROM t")


def test_execution_match_ordered_only_when_gold_orders(db: Path) -> None:
    gold_ordered = "SELECT Name FROM Genre ORDER BY Name"
    assert execution_match("SELECT Name FROM Genre ORDER BY Name ASC", gold_ordered, db)
    assert not execution_match("SELECT Name FROM Genre ORDER BY Name DESC", gold_ordered, db)
    gold_unordered = "SELECT Name FROM Genre"
    assert execution_match("SELECT Name FROM Genre ORDER BY Name DESC", gold_unordered, db)
    assert execution_match("SELECT g.Name AS n FROM Genre g", gold_unordered, db)  # aliases do not matter
    assert not execution_match("SELECT DISTINCT Name FROM Genre WHERE GenreId < 4", gold_unordered, db)
    assert not execution_match("SELECT GenreId, Name FROM Genre", gold_unordered, db)  # extra column
    assert not execution_match("DROP TABLE Genre", gold_unordered, db)
    assert not execution_match("SELECT COUNT(*) FROM N a, N b, N c", "SELECT COUNT(*) FROM Genre", db)


def test_rows_match_numbers_and_multisets() -> None:
    assert rows_match([(7,)], [(7.0,)], ordered=True)
    assert rows_match([(0.1 + 0.2,)], [(0.3,)], ordered=True)
    assert not rows_match([(1,), (1,)], [(1,)], ordered=False)  # multiset, not set
    assert rows_match([(2,), (1,)], [(1,), (2,)], ordered=False)
    assert not rows_match([(2,), (1,)], [(1,), (2,)], ordered=True)


def test_failing_gold_is_a_bug_not_a_wrong_answer(db: Path) -> None:
    with pytest.raises(ValueError, match="gold SQL fails"):
        execution_match("SELECT 1", "SELECT nope FROM nowhere", db)


def test_chinook_is_unchanged_by_hostile_sql(tmp_path: Path) -> None:
    from labkit.data.chinook import chinook_db

    db = chinook_db()
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    for sql in HOSTILE + ["SELECT COUNT(*) FROM Track a, Track b, Track c"]:
        assert not run_sql(db, sql, timeout_s=0.3).ok
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    assert run_sql(db, "SELECT COUNT(*) FROM Track").rows == [(3503,)]
