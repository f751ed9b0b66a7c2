"""Capture files → first packets → DNAT pairs: real files written by scapy's writers
(pcap and pcapng; Ethernet, Linux cooked v1 and v2), broken ones, and fuzzing."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import CookedLinux, CookedLinuxV2, Ether
from scapy.utils import PcapNgWriter, PcapWriter

from natlens.agent.decode.packets import (
    FirstPacket,
    UnknownLinkType,
    first_packet,
)
from natlens.agent.decode.pairing import Pairer, pair_all
from natlens.agent.sources.capture_file import CaptureError, ReadStats, read_first_packets

VIP, EP1, EP2, CLIENT = "10.96.0.10", "10.244.1.5", "10.244.2.6", "10.244.1.9"


def conversation(link: str = "sll2", n: int = 40) -> tuple[list[object], dict[str, int]]:
    """n connections as -i any sees them: the SYN to the VIP, a retransmit, the SYN
    after DNAT (twice: two interfaces), the SYN-ACK, a data packet; plus UDP flows."""
    wrap = {"eth": lambda p: Ether() / p, "sll": lambda p: CookedLinux(proto=0x0800) / p,
            "sll2": lambda p: CookedLinuxV2(proto=0x0800) / p}[link]
    pkts: list[object] = []
    truth: dict[str, int] = {}
    t = 1_700_000_000.0
    for i in range(n):
        ep = EP1 if i % 3 else EP2
        sport = 40000 + i % 5  # ports reused: the ISN tells connections apart
        isn = 1000 + i * 7919
        syn = IP(src=CLIENT, dst=VIP) / TCP(sport=sport, dport=80, flags="S", seq=isn)
        after = IP(src=CLIENT, dst=ep) / TCP(sport=sport, dport=8080, flags="S", seq=isn)
        for j, p in enumerate((syn, syn, after, after)):
            f = wrap(p)
            f.time = t + i * 0.01 + j * 0.0001
            pkts.append(f)
        ack = wrap(IP(src=ep, dst=CLIENT) / TCP(sport=8080, dport=sport, flags="SA"))
        ack.time = t + i * 0.01 + 0.0005
        data = wrap(IP(src=CLIENT, dst=ep) / TCP(sport=sport, dport=8080, flags="PA") / b"x")
        data.time = t + i * 0.01 + 0.0006
        pkts += [ack, data]
        truth[f"{ep}:8080"] = truth.get(f"{ep}:8080", 0) + 1
    for i in range(5):  # UDP: first datagram to the VIP, then after DNAT, then more of both
        for j, dst in enumerate((VIP, EP2, VIP, EP2)):
            f = wrap(IP(src=CLIENT, dst=dst) / UDP(sport=50000 + i, dport=53))
            f.time = t + 1 + i * 0.01 + j * 0.0001
            pkts.append(f)
    return pkts, truth


def write(path: Path, pkts: list[object], ng: bool = False) -> str:
    w = PcapNgWriter(str(path)) if ng else PcapWriter(str(path))
    for p in pkts:
        w.write(p)
    w.close()
    return str(path)


def tcp_pairs(path: str, vips: set[tuple[str, int, str]] | None = None) -> dict[str, int]:
    stats = ReadStats()
    out: dict[str, int] = {}
    for pair in pair_all(read_first_packets(path, stats), Pairer(vips)):
        if pair.protocol == "tcp":
            key = f"{pair.endpoint}:{pair.endpoint_port}"
            out[key] = out.get(key, 0) + 1
    return out


@pytest.mark.parametrize(("link", "ng"), [("sll2", False), ("sll", False), ("eth", False),
                                          ("sll2", True), ("eth", True)])
def test_pairs_are_exact_in_every_format(tmp_path: Path, link: str, ng: bool) -> None:
    pkts, truth = conversation(link)
    path = write(tmp_path / f"c.{'pcapng' if ng else 'pcap'}", pkts, ng)
    assert tcp_pairs(path) == truth
    assert tcp_pairs(path, {(VIP, 80, "tcp"), (VIP, 53, "udp")}) == truth
    stats = ReadStats()
    pairer = Pairer()
    pairs = list(pair_all(read_first_packets(path, stats), pairer))
    assert sum(p.protocol == "udp" for p in pairs) == 5
    assert pairer.stats.retransmits >= 40 and stats.truncated_at is None


def test_ipv6_first_packets_decode() -> None:
    frame = bytes(CookedLinuxV2(proto=0x86DD) / IPv6(src="fd00::9", dst="fd00:96::a")
                  / TCP(sport=1234, dport=80, flags="S", seq=77))
    assert first_packet(276, frame, 5) == FirstPacket(5, "tcp", "fd00::9", 1234,
                                                      "fd00:96::a", 80, 77)
    ack = bytes(Ether() / IP() / TCP(flags="SA"))
    assert first_packet(1, ack, 0) is None


def test_broken_files_say_why_and_keep_what_was_readable(tmp_path: Path) -> None:
    pkts, truth = conversation("sll2", 200)
    good = Path(write(tmp_path / "good.pcap", pkts))
    data = good.read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: len(data) * 2 // 3])
    stats = ReadStats()
    got = list(read_first_packets(str(cut), stats))
    assert stats.truncated_at is not None and 0 < len(got) < sum(truth.values()) * 4
    (tmp_path / "empty.pcap").write_bytes(b"")
    (tmp_path / "text.pcap").write_text("this is not a capture\n" * 50)
    for name, needle in (("empty.pcap", "empty file"), ("text.pcap", "not a pcap or pcapng"),
                         ("missing.pcap", "No such file")):
        with pytest.raises(CaptureError, match=needle):
            list(read_first_packets(str(tmp_path / name), ReadStats()))
    odd = tmp_path / "odd.pcap"
    w = PcapWriter(str(odd), linktype=147)  # DLT_USER0
    w.write(bytes(20))
    w.close()
    with pytest.raises(UnknownLinkType, match="link type 147"):
        list(read_first_packets(str(odd), ReadStats()))


def test_import_command_stores_the_readable_part_and_exits_1(tmp_path: Path, db: str) -> None:
    """Into either store: an SQLite file or a PostgreSQL URL."""
    pkts, _ = conversation("sll2", 300)
    data = Path(write(tmp_path / "good.pcap", pkts)).read_bytes()
    (tmp_path / "cut.pcap").write_bytes(data[: len(data) // 2])
    r = subprocess.run([sys.executable, "-m", "natlens", "pcap", "import",
                        str(tmp_path / "cut.pcap"), "--node", "n1", "--db", db, "-o",
                        "json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    (line,) = r.stderr.strip().splitlines()
    assert "truncated or corrupt" in line and "are stored" in line
    kept = json.loads(r.stdout)["decisions"]
    assert 0 < kept < 305
    q = subprocess.run([sys.executable, "-m", "natlens", "query", "decisions", "--db", db,
                        "-o", "json"], capture_output=True, text=True, timeout=120)
    rows = json.loads(q.stdout)
    assert len(rows) == kept and {r["source"] for r in rows} == {"pcap"}
    (tmp_path / "n.db").write_bytes(b"SQLite format 3\x00" + bytes(200))  # not a capture
    r = subprocess.run([sys.executable, "-m", "natlens", "pcap", "import",
                        str(tmp_path / "n.db"), "--node", "n1", "--db", str(tmp_path / "x.db")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "not a pcap or pcapng" in r.stderr


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([1, 101, 113, 228, 229, 276]), st.binary(max_size=80))
def test_fuzzed_frames_decode_or_are_skipped(linktype: int, frame: bytes) -> None:
    p = first_packet(linktype, frame, 0)
    assert p is None or p.protocol in ("tcp", "udp")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["tcp", "udp"]), st.sampled_from([CLIENT, EP1]),
                          st.integers(1, 3), st.sampled_from([VIP, EP1, EP2]),
                          st.sampled_from([80, 8080]), st.integers(0, 3),
                          st.integers(0, 10**10)), max_size=40))
def test_fuzzed_pairing_never_crashes_and_pairs_distinct_destinations(
        stream: list[tuple[str, str, int, str, int, int, int]]) -> None:
    pairer = Pairer()
    for proto, src, sport, dst, dport, isn, t in sorted(stream, key=lambda x: x[6]):
        with contextlib.suppress(ValueError):
            pair = pairer.feed(FirstPacket(t, proto, src, sport, dst, dport, isn))
            if pair is not None:
                assert (pair.vip, pair.vip_port) != (pair.endpoint, pair.endpoint_port)
    pairer.finish()
    s = pairer.stats
    assert s.pairs + s.retransmits <= s.packets


@pytest.mark.parametrize("ng", [False, True])
def test_every_cut_is_said_or_is_a_whole_shorter_file(tmp_path: Path, ng: bool) -> None:
    pkts, _ = conversation("eth", 6)
    data = Path(write(tmp_path / "w", pkts, ng)).read_bytes()
    whole = list(read_first_packets(str(tmp_path / "w"), ReadStats()))
    said = clean = header = 0
    cuts = range(60, len(data), 13)
    for cut in cuts:
        (tmp_path / "c").write_bytes(data[:cut])
        stats = ReadStats()
        try:
            got = list(read_first_packets(str(tmp_path / "c"), stats))
        except CaptureError:
            header += 1  # cut inside the file header: not a capture at all
            continue
        assert got == whole[:len(got)]  # nothing invented, nothing out of order
        if stats.truncated_at is None:  # a cut exactly between records
            assert len(got) <= len(whole)
            clean += 1
        else:
            assert stats.truncated_at <= cut
            said += 1
    # Every cut was tested: nearly all of them inside a record, where it must be said;
    # a few inside the file's header (pcapng's is bigger) or between records.
    assert said + clean + header == len(cuts) > 100
    assert said > 0.8 * len(cuts) and header < 0.1 * len(cuts)
