"""Load and check a lab scenario (the YAML format in docs/scenario.md).

Strict on purpose: an unknown key or an address outside its node's podCIDR is a typo
that would otherwise produce a lab that silently measures something else.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from natlens.errors import NatlensError
from natlens.inputs import read_text
from natlens.proto.names import endpoint_key


class ScenarioError(NatlensError, ValueError):
    """The scenario file is not a valid lab description; the message says where."""


@dataclass(frozen=True)
class Serve:
    port: int
    body: str
    protocol: str = "TCP"


def family(addr: str) -> int:
    """4 or 6: the IP family of an address or network."""
    return 6 if ":" in addr else 4


@dataclass(frozen=True)
class Pod:
    name: str
    namespace: str
    ips: tuple[str, ...]  # one per family, like status.podIPs
    node: str
    labels: dict[str, str] = field(default_factory=dict)
    serve: Serve | None = None

    @property
    def ip(self) -> str:
        return self.ips[0]

    def ip_of(self, fam: int) -> str | None:
        return next((ip for ip in self.ips if family(ip) == fam), None)


@dataclass(frozen=True)
class Node:
    name: str
    pod_cidrs: tuple[str, ...]  # one per family, like spec.podCIDRs
    pods: tuple[Pod, ...]

    @property
    def pod_cidr(self) -> str:
        return self.pod_cidrs[0]

    def cidr_of(self, fam: int) -> str | None:
        return next((c for c in self.pod_cidrs if family(c) == fam), None)


@dataclass(frozen=True)
class Port:
    name: str
    port: int
    target_port: int
    protocol: str
    node_port: int | None = None


@dataclass(frozen=True)
class Service:
    name: str
    namespace: str
    cluster_ips: tuple[str, ...]  # one per family, like spec.clusterIPs
    selector: dict[str, str]
    affinity: str
    ports: tuple[Port, ...]
    probabilities: tuple[float, ...] | None = None
    affinity_timeout: int = 10800

    @property
    def cluster_ip(self) -> str:
        return self.cluster_ips[0]

    @property
    def families(self) -> tuple[int, ...]:
        return tuple(family(ip) for ip in self.cluster_ips)

    def ip_of(self, fam: int) -> str | None:
        return next((ip for ip in self.cluster_ips if family(ip) == fam), None)

    def port_name(self, port: Port) -> str:
        """kube-proxy's ServicePortName: ``ns/name:port`` (``ns/name`` when unnamed)."""
        base = f"{self.namespace}/{self.name}"
        return f"{base}:{port.name}" if port.name else base


@dataclass(frozen=True)
class Traffic:
    source: str
    service: str
    connections: int
    family: int | None = None  # IPv4/IPv6 for a dual-stack service; its first family if unset


@dataclass(frozen=True)
class Scenario:
    name: str
    proxy_mode: str
    nodes: tuple[Node, ...]
    services: tuple[Service, ...]
    traffic: tuple[Traffic, ...]
    extra_rules: dict[str, tuple[str, ...]]
    cluster_cidrs: dict[int, str]  # family → the cluster's pod network

    @property
    def cluster_cidr(self) -> str:
        return self.cluster_cidrs.get(4) or self.cluster_cidrs[6]

    @property
    def families(self) -> tuple[int, ...]:
        """The families the lab builds: those of any pod network or service."""
        fams = {family(c) for n in self.nodes for c in n.pod_cidrs}
        fams |= {f for s in self.services for f in s.families}
        return tuple(sorted(fams))

    @property
    def pods(self) -> tuple[Pod, ...]:
        return tuple(p for n in self.nodes for p in n.pods)

    def pod(self, name: str) -> Pod:
        for p in self.pods:
            if p.name == name or f"{p.namespace}/{p.name}" == name:
                return p
        raise ScenarioError(f"no pod named {name!r} in scenario {self.name!r}")

    def service_port(self, ref: str) -> tuple[Service, Port]:
        """``NS/NAME:PORT`` (or ``NS/NAME`` for a single-port service) → service, port."""
        base, _, pname = ref.partition(":")
        for s in self.services:
            if f"{s.namespace}/{s.name}" != base:
                continue
            ports = [p for p in s.ports if p.name == pname or (not pname and len(s.ports) == 1)]
            if ports:
                return s, ports[0]
        raise ScenarioError(f"no service port {ref!r} in scenario {self.name!r}")

    def endpoints(self, svc: Service, port: Port, fam: int | None = None) -> list[Pod]:
        """Pods selected by the service that have an address of the family (the
        service's first by default), in kube-proxy's order (by endpoint string)."""
        f = fam or svc.families[0]
        sel = [p for p in self.pods if p.ip_of(f) is not None and svc.selector
               and all(p.labels.get(k) == v for k, v in svc.selector.items())]
        return sorted(sel, key=lambda p: endpoint_key(p.ip_of(f) or "", port.target_port))


