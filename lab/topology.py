"""Build and remove a scenario's namespaces: nodes, pods, bridges, underlay, rules.

Every object lives inside namespaces named with the lab's prefix; nothing is created in
the root namespace (veth pairs are created directly between two lab namespaces).
"""

from __future__ import annotations

import ipaddress
import re
import shlex
import subprocess
import sys
from pathlib import Path

from natlens import netns
from natlens.agent.sources.ebpf import DEFAULT_PIN_ROOT, remove_pins
from natlens.lab import kubeproxy, kubeproxy_nft
from natlens.lab.scenario import Scenario
from natlens.lab.state import LabState, kill, new_prefix

UNDERLAY = ipaddress.IPv4Network("172.31.255.0/24")


class LabError(RuntimeError):
    """A lab step failed; the message is the failing command and its error."""


def _run(argv: list[str], stdin: str | None = None) -> None:
    r = subprocess.run(argv, input=stdin, capture_output=True, text=True)
    if r.returncode != 0:
        err = (r.stderr or r.stdout).strip().splitlines()
        raise LabError(f"{' '.join(argv[:8])}: {err[-1] if err else f'exit {r.returncode}'}")


def _ip(ns: str, *args: str) -> None:
    _run(["ip", "-n", ns, *args])


def _sysctl(ns: str, key: str, value: str) -> None:
    with netns.entered(ns):
        Path("/proc/sys", key.replace(".", "/")).write_text(value)


def _nsname(prefix: str, kind: str, name: str) -> str:
    return f"{prefix}-{kind}-{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}"[:200]


def up(sc: Scenario, scenario_path: str) -> LabState:
    """Create the lab; on any failure remove what was made and re-raise."""
    st = LabState(sc.name, new_prefix(), str(Path(scenario_path).resolve()))
    st.save()
    try:
        _build(sc, st)
    except BaseException:
        down(st)
        raise
    return st


def _add_ns(st: LabState, name: str) -> str:
    st.namespaces.append(name)
    st.save()
    _run(["ip", "netns", "add", name])
    _ip(name, "link", "set", "lo", "up")
    return name


def _build(sc: Scenario, st: LabState) -> None:
    ul = _add_ns(st, f"{st.prefix}-underlay")
    _ip(ul, "link", "add", "ul0", "type", "bridge")
    _ip(ul, "link", "set", "ul0", "up")
    node_ip = {n.name: str(UNDERLAY[i + 1]) for i, n in enumerate(sc.nodes)}
    nft = sc.proxy_mode == "nftables"
    rules = kubeproxy_nft.render(sc) if nft else kubeproxy.render(sc)
    for i, node in enumerate(sc.nodes):
        ns = _add_ns(st, _nsname(st.prefix, "node", node.name))
        st.nodes[node.name] = ns
        st.save()
        for key, val in (("net.ipv4.ip_forward", "1"),
                         ("net.bridge.bridge-nf-call-iptables", "1"),
                         ("net.netfilter.nf_conntrack_acct", "1"),
                         ("net.netfilter.nf_conntrack_timestamp", "1")):
            _sysctl(ns, key, val)
        cidr = ipaddress.IPv4Network(node.pod_cidr)
        gw = f"{cidr[1]}/{cidr.prefixlen}"
        _ip(ns, "link", "add", "cni0", "type", "bridge")
        _ip(ns, "addr", "add", gw, "dev", "cni0")
        _ip(ns, "link", "set", "cni0", "up")
        _ip(ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"u{i}", "netns", ul)
        _ip(ul, "link", "set", f"u{i}", "master", "ul0", "up")
        _ip(ns, "addr", "add", f"{node_ip[node.name]}/{UNDERLAY.prefixlen}", "dev", "eth0")
        _ip(ns, "link", "set", "eth0", "up")
        for j, pod in enumerate(node.pods):
            pns = _add_ns(st, _nsname(st.prefix, "pod", pod.name))
            st.pods[f"{pod.namespace}/{pod.name}"] = pns
            st.save()
            _ip(ns, "link", "add", f"veth{j}", "type", "veth", "peer", "name", "eth0",
                "netns", pns)
            _ip(ns, "link", "set", f"veth{j}", "master", "cni0")
            _ip(ns, "link", "set", f"veth{j}", "type", "bridge_slave", "hairpin", "on")
            _ip(ns, "link", "set", f"veth{j}", "up")
            _ip(pns, "addr", "add", f"{pod.ip}/{cidr.prefixlen}", "dev", "eth0")
            _ip(pns, "link", "set", "eth0", "up")
            _ip(pns, "route", "add", "default", "via", str(cidr[1]))
        if nft:
            _run(netns.command(ns, ["nft", "-f", "-"]), stdin=rules)
        else:
            _run(netns.command(ns, ["iptables-restore", "-w", "--noflush"]), stdin=rules)
        for rule in sc.extra_rules.get(node.name, ()):
            _run(netns.command(ns, ["iptables", "-w", *shlex.split(rule)]))
    for node in sc.nodes:
        for other in sc.nodes:
            if other.name != node.name:
                _ip(st.nodes[node.name], "route", "add", other.pod_cidr, "via",
                    node_ip[other.name])
    _start_servers(st)


def _start_servers(st: LabState) -> None:
    if not st.pods:
        return
    proc = subprocess.Popen([sys.executable, "-m", "natlens.lab.serve", str(st.path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    st.pids.append(proc.pid)
    st.save()
    assert proc.stdout is not None and proc.stderr is not None
    line = proc.stdout.readline().strip()
    if line != "ready":
        err = proc.stderr.read().strip().splitlines()
        raise LabError(f"pod servers did not start: {err[-1] if err else 'no output'}")
    proc.stdout.close()
    proc.stderr.close()


def down(st: LabState) -> list[str]:
    """Stop the lab's processes and delete its namespaces; returns what was removed."""
    for pid in st.pids:
        kill(pid)
    existing = set(subprocess.run(["ip", "netns", "list"], capture_output=True,
                                  text=True).stdout.split())
    removed = []
    for ns in reversed(st.namespaces):
        removed += remove_pins(DEFAULT_PIN_ROOT, ns)  # agents' maps (natlens agent --netns)
        if ns in existing:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
            removed.append(ns)
    st.path.unlink(missing_ok=True)
    return removed
