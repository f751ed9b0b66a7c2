"""Write the rules kube-proxy's nftables proxier would write for a scenario.

Names follow its proxier: ``service-HASH-NS/NAME/PROTO/PORT`` and
``endpoint-HASH-NS/NAME/PROTO/PORT__IP/PORT`` with HASH the first 8 characters of
base32(sha256(name)); ClusterIPs are looked up in the ``service-ips`` verdict map,
node ports in ``service-nodeports``, and an endpoint is picked with ``numgen random
mod N vmap``. The output is ``nft -f`` input for one node's ``ip kube-proxy`` table, or
its ``ip6 kube-proxy`` table for the IPv6 half of a dual-stack lab.
"""

from __future__ import annotations

import base64
import hashlib

from natlens.lab.scenario import Port, Scenario, ScenarioError, Service
from natlens.proto.names import endpoint_key


def _hash(name: str) -> str:
    return base64.b32encode(hashlib.sha256(name.encode()).digest()).decode()[:8]


def port_base(svc: Service, port: Port) -> str:
    return f"{svc.namespace}/{svc.name}/{port.protocol.lower()}/{port.name}"


def service_chain(svc: Service, port: Port) -> str:
    base = port_base(svc, port)
    return f"service-{_hash(base)}-{base}"


def external_chain(svc: Service, port: Port) -> str:
    base = port_base(svc, port)
    return f"external-{_hash(base)}-{base}"


def _ep_base(svc: Service, port: Port, ip: str, target: int) -> str:
    """kube-proxy writes an IPv6 endpoint with dots for colons (not allowed in names)."""
    return f"{port_base(svc, port)}__{ip.replace(':', '.')}/{target}"


def endpoint_chain(svc: Service, port: Port, ip: str, target: int) -> str:
    base = _ep_base(svc, port, ip, target)
    return f"endpoint-{_hash(base)}-{base}"


def affinity_set(svc: Service, port: Port, ip: str, target: int) -> str:
    base = _ep_base(svc, port, ip, target)
    return f"affinity-{_hash(base)}-{base}"


def render(sc: Scenario, fam: int = 4) -> str:
    ipf = "ip6" if fam == 6 else "ip"
    addr_type = "ipv6_addr" if fam == 6 else "ipv4_addr"
    t = f"{ipf} kube-proxy"
    head = [f'add table {t} {{ comment "rules for kube-proxy" ; }}']
    chains: list[str] = []
    rules: list[str] = []
    elements: list[str] = []

    def chain(name: str, spec: str = "") -> None:
        head.append(f"add chain {t} {name}" + (f" {{ {spec} }}" if spec else ""))

    chain("nat-prerouting", "type nat hook prerouting priority dstnat ; policy accept ;")
    chain("nat-output", "type nat hook output priority -100 ; policy accept ;")
    chain("nat-postrouting", "type nat hook postrouting priority srcnat ; policy accept ;")
    chain("mark-for-masquerade")
    chain("masquerading")
    chain("services")
    # Service ports with no endpoints are rejected before NAT, as kube-proxy does it.
    for hook in ("forward", "output", "input"):
        chain(f"filter-{hook}", f"type filter hook {hook} priority -110 ; policy accept ;")
    chain("service-endpoints-check")
    chain("nodeport-endpoints-check")
    head.append(f'add chain {t} reject-chain {{ comment "helper for @no-endpoint-services '
                f'/ @no-endpoint-nodeports" ; }}')
    head += [
        f"add map {t} no-endpoint-services {{ type {addr_type} . inet_proto . inet_service : "
        f'verdict ; comment "vmap to drop or reject packets to services with no endpoints" ; }}',
        f"add map {t} no-endpoint-nodeports {{ type inet_proto . inet_service : verdict ; "
        f'comment "vmap to drop or reject packets to service nodeports with no endpoints" ; }}',
    ]
    rules += [
        f"add rule {t} reject-chain reject",
        f"add rule {t} filter-forward ct state new jump service-endpoints-check",
        f"add rule {t} filter-output ct state new jump service-endpoints-check",
        f"add rule {t} filter-input ct state new jump nodeport-endpoints-check",
        f"add rule {t} service-endpoints-check {ipf} daddr . meta l4proto . th dport "
        "vmap @no-endpoint-services",
        f"add rule {t} nodeport-endpoints-check fib daddr type local meta l4proto . "
        "th dport vmap @no-endpoint-nodeports",
    ]
    head += [
        f'add set {t} cluster-ips {{ type {addr_type} ; comment "Active ClusterIPs" ; }}',
        f"add map {t} service-ips {{ type {addr_type} . inet_proto . inet_service : verdict ; "
        f'comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }}',
        f"add map {t} service-nodeports {{ type inet_proto . inet_service : verdict ; "
        f'comment "NodePort traffic" ; }}',
    ]
    rules += [
        f"add rule {t} nat-prerouting jump services",
        f"add rule {t} nat-output jump services",
        f"add rule {t} nat-postrouting jump masquerading",
        f"add rule {t} mark-for-masquerade mark set mark or 0x4000",
        f"add rule {t} masquerading mark and 0x4000 == 0 return",
        f"add rule {t} masquerading mark set mark xor 0x4000",
        f"add rule {t} masquerading masquerade fully-random",
        f"add rule {t} services {ipf} daddr . meta l4proto . th dport vmap @service-ips",
        f"add rule {t} services fib daddr type local {ipf} daddr != "
        f"{'::1' if fam == 6 else '127.0.0.0/8'} meta l4proto . th dport vmap @service-nodeports",
    ]
    for svc in sc.services:
        if svc.probabilities is not None:
            raise ScenarioError(f"service {svc.namespace}/{svc.name}: probabilities can only "
                                f"be set in iptables mode (nftables picks with numgen)")
        vip = svc.ip_of(fam)
        if vip is None:
            continue
        elements.append(f"add element {t} cluster-ips {{ {vip} }}")
        for port in svc.ports:
            _port(sc, svc, port, fam, t, chains, rules, elements)
    return "\n".join([*head, *chains, *rules, *elements]) + "\n"