def _check_keys(obj: Any, where: str, required: set[str], optional: set[str]) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ScenarioError(f"{where}: expected a mapping, got {type(obj).__name__}")
    unknown = set(obj) - required - optional
    if unknown:
        raise ScenarioError(f"{where}: unknown key {sorted(unknown)[0]!r} "
                            f"(allowed: {', '.join(sorted(required | optional))})")
    missing = required - set(obj)
    if missing:
        raise ScenarioError(f"{where}: missing key {sorted(missing)[0]!r}")
    return obj


def _addr(value: Any, where: str) -> str:
    try:
        return str(ipaddress.ip_address(str(value)))
    except ValueError:
        raise ScenarioError(f"{where}: {value!r} is not an IP address") from None


def _addrs(d: dict[str, Any], one: str, many: str, where: str) -> tuple[str, ...]:
    """``one: ADDR`` or ``many: [ADDR, ADDR]`` (at most one per family), as Kubernetes
    spells single- and dual-stack fields."""
    if (one in d) == (many in d):
        raise ScenarioError(f"{where}: give either {one!r} or {many!r}")
    if one in d:
        return (_addr(d[one], f"{where}.{one}"),)
    raw = d[many]
    if not isinstance(raw, list) or not 1 <= len(raw) <= 2:
        raise ScenarioError(f"{where}.{many}: expected a list of one or two addresses")
    out = tuple(_addr(x, f"{where}.{many}[{i}]") for i, x in enumerate(raw))
    if len({family(a) for a in out}) != len(out):
        raise ScenarioError(f"{where}.{many}: at most one address per family")
    return out


def _int(value: Any, where: str, lo: int = 1, hi: int = 65535) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ScenarioError(f"{where}: expected an integer in [{lo}, {hi}], got {value!r}")
    return value


def _protocol(value: Any, where: str) -> str:
    if value not in ("TCP", "UDP"):
        raise ScenarioError(f"{where}: protocol must be TCP or UDP, got {value!r}")
    return str(value)


