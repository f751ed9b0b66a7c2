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
from natlens.agent.config import DEFAULT_PIN_ROOT
from natlens.agent.sources.ebpf_filter import remove_pins
from natlens.errors import NatlensError
from natlens.lab import kubeproxy, kubeproxy_nft
from natlens.lab.scenario import Scenario, family
from natlens.lab.state import LabState, kill, new_prefix

UNDERLAY = ipaddress.IPv4Network("172.31.255.0/24")
UNDERLAY6 = ipaddress.IPv6Network("fd00:172:31:255::/64")


class LabError(NatlensError, RuntimeError):
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


def _addr(ns: str, cidr: str, dev: str) -> None:
    # nodad: a lab address is unique by construction, and DAD would hold it back ~2 s.
    extra = ["nodad"] if ":" in cidr else []
    _ip(ns, "addr", "add", cidr, "dev", dev, *extra)


def _build(sc: Scenario, st: LabState) -> None:
    ul = _add_ns(st, f"{st.prefix}-underlay")
    _ip(ul, "link", "add", "ul0", "type", "bridge")
    _ip(ul, "link", "set", "ul0", "up")
    fams = sc.families
    node_ip = {(n.name, 4): str(UNDERLAY[i + 1]) for i, n in enumerate(sc.nodes)}
    node_ip |= {(n.name, 6): str(UNDERLAY6[i + 1]) for i, n in enumerate(sc.nodes)}
    writer = kubeproxy_nft if sc.proxy_mode == "nftables" else kubeproxy
    rules = {fam: writer.render(sc, fam) for fam in fams}
    for i, node in enumerate(sc.nodes):
        ns = _add_ns(st, _nsname(st.prefix, "node", node.name))
        st.nodes[node.name] = ns
        st.save()
        settings = [("net.ipv4.ip_forward", "1"),
                    ("net.bridge.bridge-nf-call-iptables", "1"),
                    ("net.netfilter.nf_conntrack_acct", "1"),
                    ("net.netfilter.nf_conntrack_timestamp", "1")]
        if 6 in fams:
            settings += [("net.ipv6.conf.all.forwarding", "1"),
                         ("net.bridge.bridge-nf-call-ip6tables", "1")]
        for key, val in settings:
            _sysctl(ns, key, val)
        _ip(ns, "link", "add", "cni0", "type", "bridge")
        for c in node.pod_cidrs:
            net = ipaddress.ip_network(c)
            _addr(ns, f"{net[1]}/{net.prefixlen}", "cni0")
        _ip(ns, "link", "set", "cni0", "up")
        _ip(ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"u{i}", "netns", ul)
        _ip(ul, "link", "set", f"u{i}", "master", "ul0", "up")
        _addr(ns, f"{node_ip[(node.name, 4)]}/{UNDERLAY.prefixlen}", "eth0")
        if 6 in fams:
            _addr(ns, f"{node_ip[(node.name, 6)]}/{UNDERLAY6.prefixlen}", "eth0")
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
            for ip in pod.ips:
                net = ipaddress.ip_network(node.cidr_of(family(ip)) or "")
                _addr(pns, f"{ip}/{net.prefixlen}", "eth0")
            _ip(pns, "link", "set", "eth0", "up")
            for ip in pod.ips:
                net = ipaddress.ip_network(node.cidr_of(family(ip)) or "")
                _ip(pns, *(["-6"] if family(ip) == 6 else []), "route", "add", "default",
                    "via", str(net[1]))
        for fam in fams:
            if sc.proxy_mode == "nftables":
                _run(netns.command(ns, ["nft", "-f", "-"]), stdin=rules[fam])
            else:
                tool = "ip6tables-restore" if fam == 6 else "iptables-restore"
                _run(netns.command(ns, [tool, "-w", "--noflush"]), stdin=rules[fam])
        for rule in sc.extra_rules.get(node.name, ()):
            tool = "ip6tables" if _mentions_ipv6(rule) else "iptables"
            _run(netns.command(ns, [tool, "-w", *shlex.split(rule)]))
    for node in sc.nodes:
        for other in sc.nodes:
            if other.name == node.name:
                continue
            for c in other.pod_cidrs:
                fam = family(c)
                _ip(st.nodes[node.name], *(["-6"] if fam == 6 else []), "route", "add", c,
                    "via", node_ip[(other.name, fam)])
    _start_servers(st)


def _mentions_ipv6(rule: str) -> bool:
    """An extraRules line with an IPv6 address in it is an ip6tables command."""
    for tok in shlex.split(rule):
        host = tok.split("/", 1)[0]
        if host.startswith("["):
            host = host[1:].split("]", 1)[0]
        try:
            if ipaddress.ip_address(host).version == 6:
                return True
        except ValueError:
            continue
    return False


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
