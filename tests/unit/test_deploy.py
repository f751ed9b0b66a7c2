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


def _imports(path: Path, module_level_only: bool) -> set[str]:
    import ast

    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


def test_the_agent_image_installs_every_package_the_agent_imports() -> None:
    """Every import in agent/ and proto/ (at any depth), and every module-level import of
    natlens/ (the CLI the agent starts through), is a distribution the agent's image
    installs (pyproject.toml's [tool.natlens] agent-dependencies)."""
    import importlib.metadata
    import re

    sys.path.insert(0, str(ROOT / "scripts"))
    from requirements import name, requirements

    agent = {name(r) for r in requirements("agent", ROOT / "pyproject.toml")}
    dists = importlib.metadata.packages_distributions()
    needed: dict[str, str] = {}
    for folder, module_level in (("agent", False), ("proto", False), ("natlens", True)):
        for path in (ROOT / folder).rglob("*.py"):
            for top in _imports(path, module_level):
                for dist in dists.get(top, []):
                    if dist != "natlens":
                        needed.setdefault(re.sub(r"[-_.]+", "-", dist).lower(), str(path))
    assert needed.keys() - agent == set(), needed
    assert agent - needed.keys() == set(), "listed for the agent but not imported by it"


def test_the_postgres_collector_runs_replicas_that_survive_a_drain() -> None:
    """deploy/collector-postgres.yaml: 2+ replicas behind the agents' Service, a
    PodDisruptionBudget, the password from a Secret, readiness on /readyz (which checks
    the database), and arguments the collector accepts."""
    import yaml
    from click.testing import CliRunner

    from natlens.cli import cli

    docs = {d["kind"]: d for d in yaml.safe_load_all(
        (ROOT / "deploy" / "collector-postgres.yaml").read_text())}
    spec = docs["Deployment"]["spec"]
    assert spec["replicas"] >= 2 and spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert docs["PodDisruptionBudget"]["spec"]["minAvailable"] == 1
    (c,) = spec["template"]["spec"]["containers"]
    env = {e["name"]: e for e in c["env"]}
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "natlens-postgres"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    db = next(a for a in c["args"] if a.startswith("--db="))
    assert db.startswith("--db=postgresql://") and ":" not in db.split("//")[1].split("@")[0]
    assert docs["Service"]["metadata"]["name"] == "natlens-collector"
    # every argument is one the collector knows (parsed, not run)
    r = CliRunner().invoke(cli, [*c["args"], "--help"])
    assert r.exit_code == 0, r.output


def test_the_grafana_dashboard_is_whole() -> None:
    """Unique panel ids, a query in every data panel, and only the dashboard's own
    variables in them (tests/privileged/test_prometheus.py runs every query)."""
    import json
    import re

    d = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)) and d["uid"] == "natlens-balancing"
    names = {v["name"] for v in d["templating"]["list"]} | {"__rate_interval"}
    data = [p for p in d["panels"] if p["type"] != "row"]
    assert {"stat", "table", "timeseries"} <= {p["type"] for p in data}
    for p in data:
        assert p["targets"] and all(t["expr"] for t in p["targets"]), p["title"]
        for t in p["targets"]:
            assert set(re.findall(r"\$(\w+)", t["expr"])) <= names, t["expr"]