def _str_map(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ScenarioError(f"{where}: expected a mapping")
    return {str(k): str(v) for k, v in value.items()}


def _network(value: Any, where: str) -> str:
    try:
        return str(ipaddress.ip_network(str(value)))
    except ValueError as e:
        raise ScenarioError(f"{where}: {e}") from None


def _pod(raw: Any, where: str, node: str, cidrs: tuple[str, ...]) -> Pod:
    d = _check_keys(raw, where, {"name", "namespace"}, {"ip", "ips", "labels", "serve"})
    ips = _addrs(d, "ip", "ips", where)
    for ip in ips:
        nets = [ipaddress.ip_network(c) for c in cidrs if family(c) == family(ip)]
        if not nets:
            raise ScenarioError(f"{where}: {ip} is IPv{family(ip)} but node {node} has no "
                                f"IPv{family(ip)} podCIDR")
        net = nets[0]
        if ipaddress.ip_address(ip) not in net or ip in (str(net[0]), str(net[1])):
            raise ScenarioError(f"{where}: {ip} is not a pod address in {net} "
                                f"(the first host is the cni0 gateway)")
    serve = None
    if d.get("serve") is not None:
        s = _check_keys(d["serve"], f"{where}.serve", {"port", "body"}, {"protocol"})
        serve = Serve(_int(s["port"], f"{where}.serve.port"), str(s["body"]),
                      _protocol(s.get("protocol", "TCP"), f"{where}.serve.protocol"))
    return Pod(str(d["name"]), str(d["namespace"]), ips, node,
               _str_map(d.get("labels"), f"{where}.labels"), serve)


def _service(raw: Any, where: str) -> Service:
    d = _check_keys(raw, where, {"name", "namespace", "ports"},
                    {"clusterIP", "clusterIPs", "selector", "sessionAffinity", "probabilities",
                     "affinityTimeoutSeconds"})
    affinity = d.get("sessionAffinity", "None")
    if affinity not in ("None", "ClientIP"):
        raise ScenarioError(f"{where}.sessionAffinity: must be None or ClientIP")
    if not isinstance(d["ports"], list) or not d["ports"]:
        raise ScenarioError(f"{where}.ports: expected a non-empty list")
    ports = []
    for j, p in enumerate(d["ports"]):
        pw = f"{where}.ports[{j}]"
        pd = _check_keys(p, pw, {"port"}, {"name", "targetPort", "protocol", "nodePort"})
        port = _int(pd["port"], f"{pw}.port")
        np_ = pd.get("nodePort")
        ports.append(Port(str(pd.get("name", "")), port,
                          _int(pd.get("targetPort", port), f"{pw}.targetPort"),
                          _protocol(pd.get("protocol", "TCP"), f"{pw}.protocol"),
                          None if np_ is None else _int(np_, f"{pw}.nodePort", 30000, 32767)))
    probs = d.get("probabilities")
    if probs is not None:
        if not isinstance(probs, list) or not all(
                isinstance(x, int | float) and 0 <= x <= 1 for x in probs):
            raise ScenarioError(f"{where}.probabilities: expected a list of numbers in [0, 1]")
        probs = tuple(float(x) for x in probs)
    return Service(str(d["name"]), str(d["namespace"]),
                   _addrs(d, "clusterIP", "clusterIPs", where),
                   _str_map(d.get("selector"), f"{where}.selector"), affinity, tuple(ports),
                   probs, _int(d.get("affinityTimeoutSeconds", 10800),
                               f"{where}.affinityTimeoutSeconds", 1, 86400))


def parse_scenario(data: Any, source: str = "scenario") -> Scenario:
    d = _check_keys(data, source, {"name", "nodes", "services"},
                    {"proxyMode", "traffic", "extraRules", "clusterCIDR"})
    mode = d.get("proxyMode", "iptables")
    if mode not in ("iptables", "nftables"):
        raise ScenarioError(f"{source}.proxyMode: {mode!r} is not supported by the lab "
                            f"(iptables or nftables)")
    if not isinstance(d["nodes"], list) or not d["nodes"]:
        raise ScenarioError(f"{source}.nodes: expected a non-empty list")
    nodes = []
    for i, raw in enumerate(d["nodes"]):
        w = f"{source}.nodes[{i}]"
        nd = _check_keys(raw, w, {"name"}, {"podCIDR", "podCIDRs", "pods"})
        if ("podCIDR" in nd) == ("podCIDRs" in nd):
            raise ScenarioError(f"{w}: give either 'podCIDR' or 'podCIDRs'")
        raw_cidrs = [nd["podCIDR"]] if "podCIDR" in nd else nd["podCIDRs"]
        if not isinstance(raw_cidrs, list) or not 1 <= len(raw_cidrs) <= 2:
            raise ScenarioError(f"{w}.podCIDRs: expected a list of one or two networks")
        cidrs = tuple(_network(c, f"{w}.podCIDR") for c in raw_cidrs)
        if len({family(c) for c in cidrs}) != len(cidrs):
            raise ScenarioError(f"{w}.podCIDRs: at most one network per family")
        pods = tuple(_pod(p, f"{w}.pods[{j}]", str(nd["name"]), cidrs)
                     for j, p in enumerate(nd.get("pods") or []))
        nodes.append(Node(str(nd["name"]), cidrs, pods))
    services = tuple(_service(s, f"{source}.services[{i}]")
                     for i, s in enumerate(d["services"] or []))
    traffic = []
    for i, t in enumerate(d.get("traffic") or []):
        tw = f"{source}.traffic[{i}]"
        td = _check_keys(t, tw, {"from", "service", "connections"}, {"family"})
        fam = td.get("family")
        if fam not in (None, "IPv4", "IPv6"):
            raise ScenarioError(f"{tw}.family: must be IPv4 or IPv6, got {fam!r}")
        traffic.append(Traffic(str(td["from"]), str(td["service"]),
                               _int(td["connections"], f"{tw}.connections", 1, 1_000_000),
                               None if fam is None else int(fam[-1])))
    extra_raw = d.get("extraRules") or {}
    if not isinstance(extra_raw, dict):
        raise ScenarioError(f"{source}.extraRules: expected a mapping of node → list of rules")
    extra = {str(k): tuple(str(x) for x in (v or [])) for k, v in extra_raw.items()}
    sc = Scenario(str(d["name"]), mode, tuple(nodes), services, tuple(traffic), extra,
                  _cluster_cidrs(d.get("clusterCIDR"), nodes, source))
    _cross_check(sc, source)
    return sc


def _cluster_cidrs(raw: Any, nodes: list[Node], source: str) -> dict[int, str]:
    """``clusterCIDR`` as kube-proxy's flag spells it (``V4[,V6]``), or per family the
    smallest network holding every node's podCIDR."""
    out: dict[int, str] = {}
    if raw is not None:
        for part in str(raw).split(","):
            net = _network(part.strip(), f"{source}.clusterCIDR")
            if family(net) in out:
                raise ScenarioError(f"{source}.clusterCIDR: at most one network per family")
            out[family(net)] = net
    for fam in (4, 6):
        cidrs = [ipaddress.ip_network(c) for n in nodes for c in n.pod_cidrs
                 if family(c) == fam]
        if fam in out or not cidrs:
            continue
        sup = cidrs[0]
        while not all(c.subnet_of(sup) for c in cidrs):  # type: ignore[arg-type]
            sup = sup.supernet()
        out[fam] = str(sup)
    return out


def _cross_check(sc: Scenario, source: str) -> None:
    names = [n.name for n in sc.nodes]
    if len(set(names)) != len(names):
        raise ScenarioError(f"{source}.nodes: node names must be unique")
    for a in range(len(sc.nodes)):
        for b in range(a + 1, len(sc.nodes)):
            for ca in sc.nodes[a].pod_cidrs:
                for cb in sc.nodes[b].pod_cidrs:
                    na, nb = ipaddress.ip_network(ca), ipaddress.ip_network(cb)
                    if na.version == nb.version and na.overlaps(nb):
                        raise ScenarioError(f"{source}.nodes: podCIDRs of {names[a]} and "
                                            f"{names[b]} overlap")
    seen_ip: dict[str, str] = {}
    seen_name: set[str] = set()
    bodies: dict[str, str] = {}
    for p in sc.pods:
        for ip in p.ips:
            if ip in seen_ip:
                raise ScenarioError(f"{source}: pods {seen_ip[ip]} and {p.name} share IP {ip}")
            seen_ip[ip] = p.name
        if p.name in seen_name:
            raise ScenarioError(f"{source}: pod name {p.name!r} is used twice")
        seen_name.add(p.name)
        if p.serve:
            if p.serve.body in bodies:
                raise ScenarioError(f"{source}: pods {bodies[p.serve.body]} and {p.name} serve "
                                    f"the same body; bodies identify endpoints")
            bodies[p.serve.body] = p.name
    for s in sc.services:
        for port in s.ports:
            for fam in s.families:  # the same probabilities are written in every family
                n = len(sc.endpoints(s, port, fam))
                if s.probabilities is not None and n and len(s.probabilities) != n - 1:
                    raise ScenarioError(f"{source}: service {s.namespace}/{s.name}: "
                                        f"probabilities needs {n - 1} values for {n} "
                                        f"endpoints")
    for t in sc.traffic:
        pod = sc.pod(t.source)
        svc, _ = sc.service_port(t.service)
        fam = t.family or svc.families[0]
        if svc.ip_of(fam) is None:
            raise ScenarioError(f"{source}: service {t.service} has no IPv{fam} cluster IP")
        if pod.ip_of(fam) is None:
            raise ScenarioError(f"{source}: pod {pod.name} has no IPv{fam} address")
    for node in sc.extra_rules:
        if node not in names:
            raise ScenarioError(f"{source}.extraRules: no node named {node!r}")


def load_scenario(path: str | Path) -> Scenario:
    p = Path(path)
    try:
        text = read_text(str(p))
    except NatlensError as e:
        raise ScenarioError(str(e)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ScenarioError(f"{path}:{where} not valid YAML") from None
    return parse_scenario(data, str(path))
