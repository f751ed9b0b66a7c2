"""Fixtures for tests on real namespaces: a seed lab, a private bpffs."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .helpers import SEED, natlens


@pytest.fixture
def lab() -> Iterator[dict[str, Any]]:
    info = json.loads(natlens("lab", "up", str(SEED)).stdout)
    try:
        yield info
    finally:
        natlens("lab", "down", str(SEED), "--prefix", info["prefix"])


@pytest.fixture
def bpffs(tmp_path: Path) -> Iterator[Path]:
    """A bpffs of the test's own: its pinned maps go away with the unmount."""
    d = tmp_path / "bpffs"
    d.mkdir()
    subprocess.run(["mount", "-t", "bpf", "bpf", str(d)], check=True)
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=True)
