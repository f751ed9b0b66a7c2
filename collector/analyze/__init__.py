"""Declared against observed: shares, intervals, tests, verdicts."""
