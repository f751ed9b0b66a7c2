"""`natlens pcap import` against `tshark -r FILE -T fields` on the same capture.

In the seed lab, `tcpdump -i any` on k8s-node2 records a hping3 SYN flood of FLOOD
connections from front-tomcat to the ClusterIP (every SYN, SYN-ACK and RST, on every
interface it crosses: Linux cooked v2). Then, RUNS times in alternating order:

- tshark, printing the fields pairing needs (time, addresses, ports, TCP flags and
  sequence number) for every frame to /dev/null;
- natlens pcap import of the same file, with the node's iptables-save, into a fresh
  SQLite file (pairing and storing included);
- natlens's reader with scapy dissecting each frame (`CookedLinuxV2(frame)`) instead of
  the direct header decode, reading only (no pairing, no store): what decoding the
  first packets by hand bought.

Packets per second (frames in the file / wall time), medians and ratios are printed.
Run: .venv/bin/python bench/pcap_import.py  (root; needs hping3, tcpdump and tshark)
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import CLIENT, NODE, VIP, VIP_PORT, seed_lab

FLOOD = int(os.environ.get("FLOOD", "50000"))
RUNS = int(os.environ.get("RUNS", "3"))
FIELDS = ["frame.time_epoch", "ip.src", "ip.dst", "tcp.srcport", "tcp.dstport",
          "tcp.flags", "tcp.seq_raw"]

SCAPY_READ = """
import sys, time
from scapy.layers.l2 import CookedLinuxV2
from scapy.layers.inet import IP, TCP
from scapy.utils import RawPcapReader
t = time.monotonic(); n = syn = 0
for frame, _ in RawPcapReader(sys.argv[1]):
    n += 1
    p = CookedLinuxV2(frame)
    if IP in p and TCP in p and p[TCP].flags & 0x12 == 0x02:
        syn += (p[IP].src, p[TCP].sport, p[TCP].seq) is not None
print(n, syn, time.monotonic() - t)
"""


def capture(tmp: Path) -> tuple[Path, Path]:
    with seed_lab() as st:
        node, pod = st.nodes[NODE], st.pods[CLIENT]
        rules = tmp / "node2.iptables-save"
        rules.write_text(subprocess.run(["ip", "netns", "exec", node, "iptables-save"],
                                        capture_output=True, text=True, check=True).stdout)
        cap = tmp / "flood.pcap"
        dump = subprocess.Popen(["ip", "netns", "exec", node, "tcpdump", "-i", "any", "-n",
                                 "-B", str(256 << 10), "-w", str(cap)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(1.5)
        subprocess.run(["ip", "netns", "exec", pod, "hping3", "-q", "-S", "-p", str(VIP_PORT),
                        "-i", "u100", "-c", str(FLOOD), VIP],
                       capture_output=True, timeout=900)
        time.sleep(1.5)
        dump.terminate()
        _, err = dump.communicate(timeout=30)
        print("tcpdump:", " ".join(ln for ln in err.splitlines() if "packets" in ln))
        return cap, rules


def tshark(cap: Path) -> float:
    args = [x for f in FIELDS for x in ("-e", f)]
    t = time.monotonic()
    subprocess.run(["tshark", "-n", "-r", str(cap), "-T", "fields", *args],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.monotonic() - t


def natlens_import(cap: Path, rules: Path, tmp: Path) -> tuple[float, dict[str, int]]:
    db = tmp / f"import-{time.monotonic_ns()}.db"
    t = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "natlens", "pcap", "import", str(cap), "--node",
                        "k8s-node2", "--db", str(db), "--rules", str(rules), "-o", "json"],
                       capture_output=True, text=True, check=True)
    wall = time.monotonic() - t
    db.unlink()
    return wall, json.loads(r.stdout)


def scapy_read(cap: Path) -> float:
    t = time.monotonic()
    subprocess.run([sys.executable, "-c", SCAPY_READ, str(cap)], capture_output=True,
                   check=True)
    return time.monotonic() - t


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        cap, rules = capture(tmp)
        frames = int(subprocess.run(["capinfos", "-c", "-M", str(cap)], capture_output=True,
                                    text=True, check=True).stdout.split()[-1])
        print(f"capture: {FLOOD} SYNs sent, {frames:,} frames, "
              f"{cap.stat().st_size / 1e6:.1f} MB")
        ts, nl, sc = [], [], []
        summary: dict[str, int] = {}
        for i in range(RUNS):
            order = ["tshark", "natlens", "scapy"]
            if i % 2:
                order.reverse()
            for what in order:
                if what == "tshark":
                    ts.append(tshark(cap))
                elif what == "natlens":
                    w, summary = natlens_import(cap, rules, tmp)
                    nl.append(w)
                else:
                    sc.append(scapy_read(cap))
            print(f"run {i}: tshark {ts[-1]:.2f}s, natlens import {nl[-1]:.2f}s, "
                  f"scapy dissection (read only) {sc[-1]:.2f}s", flush=True)
    t, n, s = statistics.median(ts), statistics.median(nl), statistics.median(sc)
    print(f"natlens: {summary['decisions']} decisions from {summary['first_packets']} first "
          f"packets ({summary['retransmits']} retransmits, {summary['unpaired']} unpaired)")
    print(f"packets/s (median of {RUNS}): tshark -T fields {frames / t:,.0f}; natlens pcap "
          f"import {frames / n:,.0f} (ratio {t / n:.2f}); scapy dissection, read only "
          f"{frames / s:,.0f} (the import is {s / n:.2f}x faster)")


if __name__ == "__main__":
    # SIGTERM unwinds like Ctrl-C, so the lab and any mount are removed on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    main()
