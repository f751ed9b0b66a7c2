"""natlens's ctnetlink decoder against pyroute2's, on messages the kernel sent.

In a namespace of its own, ROUNDS x N loopback connections go through a DNAT rule
(127.0.0.2:80 -> 127.0.0.1:8080) with conntrack byte counters and timestamps on, and
the table is flushed: every NEW and DESTROY message the kernel sends is kept as it
came off the event socket. Both decoders then read every message into the same fields
(both tuples, id, zone, counters, timestamps); medians of ROUNDS, and the ratio.
Run: .venv/bin/python bench/ctnetlink_decode.py   (root; N=5000 ROUNDS=5)
     BEFORE=67d10bd .venv/bin/python bench/ctnetlink_decode.py
       (also natlens's decoder as it was at that commit, in the same rounds)
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import time
from typing import Any

from harness import module_at
from pyroute2.netlink.nfnetlink.nfctsocket import nfct_msg

from natlens import netns
from natlens.agent.decode import ctnetlink as c
from natlens.agent.sources.conntrack import ConntrackSocket

N = int(os.environ.get("N", "5000"))
BEFORE = os.environ.get("BEFORE", "")
ROUNDS = int(os.environ.get("ROUNDS", "5"))
NAT = """table ip bench {
 chain out {
  type nat hook output priority -100;
  ip daddr 127.0.0.2 tcp dport 80 dnat to 127.0.0.1:8080
 }
}
"""


def capture(ns: str) -> list[bytes]:
    """Every conntrack event message of N DNAT'd connections and the flush after."""
    src = ConntrackSocket(ns)  # the agent's subscription; read raw below
    with netns.entered(ns):
        srv = socket.socket()
        srv.bind(("127.0.0.1", 8080))
        srv.listen(4096)
        for _ in range(N):
            cl = socket.create_connection(("127.0.0.2", 80))
            conn, _ = srv.accept()
            cl.close()
            conn.close()
        srv.close()
    subprocess.run(["ip", "netns", "exec", ns, "conntrack", "-F"], capture_output=True,
                   check=True)
    out = []
    try:
        while True:
            out.append(src.sock.recv(65536))  # non-blocking: one event per datagram
    except BlockingIOError:
        return out
    finally:
        src.close()


def natlens_decode(msgs: list[bytes], mod: Any = c) -> list[Any]:
    return [ev for m in msgs for ev in mod.messages(m)]


def _tuple(t: Any) -> tuple[Any, ...]:
    ip, proto = t.get_attr("CTA_TUPLE_IP"), t.get_attr("CTA_TUPLE_PROTO")
    return ((ip.get_attr("CTA_IP_V4_SRC") or ip.get_attr("CTA_IP_V6_SRC")),
            (ip.get_attr("CTA_IP_V4_DST") or ip.get_attr("CTA_IP_V6_DST")),
            proto.get_attr("CTA_PROTO_NUM"), proto.get_attr("CTA_PROTO_SRC_PORT"),
            proto.get_attr("CTA_PROTO_DST_PORT"))


def pyroute2_decode(msgs: list[bytes]) -> list[Any]:
    """The same fields through pyroute2's nfct_msg (one message per datagram here)."""
    out = []
    for data in msgs:
        m = nfct_msg(data)
        m.decode()
        co, cr, ts = (m.get_attr("CTA_COUNTERS_ORIG"), m.get_attr("CTA_COUNTERS_REPLY"),
                      m.get_attr("CTA_TIMESTAMP"))
        out.append((_tuple(m.get_attr("CTA_TUPLE_ORIG")), _tuple(m.get_attr("CTA_TUPLE_REPLY")),
                    m.get_attr("CTA_ID"), m.get_attr("CTA_ZONE") or 0,
                    *(x.get_attr(k) if x else 0 for x in (co, cr)
                      for k in ("CTA_COUNTERS_PACKETS", "CTA_COUNTERS_BYTES")),
                    *(ts.get_attr(k) if ts else 0
                      for k in ("CTA_TIMESTAMP_START", "CTA_TIMESTAMP_STOP"))))
    return out


def main() -> None:
    ns = f"nlbench-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=NAT, text=True,
                       check=True)
        for key in ("nf_conntrack_acct", "nf_conntrack_timestamp"):
            subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw",
                            f"net.netfilter.{key}=1"], check=True)
        msgs = capture(ns)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=True)
    ours, theirs = natlens_decode(msgs), pyroute2_decode(msgs)
    dnat = sum(1 for ev in ours if ev.is_dnat)
    assert len(ours) == len(theirs) == len(msgs), (len(ours), len(theirs), len(msgs))
    for ev, p in zip(ours, theirs, strict=True):  # both read the same values
        assert (ev.orig.sport, ev.reply.sport, ev.ct_id) == (p[0][3], p[1][3], p[2]), (ev, p)
        assert (ev.orig_bytes, ev.start_ns) == (p[5], p[8]), (ev, p)
    sizes = sorted(len(m) for m in msgs)
    print(f"{len(msgs)} messages from the kernel ({dnat} DNAT), "
          f"{sizes[0]}-{sizes[-1]} bytes (median {statistics.median(sizes):.0f})")
    decoders: dict[str, Any] = {"natlens": natlens_decode, "pyroute2": pyroute2_decode}
    if BEFORE:
        old = module_at(BEFORE, "agent/decode/ctnetlink.py")
        assert [tuple(e) for e in natlens_decode(msgs, old)] == [tuple(e) for e in ours]
        decoders[f"natlens @{BEFORE}"] = lambda m: natlens_decode(m, old)
    times: dict[str, list[float]] = {name: [] for name in decoders}
    for _ in range(ROUNDS):
        for name, fn in decoders.items():
            t = time.process_time()
            fn(msgs)
            times[name].append((time.process_time() - t) / len(msgs) * 1e6)
    med = {name: statistics.median(v) for name, v in times.items()}
    a, b = med["natlens"], med["pyroute2"]
    print(f"per message, median of {ROUNDS}: natlens {a:.2f} us, pyroute2 {b:.2f} us "
          f"(natlens / pyroute2 = {a / b:.3f})")
    if BEFORE:
        before = med[f"natlens @{BEFORE}"]
        paired = statistics.median(x / y for x, y in zip(times["natlens"],
                                                           times[f"natlens @{BEFORE}"],
                                                           strict=True))
        print(f"natlens @{BEFORE} {before:.2f} us; now / then, paired per round: "
              f"{paired:.2f}")


if __name__ == "__main__":
    main()
