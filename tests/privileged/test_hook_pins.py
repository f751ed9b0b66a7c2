"""The hook's pins across agents: what a later load keeps, and what it replaces."""

from __future__ import annotations

import logging
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from natlens.agent.sources.hook_loader import HOOKS, HookProgram

pytestmark = pytest.mark.privileged


@pytest.fixture
def ns() -> Iterator[str]:
    name = f"nl{secrets.token_hex(3)}-pn"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True)


def test_a_second_load_reuses_the_pinned_maps_links_and_epoch(bpffs: Path, ns: str) -> None:
    pin = str(bpffs / "n" / "hook")
    first = HookProgram(pin, ns)
    first.close()
    second = HookProgram(pin, ns)
    try:
        assert (second.fresh, second.links, second.epoch) == (False, "reused", first.epoch)
        assert second.stale == []
    finally:
        second.detach()
        second.close()


def test_pinned_maps_of_another_layout_are_replaced_in_a_new_epoch(
        bpffs: Path, ns: str, caplog: pytest.LogCaptureFixture) -> None:
    """An older build's counters (preallocated, another size) under the pin: libbpf would
    refuse to load over it; the agent replaces the maps and links and says so."""
    pin = bpffs / "n" / "hook"
    first = HookProgram(str(pin), ns)
    first.close()
    (pin / "counters").unlink()
    subprocess.run(["bpftool", "map", "create", str(pin / "counters"), "type", "percpu_hash",
                    "key", "40", "value", "56", "entries", "1024", "name", "counters"],
                   check=True)
    with caplog.at_level(logging.WARNING, "natlens.agent"):
        second = HookProgram(str(pin), ns)
    try:
        assert second.stale == ["counters"] and second.fresh
        assert second.epoch != first.epoch and second.links == "created"
        assert "laid out by another build" in caplog.text
        assert all((pin / name).exists() for name, *_ in HOOKS)
    finally:
        second.detach()
        second.close()
