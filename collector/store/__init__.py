"""What the collector keeps: the interface (api.py), its backends (sqlite.py over the
portable queries of sql.py), retention and rollups."""
