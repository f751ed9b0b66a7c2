"""The requirements an image installs, from pyproject.toml: ``all`` (the collector's:
every dependency) or ``agent`` (those named in ``[tool.natlens] agent-dependencies``:
what the agent imports; tests/unit/test_deploy.py holds that list to the code).
Prints one requirement per line. Used by the Dockerfile."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path


def name(requirement: str) -> str:
    """The distribution name, normalised (PEP 503)."""
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert match is not None, requirement
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


def requirements(which: str, pyproject: Path) -> list[str]:
    data = tomllib.loads(pyproject.read_text())
    deps: list[str] = data["project"]["dependencies"]
    if which == "all":
        return deps
    wanted = {name(n) for n in data["tool"]["natlens"][f"{which}-dependencies"]}
    return [d for d in deps if name(d) in wanted]


if __name__ == "__main__":
    root = Path(__file__).resolve().parent.parent
    print("\n".join(requirements(sys.argv[1], root / "pyproject.toml")))
