"""What a test needs from this machine: missing, the test is skipped with the reason,
and under CI=true it fails instead (a missing capability must never hide)."""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest


def missing(what: str, reason: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} cannot run under CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


def tool(name: str, package: str) -> str:
    """The path of ``name``, which Debian's ``package`` installs (make install)."""
    found = shutil.which(name)
    if found is None:
        missing(f"a test needing {name}", f"{name} not installed (Debian package {package}; "
                "make install)")
    return found
