"""Several sources on one node: counted once, compared per connection (the grouping is
property-tested; the report and ``--agreement`` run on a real SQLite file); the
rollups of an older store keep their counts through the migration that keys them by
source."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import sqlite_utils
from hypothesis import given
from hypothesis import strategies as st

from natlens.agent.rules.live import to_snapshot
from natlens.collector.analyze.agreement import (
    WINDOW_NS,
    Agreement,
    Connection,
    Sighting,
    connections,
    in_window,
    shared_window,
)
from natlens.collector.analyze.sources import pick
from natlens.collector.report.build import ReportQuery, build_report
from natlens.collector.store.plan import HOUR, MINUTE
from natlens.collector.store.retention import rollup
from natlens.collector.store.schema import MIGRATIONS, SCHEMA_VERSION
from natlens.collector.store.sqlite import SqliteStore
from natlens.proto import natlens_pb2 as pb
from natlens.proto.columns import DecisionRow, pack

from .test_retention import EPS, MODEL, T0, VIP

SOURCES = ("ebpf", "netlink", "pcap")
PB_SOURCE = {"ebpf": pb.SOURCE_EBPF, "netlink": pb.SOURCE_NETLINK, "pcap": pb.SOURCE_PCAP}

conn = st.tuples(st.integers(0, 3), st.integers(0, 2),                 # client, port
                 st.sets(st.sampled_from(SOURCES), min_size=1),          # who saw it
                 st.lists(st.integers(0, WINDOW_NS // 4), min_size=3, max_size=3))  # jitter


@given(st.lists(conn, max_size=60))
def test_sightings_group_back_into_their_connections(conns: list) -> None:
    # connections on one key are further apart than the window, as a reused port is
    sightings, truth = [], []
    for i, (client, port, seen, jitter) in enumerate(conns):
        key = ("tcp", f"10.244.0.{client}", 40000 + port, VIP, 80)
        t = (i + 1) * 3 * WINDOW_NS
        truth.append((key, frozenset(seen)))
        sightings += [Sighting(key, t + jitter[j], s, EPS[0]) for j, s in enumerate(SOURCES)
                      if s in seen]
    sightings.sort(key=lambda s: (s.key, s.time_ns))
    got = [(c.key, frozenset(c.endpoints)) for c in connections(sightings)]
    assert sorted(got) == sorted(truth)
    tally = Agreement(SOURCES)
    for c in connections(sightings):
        tally.add(c)
    assert tally.total == len(conns)
    assert tally.seen_by_all == sum(1 for *_, seen, _ in conns if len(seen) == 3)
    for s in SOURCES:
        assert tally.missed.get(s, 0) == sum(1 for *_, seen, _ in conns if s not in seen)


def test_a_source_seeing_one_key_twice_is_two_connections() -> None:
    key = ("udp", "10.244.0.1", 53000, VIP, 53)
    got = list(connections([Sighting(key, 0, "netlink", "a"), Sighting(key, 10, "netlink", "a"),
                            Sighting(key, 20, "pcap", "a")]))
    assert [sorted(c.endpoints) for c in got] == [["netlink"], ["netlink", "pcap"]]


def test_the_shared_window_keeps_the_first_connection() -> None:
    # each source's first sighting is the same connection, a few ms apart
    spans = {"netlink": (1000, 9000), "pcap": (1003, 9001), "ebpf": (1001, 8999)}
    lo, hi = shared_window(spans) or (0, 0)
    assert (lo, hi) == (1003, 8999)
    first = Connection(("tcp", "c", 1, VIP, 80), 1000, 1003)
    assert in_window(first, lo, hi)
    assert not in_window(Connection(("tcp", "c", 2, VIP, 80), 500, 600), lo, hi)
    assert shared_window({"a": (0, 10), "b": (20, 30)}) is None


def test_the_most_exact_source_is_counted_and_older_rollups_added() -> None:
    assert pick({"pcap": {"a": 3}, "netlink": {"a": 2}}) == ("netlink", {"a": 2})
    assert pick({"pcap": {"a": 3}, "": {"a": 5}}) == ("pcap", {"a": 8})
    assert pick({"": {"a": 5}}) == ("", {"a": 5})


def _feed(store: SqliteStore, missed_by_pcap: set[int], split: set[int], n: int = 40) -> None:
    """n connections seen by netlink and the eBPF filter (decisions and its counter
    total), and by packets except ``missed_by_pcap``; ``split``: packets say otherwise."""
    batches: dict[str, list[DecisionRow]] = {s: [] for s in SOURCES}
    for i in range(n):
        ep = EPS[i % 2]
        for s in SOURCES:
            if s == "pcap" and i in missed_by_pcap:
                continue
            other = EPS[(i + 1) % 2] if s == "pcap" and i in split else ep
            batches[s].append(DecisionRow(
                T0 + i * 10**8 + SOURCES.index(s) * 10**6, "tcp", "10.244.9.9",
                30000 + i % 7, VIP, 80, other, 8080, ct_id=i, source=PB_SOURCE[s],
                event=pb.EVENT_NEW))
    totals = [pb.CounterDelta(window_start_ns=T0, window_end_ns=T0 + n * 10**8,
                              protocol="tcp", vip=VIP, vip_port=80, endpoint_ip=ep,
                              endpoint_port=8080, epoch="e", total_connections=n // 2)
              for ep in EPS]
    for s in SOURCES:
        store.ingest(pb.Batch(agent_id=f"n1/{s}", boot_id="b", seq=1, node="n1",
                              columns=pack(batches[s]), rules=[to_snapshot(MODEL, T0 - 1)],
                              counters=totals if s == "ebpf" else []))


def test_three_sources_are_counted_once_and_compared(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "db"))
    _feed(store, missed_by_pcap={3, 17, 30}, split={8})
    (entry,) = build_report(store, ReportQuery())["services"]
    assert entry["total"] == 40 and entry["source"] == "ebpf"
    assert entry["sources"] == {"ebpf": 40, "netlink": 40, "pcap": 37}
    # after a rollup pass the same holds, read from the source-keyed buckets
    rollup(store, T0 + HOUR)
    (entry,) = build_report(store, ReportQuery())["services"]
    assert entry["total"] == 40 and entry["sources"]["pcap"] == 37
    store.close()
    r = subprocess.run([sys.executable, "-m", "natlens", "report", "--db",
                        str(tmp_path / "db"), "--agreement", "-o", "json"],
                       capture_output=True, text=True, check=True)
    (a,) = json.loads(r.stdout)["agreement"]
    assert a["sources"] == list(SOURCES) and a["connections"] == 40
    assert a["seen_by_all"] == 37 and a["missed"] == {"ebpf": 0, "netlink": 0, "pcap": 3}
    assert a["disagreed"] == 1
    assert sorted(x["client"] for x in a["examples"] if x["missed_by"]) == [
        "10.244.9.9:30002", "10.244.9.9:30003", "10.244.9.9:30003"]
    text = subprocess.run([sys.executable, "-m", "natlens", "report", "--db",
                           str(tmp_path / "db"), "--agreement"],
                          capture_output=True, text=True, check=True).stdout
    assert "37 seen by all of ebpf, netlink, pcap; ebpf missed 0, netlink missed 0, pcap " \
           "missed 3; 1 with different endpoints" in text
    # packets were stamped 2 ms after the eBPF filter: a 1 ms window tells them apart
    r = subprocess.run([sys.executable, "-m", "natlens", "report", "--db",
                        str(tmp_path / "db"), "--agreement", "--agreement-window", "0.001s",
                        "-o", "json"], capture_output=True, text=True, check=True)
    (a,) = json.loads(r.stdout)["agreement"]
    # (the first connection's other sightings now end before packets' first one, so it
    # is outside the time all three were reporting)
    assert a["seen_by_all"] == 0 and a["missed"]["pcap"] == 39
    r = subprocess.run([sys.executable, "-m", "natlens", "query", "decisions", "--db",
                        str(tmp_path / "db"), "--source", "pcap", "-o", "json"],
                       capture_output=True, text=True, check=True)
    assert len(json.loads(r.stdout)) == 37


def test_v4_rollups_and_counters_keep_their_counts(tmp_path: Path) -> None:
    db = sqlite_utils.Database(tmp_path / "v4.db")
    db["schema_version"].insert({"version": 0})
    for v in range(1, 5):
        MIGRATIONS[v](db)
    db.execute("UPDATE schema_version SET version = 4")
    db["rule_snapshots"].insert({"node": "n1", "time_ns": T0 - HOUR, "hash": MODEL.hash,
                                 "mode": "iptables", "model": json.dumps(MODEL.to_json())})
    db["rollups"].insert_all({
        "granularity": g, "bucket_ns": T0, "node": "n1", "protocol": "tcp", "vip": VIP,
        "vip_port": 80, "rules_hash": MODEL.hash, "endpoint": f"{ep}:8080",
        "connections": 50, "closed": 0, "orig_bytes": 0, "reply_bytes": 0,
        "orig_packets": 0, "reply_packets": 0} for g in ("minute", "hour") for ep in EPS)
    db["retention"].insert_all([{"name": "rolled_upto_ns", "value_ns": T0 + MINUTE}])
    db["counters"].insert({"node": "n1", "epoch": "e", "protocol": "tcp", "vip": VIP,
                           "vip_port": 80, "endpoint": f"{EPS[0]}:8080",
                           "window_start_ns": T0 + 2 * MINUTE,
                           "window_end_ns": T0 + 2 * MINUTE, "rules_hash": MODEL.hash,
                           "connections": 7, "closed": 0, "orig_packets": 0,
                           "orig_bytes": 0, "reply_packets": 0, "reply_bytes": 0,
                           "duration_ns": 0})
    db.close()
    store = SqliteStore(str(tmp_path / "v4.db"))
    assert store.db.execute("SELECT version FROM schema_version").fetchone()[0] == \
        SCHEMA_VERSION
    assert {r[0] for r in store.db.execute("SELECT DISTINCT source FROM rollups")} == {""}
    (entry,) = build_report(store, ReportQuery())["services"]
    assert {e["endpoint"]: e["observed"] for e in entry["endpoints"]} == {
        f"{EPS[0]}:8080": 57, f"{EPS[1]}:8080": 50}
    assert entry["source"] == "ebpf" and "sources" not in entry
    store.close()


def test_source_lists_are_read_and_refused_clearly() -> None:
    from natlens.agent.supervise import ALL, children, parse_sources

    assert parse_sources("all") == ALL and parse_sources("auto") == ("auto",)
    assert parse_sources("pcap,netlink") == ("netlink", "pcap")
    for bad in ("auto,pcap", "netlink,netlink", "kprobe", ""):
        try:
            parse_sources(bad)
        except ValueError as e:
            assert "distinct ebpf, netlink and pcap" in str(e)
        else:
            raise AssertionError(bad)
    kids = children(["agent", "--node", "n1"], ALL, "n1", "/var/spool/natlens/",
                    "0.0.0.0:9100", ["--sample", "4"])
    assert [k.argv[3:] for k in kids] == [
        ["--source", "ebpf", "--agent-id", "n1/ebpf", "--spool", "/var/spool/natlens/ebpf",
         "--health-listen", "0.0.0.0:9100", "--decisions", "--sample", "4"],
        ["--source", "netlink", "--agent-id", "n1/netlink", "--spool",
         "/var/spool/natlens/netlink", "--health-listen", "0.0.0.0:9101"],
        ["--source", "pcap", "--agent-id", "n1/pcap", "--spool", "/var/spool/natlens/pcap",
         "--health-listen", "0.0.0.0:9102"]]
    r = subprocess.run([sys.executable, "-m", "natlens", "agent", "--collector",
                        "127.0.0.1:1", "--insecure", "--source", "netlink,kprobe"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "distinct ebpf, netlink and pcap" in r.stderr
