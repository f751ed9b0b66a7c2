"""The shipped images, built here (`make image`) and run as the manifests run them: the
seed scenario with each node's agent in an agent container and the collector in a
collector container, their security contexts, volumes and arguments read from
deploy/daemonset.yaml and deploy/collector.yaml (not copied by hand), mutual TLS as
deployed. Counts are exact against the client tally.

The lab's additions to what a cluster gives a pod: host networking for the collector
too (its port on 127.0.0.1), the lab's namespaces (/run/netns, and --netns to pick a
node's), a bpffs of the test's own as the host's /sys/fs/bpf, and the addresses.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.certs import make_pki

from .helpers import ROOT, SERVICE, free_port, observed, report_of, traffic, wait_for

pytestmark = pytest.mark.privileged

PODMAN = ["podman", "--runtime", "runc"]  # crun refuses this machine's hybrid cgroups
LIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]


def version() -> str:
    import tomllib

    with open(ROOT / "pyproject.toml", "rb") as f:
        return str(tomllib.load(f)["project"]["version"])


def require_podman() -> None:
    missing = [t for t in ("podman", "runc", "debootstrap") if shutil.which(t) is None]
    if missing:
        reason = f"{', '.join(missing)} not installed (make install)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"privileged test cannot run under CI=true: {reason}", pytrace=False)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def images() -> dict[str, str]:
    require_podman()
    r = subprocess.run(["bash", str(ROOT / "scripts" / "image.sh")], capture_output=True,
                       text=True, timeout=1800, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return {c: f"natlens-{c}:{version()}" for c in ("agent", "collector")}


# ---------------------------------------------------------------- the manifests

def workload(manifest: str, container: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pod spec, container) of the manifest's workload that runs ``container``."""
    for doc in yaml.safe_load_all((ROOT / "deploy" / manifest).read_text()):
        if doc and doc.get("kind") in ("DaemonSet", "Deployment"):
            pod = doc["spec"]["template"]["spec"]
            for c in pod["containers"]:
                if c["name"] == container:
                    return pod, c
    raise AssertionError(f"no container {container} in deploy/{manifest}")


def podman_flags(pod: dict[str, Any], c: dict[str, Any], volumes: dict[str, str],
                 fields: dict[str, str] | None = None) -> list[str]:
    """The pod's and the container's security context as podman options, the
    container's volume mounts (emptyDir as tmpfs, the rest from ``volumes``: volume
    name → host path, the test's stand-ins for secrets, claims and host paths) and its
    environment (``fields``: the downward API's values, such as spec.nodeName)."""
    psc, sc = pod.get("securityContext", {}), c.get("securityContext", {})
    assert not sc.get("privileged", False)
    flags = ["--read-only-tmpfs=false"]  # only what the manifest mounts is writable
    user = sc.get("runAsUser", psc.get("runAsUser"))
    group = sc.get("runAsGroup", psc.get("runAsGroup"))
    if user is not None:
        flags += ["--user", f"{user}:{group}" if group is not None else str(user)]
    if sc.get("runAsNonRoot", psc.get("runAsNonRoot")):
        assert user not in (None, 0)
    if "fsGroup" in psc:
        flags += ["--group-add", str(psc["fsGroup"])]
    if sc.get("allowPrivilegeEscalation") is False:
        flags += ["--security-opt", "no-new-privileges"]
    if sc.get("readOnlyRootFilesystem"):
        flags.append("--read-only")
    caps = sc.get("capabilities", {})
    flags += [f"--cap-drop={x.lower()}" for x in caps.get("drop", [])]
    flags += [f"--cap-add={x.lower()}" for x in caps.get("add", [])]
    if pod.get("hostNetwork"):
        flags += ["--network", "host"]
    for e in c.get("env", []):
        value = e["value"] if "value" in e else (fields or {})[
            e["valueFrom"]["fieldRef"]["fieldPath"]]
        flags += ["-e", f"{e['name']}={value}"]
    kinds = {v["name"]: v for v in pod.get("volumes", [])}
    for m in c.get("volumeMounts", []):
        v = kinds[m["name"]]
        if "emptyDir" in v:
            flags += ["--tmpfs", m["mountPath"]]
        else:
            ro = ":ro" if m.get("readOnly") else ""
            flags += ["-v", f"{volumes[m['name']]}:{m['mountPath']}{ro}"]
    return flags


def args(c: dict[str, Any], **override: str) -> list[str]:
    """The container's arguments with some flags' values replaced (the addresses)."""
    out = []
    for a in c["args"]:
        flag = a.split("=", 1)[0]
        key = flag.lstrip("-").replace("-", "_")
        out.append(f"{flag}={override.pop(key)}" if key in override else a)
    return out + [f"--{k.replace('_', '-')}={v}" for k, v in override.items()]


# ---------------------------------------------------------------- running them

class Containers:
    def __init__(self) -> None:
        self.names: list[str] = []

    def run(self, image: str, flags: list[str], argv: list[str]) -> str:
        name = f"natlens-test-{uuid.uuid4().hex[:8]}"
        subprocess.run([*PODMAN, "run", "-d", "--name", name, *LIMITS, *flags, image, *argv],
                       check=True, capture_output=True, text=True, timeout=120)
        self.names.append(name)
        return name

    def logs(self, name: str) -> str:
        r = subprocess.run([*PODMAN, "logs", name], capture_output=True, text=True)
        return r.stdout + r.stderr

    def exec(self, name: str, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*PODMAN, "exec", name, *argv], capture_output=True, text=True,
                              timeout=60)

    def state(self, name: str) -> dict[str, Any]:
        r = subprocess.run([*PODMAN, "inspect", name, "--format", "{{json .State}}"],
                           capture_output=True, text=True, check=True)
        return dict(json.loads(r.stdout))

    def stop(self, name: str, timeout: int = 150) -> int:
        subprocess.run([*PODMAN, "stop", "-t", str(timeout), name], capture_output=True,
                       timeout=timeout + 30)
        return int(self.state(name)["ExitCode"])

    def close(self) -> None:
        for n in self.names:
            subprocess.run([*PODMAN, "rm", "-f", "-t", "0", n], capture_output=True)


