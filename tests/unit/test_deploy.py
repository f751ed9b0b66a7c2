"""The shipped manifests and image file pass the linters operators' pipelines run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
BIN = Path(sys.executable).parent


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_manifests_are_valid_kubernetes_objects() -> None:
    manifests = sorted(str(p) for p in (ROOT / "deploy").glob("*.yaml"))
    assert manifests
    r = run(str(BIN / "kubernetes-validate"), "--strict", "--quiet", *manifests)
    assert r.returncode == 0, r.stdout + r.stderr


def test_yaml_is_lint_clean() -> None:
    r = run(str(BIN / "yamllint"), "--strict", "deploy", "examples", ".yamllint")
    assert r.returncode == 0, r.stdout + r.stderr


def test_dockerfile_is_hadolint_clean() -> None:
    r = run(str(BIN / "hadolint"), "Dockerfile")
    assert r.returncode == 0, r.stdout + r.stderr
