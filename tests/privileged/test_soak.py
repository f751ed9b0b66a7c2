"""The soak in short (2 minutes at 1,000 connections a second, the collector killed
halfway): zero loss, and the agents' memory flat. The 30-minute run is `bench/soak.py`,
results in BENCHMARKS.md."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from types import ModuleType
from typing import Any

import pytest

from .helpers import ROOT

pytestmark = pytest.mark.privileged

# MB a minute an agent's RSS may trend up by. The leak the 30-minute soak once found
# grew about 3.5 MB a minute; a healthy agent's trend here is under 0.5.
BOUND = 2.0
LEAK = 3.5


def soak_script() -> ModuleType:
    sys.path.insert(0, str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location("soak", ROOT / "bench" / "soak.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def leaking(rss: list[dict[str, Any]], mb_per_min: float) -> list[dict[str, Any]]:
    return [{**r, **{k: v + mb_per_min * r["t"] / 60 for k, v in r.items()
                     if k.endswith("_mb")}} for r in rss]


def test_two_minute_soak_loses_nothing_and_memory_stays_flat() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "soak.py")], capture_output=True,
                       text=True, timeout=600,
                       env={**os.environ, "DURATION": "120", "RATE": "1000"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    result = json.loads(r.stdout)
    assert result["exact"] and result["client_failed"] == 0
    assert sum(result["client_tally"].values()) > 100_000  # the pace was held
    rss, outage = result["rss_every_interval"], tuple(result["outage_s"])
    assert len(rss) > 40  # sampled through the run, not just at its ends
    agents = {k: v for k, v in result["rss_slope_mb_per_min"].items()
              if k.startswith("agent_")}
    assert len(agents) == 2 and all(v < BOUND for v in agents.values()), result
    # The bound catches the leak on this run's own noise: the same samples with 3.5 MB
    # a minute added trend past it.
    slopes = soak_script().slopes(leaking(rss, LEAK), 30, outage)
    assert all(slopes[k] >= BOUND for k in agents), slopes
