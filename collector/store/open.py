"""Open the store a ``--db`` value names: an SQLite file path (the embedded default) or
a ``postgresql://`` URL (a database shared by collector replicas)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from natlens.collector.store.api import Store
from natlens.errors import NatlensError


def redact(url: str) -> str:
    """A ``--db`` value fit for logs and messages: a URL without its password."""
    if "://" not in url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


class StoreError(NatlensError):
    """The store cannot be opened; the message says which and why."""


def open_store(url: str, read_only: bool = False) -> Store:
    """``read_only``: reports and queries, which never change the store; the store must
    exist then."""
    if url.startswith(("postgresql://", "postgres://")):
        return _open_postgres(url, read_only)
    if "://" in url:
        raise StoreError(f"{url.split('://')[0]}://…: not a store natlens knows (an SQLite "
                         "file path, or postgresql://USER@HOST:PORT/DB)")
    from natlens.collector.store.sqlite import SqliteStore

    path = Path(url)
    if path.is_dir():
        raise StoreError(f"{url}: a directory, not a database file")
    if read_only and not path.is_file():
        raise StoreError(f"{url}: no such database")
    try:
        return SqliteStore(url, read_only=read_only)
    except sqlite3.DatabaseError as e:
        raise sqlite_error(url, e) from None


def sqlite_error(url: str, e: sqlite3.DatabaseError) -> StoreError:
    """An sqlite3 error as the one line a user can act on."""
    msg = str(e)
    if "locked" in msg or "busy" in msg:
        return StoreError(f"{url}: database is locked by another process (a collector "
                          "migrating it?); retry")
    if "not a database" in msg or "malformed" in msg:
        return StoreError(f"{url}: not an SQLite database, or a damaged one ({msg})")
    if "unable to open" in msg:
        return StoreError(f"{url}: cannot open ({msg}; is its folder writable?)")
    return StoreError(f"{url}: {msg}")


def _open_postgres(url: str, read_only: bool) -> Store:
    """Connection and schema errors (bad URL, wrong password, server down, another
    application's database) as one line."""
    import psycopg

    from natlens.collector.store.api import StoreUnavailable
    from natlens.collector.store.postgres import PostgresStore
    from natlens.collector.store.schema import SchemaError

    try:
        return PostgresStore(url, read_only=read_only)
    except StoreUnavailable as e:
        raise StoreError(str(e)) from None
    except SchemaError as e:
        raise StoreError(f"{redact(url)}: {e}") from None
    except psycopg.Error as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StoreError(f"{redact(url)}: {first}") from None
