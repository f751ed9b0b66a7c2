"""Tests that run on both store backends: open one, and look inside it in SQL that both
speak."""

from __future__ import annotations

from typing import Any

from natlens.collector.store.api import Store
from natlens.collector.store.open import open_store


def writer(db: str) -> Any:
    """The store a collector opens (the backend's class, for its test-only insides)."""
    return open_store(db)


def rows(db: str, sql: str, args: list[Any] | None = None) -> list[tuple[Any, ...]]:
    """``sql`` (``?`` parameters) on a store opened as reports open it."""
    store: Any = open_store(db, read_only=True)
    try:
        return store._rows(sql, args or [])
    finally:
        store.close()


def count(db: str, table: str) -> int:
    return int(rows(db, f"SELECT COUNT(*) FROM {table}")[0][0])


def reader(db: str) -> Store:
    return open_store(db, read_only=True)
