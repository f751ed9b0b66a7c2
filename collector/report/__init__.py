"""Rendering reports: JSON and tables."""
