"""A SYN flood from a raw socket, exact in count and paced to a rate, for the benchmarks.

hping3 paces with a timer signal per packet (setitimer and SIGALRM: a quarter of its
CPU in one `perf record` by hand), cannot send an exact count with ``--flood``, and
one process tops out at 14,000-19,000 SYNs/s here. This sends ready-made packets
(built once with scapy, outside any measured window) with one ``sendto`` each, in
bursts of a millisecond's worth, and sleeps to the next burst. The whole path through
the node (bridge, netfilter, conntrack, DNAT) runs in the sender's own system time, as
with hping3.

  python bench/synflood.py build FILE SRC VIP PORT COUNT [FIRST_PORT]
    the packets, 40 bytes each, source ports from FIRST_PORT (1024) up
  ip netns exec POD python bench/synflood.py send FILE VIP RATE
    loads FILE, prints ``ready``, sends once a line arrives on stdin, then prints
    ``sent COUNT in SECONDS s cpu SECONDS s`` (its own CPU, the node's path for each
    SYN included; RATE 0: as fast as one core sends).
"""

from __future__ import annotations

import socket
import sys
import time


def packets(src: str, dst: str, dport: int, count: int, first_port: int = 1024) -> list[bytes]:
    """``count`` SYNs with distinct source ports from ``first_port`` on (at most
    64,000: each is a new conntrack entry only while its tuple is new)."""
    from scapy.layers.inet import IP, TCP

    if count > 65536 - first_port:
        raise ValueError(f"{count} SYNs need more source ports than {first_port}-65535")
    return [bytes(IP(src=src, dst=dst, id=i & 0xFFFF)
                  / TCP(sport=first_port + i, dport=dport, flags="S", seq=i * 7919))
            for i in range(count)]


def send(pkts: list[bytes], dst: str, rate: int) -> float:
    """Seconds it took; paced to ``rate`` per second unless 0."""
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    out, addr = s.sendto, (dst, 0)
    burst = max(rate // 1000, 1) if rate else len(pkts)
    t0 = time.monotonic()
    for i in range(0, len(pkts), burst):
        for p in pkts[i:i + burst]:
            out(p, addr)
        if rate:
            ahead = t0 + (i + burst) / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    return time.monotonic() - t0


SIZE = 40  # IPv4 header and TCP header, no options


def main() -> None:
    if sys.argv[1:2] == ["build"]:
        path, src, dst, port, count = sys.argv[2:7]
        first = int(sys.argv[7]) if len(sys.argv) > 7 else 1024
        with open(path, "wb") as f:
            f.write(b"".join(packets(src, dst, int(port), int(count), first)))
        return
    path, dst, rate = sys.argv[2:5]
    with open(path, "rb") as f:
        data = f.read()
    pkts = [data[i:i + SIZE] for i in range(0, len(data), SIZE)]
    print("ready", flush=True)  # the caller starts its clock after this
    sys.stdin.readline()
    cpu = time.process_time()
    secs = send(pkts, dst, int(rate))
    print(f"sent {len(pkts)} in {secs:.4f} s cpu {time.process_time() - cpu:.4f} s",
          flush=True)


if __name__ == "__main__":
    main()