def _port(sc: Scenario, svc: Service, port: Port, fam: int, t: str, chains: list[str],
          rules: list[str], elements: list[str]) -> None:
    ipf = "ip6" if fam == 6 else "ip"
    vip = svc.ip_of(fam)
    proto = port.protocol.lower()
    pods = sc.endpoints(svc, port, fam)
    if vip is None:
        return
    if not pods:
        comment = f'comment "{svc.port_name(port)}"'
        elements.append(f"add element {t} no-endpoint-services {{ {vip} . {proto} . "
                        f"{port.port} {comment} : goto reject-chain }}")
        if port.node_port is not None:
            elements.append(f"add element {t} no-endpoint-nodeports {{ {proto} . "
                            f"{port.node_port} {comment} : goto reject-chain }}")
        return
    sc_name = service_chain(svc, port)
    chains.append(f"add chain {t} {sc_name}")
    if fam in sc.cluster_cidrs:
        rules.append(f"add rule {t} {sc_name} {ipf} daddr {vip} {proto} dport {port.port} "
                     f"{ipf} saddr != {sc.cluster_cidrs[fam]} jump mark-for-masquerade")
    eps = [(ip, endpoint_chain(svc, port, ip, port.target_port)) for p in pods
           if (ip := p.ip_of(fam)) is not None]
    if svc.affinity == "ClientIP":
        for ip, ep in eps:
            aff = affinity_set(svc, port, ip, port.target_port)
            chains.append(f"add set {t} {aff} {{ type ipv{fam}_addr ; flags dynamic,timeout ; "
                          f"timeout {svc.affinity_timeout}s ; }}")
            rules.append(f"add rule {t} {sc_name} {ipf} saddr @{aff} goto {ep}")
    # kube-proxy writes the vmap even for one endpoint ("numgen random mod 1").
    vmap = " , ".join(f"{i} : goto {ep}" for i, (_, ep) in enumerate(eps))
    rules.append(f"add rule {t} {sc_name} numgen random mod {len(eps)} vmap {{ {vmap} }}")
    for ip, ep in eps:
        chains.append(f"add chain {t} {ep}")
        rules.append(f"add rule {t} {ep} {ipf} saddr {ip} jump mark-for-masquerade")
        if svc.affinity == "ClientIP":
            aff = affinity_set(svc, port, ip, port.target_port)
            rules.append(f"add rule {t} {ep} update @{aff} {{ {ipf} saddr }}")
        rules.append(f"add rule {t} {ep} meta l4proto {proto} dnat to "
                     f"{endpoint_key(ip, port.target_port)}")
    elements.append(f"add element {t} service-ips {{ {vip} . {proto} . {port.port} "
                    f": goto {sc_name} }}")
    if port.node_port is not None:
        ext = external_chain(svc, port)
        chains.append(f"add chain {t} {ext}")
        rules += [f"add rule {t} {ext} jump mark-for-masquerade",
                  f"add rule {t} {ext} goto {sc_name}"]
        elements.append(f"add element {t} service-nodeports {{ {proto} . {port.node_port} "
                        f": goto {ext} }}")
