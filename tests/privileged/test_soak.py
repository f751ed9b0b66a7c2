"""The soak in short (2 minutes at 1,000 connections a second, the collector killed
halfway): zero loss. The 30-minute run is `bench/soak.py`, results in BENCHMARKS.md."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .helpers import ROOT

pytestmark = pytest.mark.privileged


def test_two_minute_soak_loses_nothing() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "soak.py")], capture_output=True,
                       text=True, timeout=600,
                       env={**os.environ, "DURATION": "120", "RATE": "1000"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    result = json.loads(r.stdout)
    assert result["exact"] and result["client_failed"] == 0
    assert sum(result["client_tally"].values()) > 100_000  # the pace was held
    rss = result["rss_every_interval"]
    for key in (k for k in rss[0] if k.endswith("_mb") and not k.startswith("collector")):
        assert rss[-1][key] < rss[1][key] + 64, rss  # no growth beyond a few batches
