"""Rules parse vs iptables-save on 2,000 services x 10 endpoints (ratio must be <= 1.0).

Loads kube-proxy-format rules into a scratch network namespace, then times (median of
5) `iptables-save` printing them against `parse_iptables_save` reading that output.
Run: .venv/bin/python bench/rules_parse.py  (root)
"""

from __future__ import annotations

import statistics
import subprocess
import time
import uuid

from natlens.agent.rules.iptables import parse_iptables_save
from natlens.lab.kubeproxy import sep_chain, svc_chain

SERVICES, ENDPOINTS, RUNS = 2000, 10, 5


def rules() -> str:
    chains, lines = [], []
    for s in range(SERVICES):
        name = f"ns{s % 50}/svc{s}:http"
        vip = f"10.96.{s // 250}.{s % 250 + 1}"
        svc = svc_chain(name, "tcp")
        chains.append(svc)
        lines.append(f'-A KUBE-SERVICES -m comment --comment "{name} cluster IP" -m tcp -p tcp '
                     f"-d {vip}/32 --dport 80 -j {svc}")
        for i in range(ENDPOINTS):
            ep = f"10.{100 + s // 250}.{s % 250}.{i + 1}:8080"
            sep = sep_chain(name, "tcp", ep)
            chains.append(sep)
            prob = (f" -m statistic --mode random --probability {1 / (ENDPOINTS - i):0.10f}"
                    if i < ENDPOINTS - 1 else "")
            lines.append(f'-A {svc} -m comment --comment "{name} -> {ep}"{prob} -j {sep}')
            lines.append(f"-A {sep} -m comment --comment {name} -s {ep.split(':')[0]}/32 "
                         f"-j KUBE-MARK-MASQ")
            lines.append(f"-A {sep} -m comment --comment {name} -m tcp -p tcp -j DNAT "
                         f"--to-destination {ep}")
    head = ["*nat", ":KUBE-SERVICES - [0:0]", ":KUBE-MARK-MASQ - [0:0]",
            *[f":{c} - [0:0]" for c in chains]]
    return "\n".join([*head, *lines, "COMMIT", ""])


def main() -> None:
    ns = f"nlbench{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", ns, "iptables-restore"], input=rules(),
                       text=True, check=True)
        saves, parses = [], []
        text = ""
        for _ in range(RUNS):
            t = time.perf_counter()
            text = subprocess.run(["ip", "netns", "exec", ns, "iptables-save"],
                                  capture_output=True, text=True, check=True).stdout
            saves.append(time.perf_counter() - t)
            t = time.perf_counter()
            model = parse_iptables_save(text)
            parses.append(time.perf_counter() - t)
        assert len(model.services) == SERVICES
        assert all(len(s.endpoints) == ENDPOINTS for s in model.services)
        s, p = statistics.median(saves), statistics.median(parses)
        print(f"rules: {SERVICES} services x {ENDPOINTS} endpoints, "
              f"{text.count(chr(10))} lines")
        print(f"iptables-save median {s * 1000:.0f} ms; parse median {p * 1000:.0f} ms; "
              f"ratio parse/save {p / s:.2f}")
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


if __name__ == "__main__":
    main()
