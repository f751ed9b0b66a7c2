"""Batching and delivery to the collector."""
