"""`natlens rules parse` against `iptables-save` on 2,000 services x 10 endpoints.

Loads kube-proxy-format rules into a scratch network namespace, then, interleaved over
RUNS (9) rounds: `iptables-save` printing them, the whole `natlens rules parse FILE`
command on that output (start, read, parse, JSON out; the target is <= 0.5x), and
`parse_iptables_save` alone in this process. Medians.
Run: .venv/bin/python bench/rules_parse.py  (root)
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

from natlens.agent.rules.iptables import parse_iptables_save
from natlens.lab.kubeproxy import sep_chain, svc_chain

SERVICES, ENDPOINTS = 2000, 10
RUNS = int(os.environ.get("RUNS", "9"))


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
        saves, commands, parses = [], [], []
        text = ""
        with tempfile.NamedTemporaryFile("w", suffix=".iptables-save") as dump:
            for _ in range(RUNS):
                t = time.perf_counter()
                text = subprocess.run(["ip", "netns", "exec", ns, "iptables-save"],
                                      capture_output=True, text=True, check=True).stdout
                saves.append(time.perf_counter() - t)
                dump.seek(0)
                dump.truncate()
                dump.write(text)
                dump.flush()
                t = time.perf_counter()
                subprocess.run([sys.executable, "-m", "natlens", "rules", "parse", dump.name],
                               stdout=subprocess.DEVNULL, check=True)
                commands.append(time.perf_counter() - t)
                t = time.perf_counter()
                model = parse_iptables_save(text)
                parses.append(time.perf_counter() - t)
        assert len(model.services) == SERVICES
        assert all(len(s.endpoints) == ENDPOINTS for s in model.services)
        s, c, p = (statistics.median(x) for x in (saves, commands, parses))
        paired = sorted(round(cc / ss, 2) for cc, ss in zip(commands, saves, strict=True))
        print(f"rules: {SERVICES} services x {ENDPOINTS} endpoints, "
              f"{text.count(chr(10))} lines; medians of {RUNS}")
        print(f"iptables-save {s * 1000:.0f} ms; natlens rules parse FILE {c * 1000:.0f} ms "
              f"(ratio {c / s:.2f}, target <= 0.5); the parse alone {p * 1000:.0f} ms "
              f"(ratio {p / s:.2f})")
        print(f"command / iptables-save, each round: {paired}, median "
              f"{statistics.median(paired):.2f}")
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


if __name__ == "__main__":
    main()
