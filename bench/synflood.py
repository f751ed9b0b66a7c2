"""A SYN flood from a raw socket, exact in count and paced to a rate, for the benchmarks.

hping3 paces with a timer signal per packet (setitimer and SIGALRM: a quarter of its
CPU in one `perf record` by hand), cannot send an exact count with ``--flood``, and
one process tops out at 14,000-19,000 SYNs/s here. This sends ready-made packets
(built once with scapy, outside any measured window) with one ``sendto`` each, in
bursts of a millisecond's worth, and sleeps to the next burst. The whole path through
the node (bridge, netfilter, conntrack, DNAT) runs in the sender's own system time, as
with hping3.

  python bench/synflood.py build FILE SRC VIP PORT COUNT [FIRST_PORT [tcp|udp]]
    the packets, one size each, source ports from FIRST_PORT (1024) up; IPv6 when
    SRC is an IPv6 address
  ip netns exec POD python bench/synflood.py send FILE VIP RATE
    loads FILE, prints ``ready``, sends once a line arrives on stdin, then prints
    ``sent COUNT in SECONDS s cpu SECONDS s`` (its own CPU, the node's path for each
    SYN included; RATE 0: as fast as one core sends).
"""

from __future__ import annotations

import socket
import sys
import time


def packets(src: str, dst: str, dport: int, count: int, first_port: int = 1024,
            proto: str = "tcp") -> list[bytes]:
    """``count`` SYNs (or UDP datagrams) with distinct source ports from ``first_port``
    on (at most 64,000: each is a new conntrack entry only while its tuple is new), in
    the family of ``src``."""
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6

    if count > 65536 - first_port:
        raise ValueError(f"{count} SYNs need more source ports than {first_port}-65535")
    v6 = ":" in src
    out = []
    for i in range(count):
        l3 = IPv6(src=src, dst=dst) if v6 else IP(src=src, dst=dst, id=i & 0xFFFF)
        l4 = (UDP(sport=first_port + i, dport=dport) / b"natlens" if proto == "udp"
              else TCP(sport=first_port + i, dport=dport, flags="S", seq=i * 7919))
        out.append(bytes(l3 / l4))
    return out


def send(pkts: list[bytes], dst: str, rate: int) -> float:
    """Seconds it took; paced to ``rate`` per second unless 0."""
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    s = socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_RAW)
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


def size(first: bytes) -> int:
    """Every packet of a file has the first one's size: its IP header says it."""
    if first[0] >> 4 == 6:
        return 40 + int.from_bytes(first[4:6], "big")
    return int.from_bytes(first[2:4], "big")


def main() -> None:
    if sys.argv[1:2] == ["build"]:
        path, src, dst, port, count = sys.argv[2:7]
        first = int(sys.argv[7]) if len(sys.argv) > 7 else 1024
        proto = sys.argv[8] if len(sys.argv) > 8 else "tcp"
        with open(path, "wb") as f:
            f.write(b"".join(packets(src, dst, int(port), int(count), first, proto)))
        return
    path, dst, rate = sys.argv[2:5]
    with open(path, "rb") as f:
        data = f.read()
    n = size(data)
    pkts = [data[i:i + n] for i in range(0, len(data), n)]
    print("ready", flush=True)  # the caller starts its clock after this
    sys.stdin.readline()
    cpu = time.process_time()
    secs = send(pkts, dst, int(rate))
    print(f"sent {len(pkts)} in {secs:.4f} s cpu {time.process_time() - cpu:.4f} s",
          flush=True)


if __name__ == "__main__":
    main()
