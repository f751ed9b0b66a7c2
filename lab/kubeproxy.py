"""Write the rules kube-proxy's iptables proxier would write for a scenario.

Chain names use kube-proxy's own hash (``portProtoHash``/``servicePortEndpointChainName``:
base32 of sha256, 16 characters), comments and rule order follow its proxier, and the
``--probability`` values are ``%0.10f`` of ``1/(n-i)`` unless the scenario overrides
them. The output is ``iptables-restore --noflush`` input.
"""

from __future__ import annotations

import base64
import hashlib

from natlens.agent.rules.probability import kube_proxy_probability
from natlens.lab.scenario import Port, Scenario, Service
from natlens.proto.names import endpoint_key


def _hash(text: str) -> str:
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:16]


def svc_chain(port_name: str, protocol: str) -> str:
    return "KUBE-SVC-" + _hash(port_name + protocol.lower())


def ext_chain(port_name: str, protocol: str) -> str:
    return "KUBE-EXT-" + _hash(port_name + protocol.lower())


def sep_chain(port_name: str, protocol: str, endpoint: str) -> str:
    return "KUBE-SEP-" + _hash(port_name + protocol.lower() + endpoint)


def _q(comment: str) -> str:
    return f'"{comment}"' if " " in comment else comment


def _service_rules(sc: Scenario, svc: Service, port: Port, fam: int,
                   nat: list[str], chains: list[str], filt: list[str]) -> None:
    vip = svc.ip_of(fam)
    if vip is None:
        return
    host = "/128" if fam == 6 else "/32"
    name = svc.port_name(port)
    proto = port.protocol.lower()
    pods = sc.endpoints(svc, port, fam)
    match = f"-m {proto} -p {proto}"
    if not pods:
        icmp = "icmp6-port-unreachable" if fam == 6 else "icmp-port-unreachable"
        filt.append(f"-A KUBE-SERVICES -m comment --comment {_q(name + ' has no endpoints')} "
                    f"{match} -d {vip}{host} --dport {port.port} "
                    f"-j REJECT --reject-with {icmp}")
        if port.node_port is not None:
            filt.append(f"-A KUBE-EXTERNAL-SERVICES -m comment --comment "
                        f"{_q(name + ' has no endpoints')} -m addrtype --dst-type LOCAL "
                        f"{match} --dport {port.node_port} -j REJECT --reject-with {icmp}")
        return
    svc_c = svc_chain(name, proto)
    chains.append(svc_c)
    nat.append(f"-A KUBE-SERVICES -m comment --comment {_q(name + ' cluster IP')} {match} "
               f"-d {vip}{host} --dport {port.port} -j {svc_c}")
    if fam in sc.cluster_cidrs:
        nat.append(f"-A {svc_c} -m comment --comment {_q(name + ' cluster IP')} {match} "
                   f"-d {vip}{host} --dport {port.port} ! -s {sc.cluster_cidrs[fam]} "
                   f"-j KUBE-MARK-MASQ")
    if port.node_port is not None:
        ext = ext_chain(name, proto)
        chains.append(ext)
        nat.append(f"-A KUBE-NODEPORTS -m comment --comment {_q(name)} {match} "
                   f"--dport {port.node_port} -j {ext}")
        nat.append(f"-A {ext} -m comment --comment "
                   f"{_q('masquerade traffic for ' + name + ' external destinations')} "
                   f"-j KUBE-MARK-MASQ")
        nat.append(f"-A {ext} -j {svc_c}")
    n = len(pods)
    seps = [(ip, endpoint_key(ip, port.target_port)) for p in pods
            if (ip := p.ip_of(fam)) is not None]
    seps_named = [(ip, ep, sep_chain(name, proto, ep)) for ip, ep in seps]
    if svc.affinity == "ClientIP":
        for _, ep, sep in seps_named:
            nat.append(f"-A {svc_c} -m comment --comment {_q(name + ' -> ' + ep)} "
                       f"-m recent --name {sep} --rcheck --seconds {svc.affinity_timeout} "
                       f"--reap -j {sep}")
    for i, (ip, ep, sep) in enumerate(seps_named):
        chains.append(sep)
        rule = f"-A {svc_c} -m comment --comment {_q(name + ' -> ' + ep)}"
        if i < n - 1:
            prob = (f"{svc.probabilities[i]:0.10f}" if svc.probabilities is not None
                    else kube_proxy_probability(n, i))
            rule += f" -m statistic --mode random --probability {prob}"
        nat.append(f"{rule} -j {sep}")
        nat.append(f"-A {sep} -m comment --comment {_q(name)} -s {ip}{host} -j KUBE-MARK-MASQ")
        recent = f"-m recent --name {sep} --set " if svc.affinity == "ClientIP" else ""
        nat.append(f"-A {sep} -m comment --comment {_q(name)} {recent}{match} "
                   f"-j DNAT --to-destination {ep}")


def render(sc: Scenario, fam: int = 4) -> str:
    """One family's nat and filter tables for a node (the same on every lab node)."""
    nat: list[str] = []
    filt: list[str] = []
    chains: list[str] = []
    for svc in sc.services:
        for port in svc.ports:
            _service_rules(sc, svc, port, fam, nat, chains, filt)
    out = ["*filter"]
    out += [f":{c} - [0:0]" for c in ("KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES",
                                      "KUBE-NODEPORTS", "KUBE-FORWARD")]
    out += [
        '-A INPUT -m conntrack --ctstate NEW -m comment --comment '
        '"kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES',
        '-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD',
        '-A FORWARD -m conntrack --ctstate NEW -m comment --comment '
        '"kubernetes service portals" -j KUBE-SERVICES',
        '-A OUTPUT -m conntrack --ctstate NEW -m comment --comment '
        '"kubernetes service portals" -j KUBE-SERVICES',
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" '
        '-m mark --mark 0x4000/0x4000 -j ACCEPT',
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" '
        '-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT',
        *filt, "COMMIT", "*nat",
    ]
    out += [f":{c} - [0:0]" for c in ("KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING",
                                      "KUBE-MARK-MASQ", *chains)]
    out += [
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
        "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
        "-j MASQUERADE --random-fully",
        "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000",
        *nat,
        '-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must '
        'be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS',
        "COMMIT",
    ]
    return "\n".join(out) + "\n"
