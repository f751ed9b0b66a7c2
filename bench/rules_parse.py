"""`natlens rules parse` against `iptables-save` on 2,000 services x 10 endpoints.

Loads kube-proxy-format rules into a scratch network namespace, then, interleaved over
RUNS (9) rounds: `iptables-save` printing them, the whole `natlens rules parse FILE`
command on that output (start, read, parse, JSON out; the target is <= 0.5x), and
`parse_iptables_save` alone in this process. Medians of each round's ratio, in
wall-clock time and in each process's own CPU time (wait4's rusage: on a machine whose
clock time swings by a third from minute to minute, the steadier of the two).
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

from harness import timed

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
                save = timed(["ip", "netns", "exec", ns, "iptables-save"])
                text = save.stdout
                saves.append(save)
                dump.seek(0)
                dump.truncate()
                dump.write(text)
                dump.flush()
                commands.append(timed([sys.executable, "-m", "natlens", "rules", "parse",
                                       dump.name], stdout=subprocess.DEVNULL))
                t = time.perf_counter()
                model = parse_iptables_save(text)
                parses.append(time.perf_counter() - t)
        assert len(model.services) == SERVICES
        assert all(len(s.endpoints) == ENDPOINTS for s in model.services)
        print(f"rules: {SERVICES} services x {ENDPOINTS} endpoints, "
              f"{text.count(chr(10))} lines; medians of {RUNS} rounds")
        for what in ("wall", "cpu"):
            s = statistics.median(getattr(x, what) for x in saves)
            c = statistics.median(getattr(x, what) for x in commands)
            paired = sorted(round(getattr(cc, what) / getattr(ss, what), 2)
                            for cc, ss in zip(commands, saves, strict=True))
            print(f"{what}: iptables-save {s * 1000:.0f} ms, natlens rules parse FILE "
                  f"{c * 1000:.0f} ms; command / iptables-save each round {paired}, median "
                  f"{statistics.median(paired):.2f} (target <= 0.5)")
        p = statistics.median(parses)
        s = statistics.median(x.wall for x in saves)
        print(f"the parse alone, in this process: {p * 1000:.0f} ms ({p / s:.2f}x "
              "iptables-save's wall time)")
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


if __name__ == "__main__":
    main()
