"""SQLite storage through sqlite-utils."""
