"""The collector: ingest, store, enrich, analyze, report."""
