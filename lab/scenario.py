"""Load and check a lab scenario (the YAML format in docs/scenario.md / DESIGN.md).

Strict on purpose: an unknown key or an address outside its node's podCIDR is a typo
that would otherwise produce a lab that silently measures something else.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ScenarioError(ValueError):
    """The scenario file is not a valid lab description; the message says where."""


@dataclass(frozen=True)
class Serve:
    port: int
    body: str
    protocol: str = "TCP"


@dataclass(frozen=True)
class Pod:
    name: str
    namespace: str
    ip: str
    node: str
    labels: dict[str, str] = field(default_factory=dict)
    serve: Serve | None = None


@dataclass(frozen=True)
class Node:
    name: str
    pod_cidr: str
    pods: tuple[Pod, ...]


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
    cluster_ip: str
    selector: dict[str, str]
    affinity: str
    ports: tuple[Port, ...]
    probabilities: tuple[float, ...] | None = None
    affinity_timeout: int = 10800

    def port_name(self, port: Port) -> str:
        """kube-proxy's ServicePortName: ``ns/name:port`` (``ns/name`` when unnamed)."""
        base = f"{self.namespace}/{self.name}"
        return f"{base}:{port.name}" if port.name else base


@dataclass(frozen=True)
class Traffic:
    source: str
    service: str
    connections: int


@dataclass(frozen=True)
class Scenario:
    name: str
    proxy_mode: str
    nodes: tuple[Node, ...]
    services: tuple[Service, ...]
    traffic: tuple[Traffic, ...]
    extra_rules: dict[str, tuple[str, ...]]
    cluster_cidr: str

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

    def endpoints(self, svc: Service, port: Port) -> list[Pod]:
        """Pods selected by the service, in kube-proxy's order (by endpoint string)."""
        sel = [p for p in self.pods
               if svc.selector and all(p.labels.get(k) == v for k, v in svc.selector.items())]
        return sorted(sel, key=lambda p: f"{p.ip}:{port.target_port}")


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


def _ipv4(value: Any, where: str) -> str:
    try:
        ip = ipaddress.ip_address(str(value))
    except ValueError:
        raise ScenarioError(f"{where}: {value!r} is not an IP address") from None
    if ip.version != 4:
        raise ScenarioError(f"{where}: IPv6 lab scenarios are not supported yet ({value})")
    return str(ip)


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


def _pod(raw: Any, where: str, node: str, cidr: ipaddress.IPv4Network) -> Pod:
    d = _check_keys(raw, where, {"name", "namespace", "ip"}, {"labels", "serve"})
    ip = _ipv4(d["ip"], f"{where}.ip")
    if ipaddress.ip_address(ip) not in cidr or ip in (str(cidr[0]), str(cidr[1])):
        raise ScenarioError(f"{where}.ip: {ip} is not a pod address in {cidr} "
                            f"(the first host is the cni0 gateway)")
    serve = None
    if d.get("serve") is not None:
        s = _check_keys(d["serve"], f"{where}.serve", {"port", "body"}, {"protocol"})
        serve = Serve(_int(s["port"], f"{where}.serve.port"), str(s["body"]),
                      _protocol(s.get("protocol", "TCP"), f"{where}.serve.protocol"))
    return Pod(str(d["name"]), str(d["namespace"]), ip, node,
               _str_map(d.get("labels"), f"{where}.labels"), serve)


def _service(raw: Any, where: str) -> Service:
    d = _check_keys(raw, where, {"name", "namespace", "clusterIP", "ports"},
                    {"selector", "sessionAffinity", "probabilities", "affinityTimeoutSeconds"})
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
    return Service(str(d["name"]), str(d["namespace"]), _ipv4(d["clusterIP"], f"{where}.clusterIP"),
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
        nd = _check_keys(raw, w, {"name", "podCIDR"}, {"pods"})
        try:
            cidr = ipaddress.IPv4Network(str(nd["podCIDR"]))
        except ValueError as e:
            raise ScenarioError(f"{w}.podCIDR: {e}") from None
        pods = tuple(_pod(p, f"{w}.pods[{j}]", str(nd["name"]), cidr)
                     for j, p in enumerate(nd.get("pods") or []))
        nodes.append(Node(str(nd["name"]), str(cidr), pods))
    services = tuple(_service(s, f"{source}.services[{i}]")
                     for i, s in enumerate(d["services"] or []))
    traffic = []
    for i, t in enumerate(d.get("traffic") or []):
        td = _check_keys(t, f"{source}.traffic[{i}]", {"from", "service", "connections"}, set())
        traffic.append(Traffic(str(td["from"]), str(td["service"]),
                               _int(td["connections"], f"{source}.traffic[{i}].connections",
                                    1, 1_000_000)))
    extra_raw = d.get("extraRules") or {}
    if not isinstance(extra_raw, dict):
        raise ScenarioError(f"{source}.extraRules: expected a mapping of node → list of rules")
    extra = {str(k): tuple(str(x) for x in (v or [])) for k, v in extra_raw.items()}
    cidrs = [ipaddress.IPv4Network(n.pod_cidr) for n in nodes]
    if "clusterCIDR" in d:
        cluster = str(ipaddress.IPv4Network(str(d["clusterCIDR"])))
    else:
        net = cidrs[0]
        while not all(c.subnet_of(net) for c in cidrs):
            net = net.supernet()
        cluster = str(net)
    sc = Scenario(str(d["name"]), mode, tuple(nodes), services, tuple(traffic), extra, cluster)
    _cross_check(sc, source)
    return sc


def _cross_check(sc: Scenario, source: str) -> None:
    names = [n.name for n in sc.nodes]
    if len(set(names)) != len(names):
        raise ScenarioError(f"{source}.nodes: node names must be unique")
    for a in range(len(sc.nodes)):
        for b in range(a + 1, len(sc.nodes)):
            if ipaddress.IPv4Network(sc.nodes[a].pod_cidr).overlaps(
                    ipaddress.IPv4Network(sc.nodes[b].pod_cidr)):
                raise ScenarioError(f"{source}.nodes: podCIDRs of {names[a]} and {names[b]} "
                                    f"overlap")
    seen_ip: dict[str, str] = {}
    seen_name: set[str] = set()
    bodies: dict[str, str] = {}
    for p in sc.pods:
        if p.ip in seen_ip:
            raise ScenarioError(f"{source}: pods {seen_ip[p.ip]} and {p.name} share IP {p.ip}")
        seen_ip[p.ip] = p.name
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
            n = len(sc.endpoints(s, port))
            if s.probabilities is not None and n and len(s.probabilities) != n - 1:
                raise ScenarioError(f"{source}: service {s.namespace}/{s.name}: probabilities "
                                    f"needs {n - 1} values for {n} endpoints")
    for t in sc.traffic:
        sc.pod(t.source)
        sc.service_port(t.service)
    for node in sc.extra_rules:
        if node not in names:
            raise ScenarioError(f"{source}.extraRules: no node named {node!r}")


def load_scenario(path: str | Path) -> Scenario:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ScenarioError(f"{path}: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ScenarioError(f"{path}:{where} not valid YAML") from None
    return parse_scenario(data, str(path))