@pytest.fixture
def containers() -> Iterator[Containers]:
    c = Containers()
    try:
        yield c
    finally:
        c.close()


def secret(d: Path, files: dict[str, str], gid: int | None = None) -> str:
    """A secret volume as the kubelet writes it: mode 0400, or 0440 and the pod's fsGroup
    as group when it has one."""
    d.mkdir()
    for name, src in files.items():
        shutil.copy(src, d / name)
        if gid is not None:
            os.chown(d / name, 0, gid)
        (d / name).chmod(0o440 if gid is not None else 0o400)
    d.chmod(0o755)
    return str(d)


IMPORT_ALL = """
import importlib, pkgutil, natlens.{0} as pkg
from bcc import BPF  # noqa: F401  (Debian's python3-bpfcc, seen through the venv)
for m in pkgutil.walk_packages(pkg.__path__, "natlens.{0}."):
    importlib.import_module(m.name)
print("ok")
"""


def test_each_image_imports_all_it_runs(images: dict[str, str]) -> None:
    """Every module of the agent imports in the agent's image (its slimmer package set
    is enough), every module of the collector in the collector's; a collector command
    in the agent's image says in one line that it belongs to the other image."""
    def run(image: str, *argv: str, entry: str = "python3") -> subprocess.CompletedProcess[str]:
        return subprocess.run([*PODMAN, "run", "--rm", *LIMITS, "--entrypoint", entry, image,
                               *argv], capture_output=True, text=True, timeout=120)

    r = run(images["agent"], "-c", IMPORT_ALL.format("agent"))
    assert r.stdout.strip() == "ok", r.stderr[-3000:]
    r = run(images["collector"], "-c", IMPORT_ALL.format("collector").replace(
        "from bcc import BPF  # noqa: F401  (Debian's python3-bpfcc, seen through the venv)",
        ""))
    assert r.stdout.strip() == "ok", r.stderr[-3000:]
    r = run(images["agent"], "report", "--db", "/tmp/x.db", entry="natlens")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "lacks the Python package 'scipy'" in r.stderr and "natlens-collector" in r.stderr


def get(url: str) -> list[str]:
    return ["python3", "-c", f"import urllib.request as u; print(u.urlopen({url!r}, "
            "timeout=5).read().decode())"]


def test_the_images_run_the_seed_as_deployed(images: dict[str, str], lab: dict[str, Any],
                                              bpffs: Path, tmp_path: Path,
                                              containers: Containers) -> None:
    pki = make_pki(tmp_path / "pki")
    cpod, cspec = workload("collector.yaml", "collector")
    apod, aspec = workload("daemonset.yaml", "agent")
    gid = cpod["securityContext"]["fsGroup"]
    db = tmp_path / "db"
    db.mkdir()
    os.chown(db, cpod["securityContext"]["runAsUser"], gid)
    grpc_port, http_port = free_port(), free_port()
    collector = containers.run(images["collector"], [
        *podman_flags(cpod, cspec, {
            "db": str(db), "tls": secret(tmp_path / "ctls", {
                "tls.crt": pki.server_cert, "tls.key": pki.server_key, "ca.crt": pki.ca}, gid)}),
        "--network", "host"], args(cspec, listen=f"127.0.0.1:{grpc_port}",
                                   http=f"127.0.0.1:{http_port}"))
    wait_for(lambda: "listening" in containers.logs(collector), 60)

    agent_tls = secret(tmp_path / "atls", {"ca.crt": pki.ca, "tls.crt": pki.client_cert,
                                           "tls.key": pki.client_key})
    agents, health = {}, {}
    for node, ns in lab["nodes"].items():
        health[node] = free_port()
        agents[node] = containers.run(images["agent"], [
            *podman_flags(apod, aspec, {"bpffs": str(bpffs), "tls": agent_tls},
                          {"spec.nodeName": node}),
            "-v", "/run/netns:/run/netns"], args(
                aspec, collector=f"127.0.0.1:{grpc_port}",
                health_listen=f"127.0.0.1:{health[node]}", netns=ns))

    def ready(name: str, port: int) -> bool:
        return containers.exec(name, *get(f"http://127.0.0.1:{port}/readyz")).returncode == 0

    for node, name in agents.items():
        wait_for(lambda n=name, p=health[node]: ready(n, p)  # type: ignore[misc]
                 or containers.state(n)["Status"] != "running", 90)
        assert containers.state(name)["Status"] == "running", containers.logs(name)
    assert ready(collector, http_port)
    for name in (collector, *agents.values()):
        r = containers.exec(name, "natlens", "--version")
        assert r.returncode == 0 and version() in r.stdout, r.stdout + r.stderr

    tally = traffic(lab, 300)
    for name in agents.values():
        assert containers.stop(name) == 0, containers.logs(name)
        log = containers.logs(name)
        # the manifest's capabilities: the hook loaded, privileges dropped as far as allowed
        assert "source hook" in log and "privileges: kept" in log, log
        assert "Traceback" not in log, log
    assert containers.stop(collector) == 0, containers.logs(collector)
    (entry,) = [s for s in report_of(db / "natlens.db")["services"]
                if s["node"] == "k8s-node2" and s["service"] == SERVICE]
    assert observed(entry) == tally
