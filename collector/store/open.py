"""Open the store a ``--db`` value names: an SQLite file path (the embedded default)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from natlens.collector.store.api import Store
from natlens.errors import NatlensError


class StoreError(NatlensError):
    """The store cannot be opened; the message says which and why."""


def open_store(url: str, read_only: bool = False) -> Store:
    """``read_only``: reports and queries, which never change the store; the store must
    exist then."""
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
