"""The agent as a pipeline: source → decode → batch → ship, plus the rules watcher.

Threads: the source loop (reads ctnetlink, builds decisions, ticks the batcher), the
rules watcher (re-reads the node's rules when nf_tables' generation moved, or every
interval where it cannot tell, and emits a snapshot when the hash changes) and
the shipper. Stopping drains the socket, flushes and waits for the collector's acks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from natlens.agent.decode.decision import from_pair, from_values, to_decision
from natlens.agent.decode.pairing import Pairer
from natlens.agent.health.metrics import SOURCE_NAMES, agent_registry
from natlens.agent.health.server import Health, serve
from natlens.agent.privileges import describe, keep_only, needed
from natlens.agent.rules.generation import Generation, iptables_version, tracks
from natlens.agent.rules.live import RulesUnavailable, read_rules, to_snapshot
from natlens.agent.ship.batch import Batcher
from natlens.agent.ship.client import Shipper
from natlens.agent.ship.spool import Aggregator, Spool
from natlens.agent.sources.capture_live import FILTER as CAPTURE_FILTER
from natlens.agent.sources.capture_live import LiveCapture
from natlens.agent.sources.ebpf import (
    DEFAULT_PIN_ROOT,
    BpfUnavailable,
    CounterKey,
    CounterValue,
    EbpfFilter,
    pin_dir,
)
from natlens.agent.sources.netlink import (
    ConntrackSource,
    Overflow,
    enable_accounting,
    events_disabled,
    seen_before,
)
from natlens.proto import natlens_pb2 as pb
from natlens.proto.columns import DecisionRow
from natlens.security import TlsFiles, channel_credentials

log = logging.getLogger("natlens.agent")


@dataclass
class AgentConfig:
    collector: str
    node: str
    netns: str | None = None
    agent_id: str = ""
    rules_interval: float = 2.0
    batch_size: int = 2000
    batch_age: float = 1.0
    drain_timeout: float = 30.0
    accounting: bool = True
    rcvbuf: int = 64 << 20
    source: str = "netlink"          # netlink, ebpf, or auto (ebpf, else netlink)
    decisions: bool = False          # ebpf: also ship per-connection decisions
    sample: int = 1                  # ebpf decisions: 1 in N, chosen in the kernel
    pin_root: str = DEFAULT_PIN_ROOT
    counters_interval: float = 5.0
    health_listen: str | None = None  # HOST:PORT for /healthz and /readyz
    tls: TlsFiles | None = None       # None: plaintext, only with --insecure
    token: str | None = None          # bearer token sent with the stream
    tls_server_name: str | None = None
    keep_privileges: bool = False     # True: do not drop capabilities after set-up
    spool: str | None = None          # directory of the on-disk spool (None: memory only)
    spool_max_bytes: int = 256 << 20


class SeenIds:
    """Recently seen connections (bounded), to tell recovered decisions from known ones.

    Each id keeps a time: when its NEW event was read, or the entry's own start time if
    it was first met in a table dump (see ``seen_before`` for why an id is not enough).
    """

    def __init__(self, limit: int = 1 << 20) -> None:
        self.limit = limit
        self._ids: dict[tuple[int, int], int] = {}  # insertion order: oldest first

    def add(self, zone: int, ct_id: int, at_ns: int) -> None:
        ids, key = self._ids, (zone, ct_id)
        if key in ids:
            del ids[key]  # seen again: to the end
        ids[key] = at_ns
        if len(ids) > self.limit:
            del ids[next(iter(ids))]

    def forget(self, zone: int, ct_id: int, stop_ns: int) -> None:
        """The entry was destroyed: it can no longer be in a table dump. Kept when the
        id was seen after ``stop_ns``: the kernel gave it to a new entry already (port
        reuse), whose NEW event was read before this DESTROY. Keeps the set the size of
        the live table, not of the traffic so far."""
        seen = self._ids.get((zone, ct_id))
        if seen is not None and (not stop_ns or seen <= stop_ns):
            del self._ids[(zone, ct_id)]

    def __len__(self) -> int:
        return len(self._ids)

    def known(self, zone: int, ct_id: int, start_ns: int) -> bool:
        """Whether a dumped entry (kernel start time ``start_ns``, 0 if none) was seen."""
        return seen_before(self._ids.get((zone, ct_id)), start_ns)


READ_CHUNK = 512  # decisions read from the socket per batcher call
_NEW, _DESTROY = pb.EVENT_NEW, pb.EVENT_DESTROY
GATHER_S = 0.005  # after a read, how long events may queue before the next
IDLE_WAIT_S = 1.0  # the source loop's longest sleep


class Agent:
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.batcher = Batcher(cfg.agent_id or cfg.node, cfg.node, self._submit,
                               cfg.batch_size, cfg.batch_age, sample_rate=cfg.sample)
        self.aggregator = Aggregator(f"spool-{self.batcher.boot_id}")
        self.shipper = Shipper(cfg.collector,
                               credentials=channel_credentials(cfg.tls) if cfg.tls else None,
                               token=cfg.token, server_name=cfg.tls_server_name,
                               spool=Spool(cfg.spool, cfg.spool_max_bytes) if cfg.spool
                               else None, degrade=self._degrade)
        self._stop = threading.Event()
        self._rules_hash = ""
        self._rules_mode = ""
        self._gen: Generation | None = None  # None: read the rules every interval
        self._gen_at_read: int | None = None  # the generation the last read saw
        self._iptables_v = ""
        self.rules_reads = 0
        self.seen = SeenIds()
        self.stats = {"new": 0, "destroy": 0, "snapshot": 0, "recovered": 0, "lost": 0,
                      "non_dnat": 0}
        self.health = Health()
        self.health.reason = "the node's rules have not been read"
        self.filter: EbpfFilter | None = None
        self.source_pb = pb.SOURCE_NETLINK
        self._shipped: dict[CounterKey, CounterValue] = {}
        self._lost_shipped: dict[str, int] = {}
        self.lost_totals: dict[tuple[str, str], int] = {}
        self._vips: set[tuple[str, int, str]] = set()
        self._window_start = time.time_ns()
        self._kernel_rows: list[DecisionRow] = []

    def _record_lost(self, lost: pb.LostEvents) -> None:
        key = (SOURCE_NAMES.get(lost.source, "unknown"), lost.reason)
        self.lost_totals[key] = self.lost_totals.get(key, 0) + lost.count
        self.batcher.add_lost(lost)

    def _submit(self, batch: pb.Batch) -> None:
        self.shipper.submit(batch)

    def _degrade(self, batch: pb.Batch) -> pb.Batch:
        """The spool is full: keep counting, in aggregate, what no longer fits per
        connection (said in the batch's LostEvents and once in the log)."""
        if not self.aggregator.not_kept:
            log.error("spool full (%s bytes): decisions are now counted in aggregate, not "
                      "kept per connection, until the collector catches up",
                      self.cfg.spool_max_bytes)
        return self.aggregator.aggregate(batch)

    def _load_filter(self) -> EbpfFilter | None:
        """The eBPF filter for ``ebpf``/``auto``; ``auto`` falls back to netlink."""
        if self.cfg.source == "netlink":
            return None
        try:
            pin = pin_dir(self.cfg.pin_root, self.cfg.node, self.cfg.netns)
            f = EbpfFilter(pin, self.cfg.decisions, self.cfg.sample)
        except BpfUnavailable as e:
            if self.cfg.source == "ebpf":
                raise
            log.warning("source auto: eBPF unavailable, using netlink: %s", e)
            return None
        if f.mounted:
            log.info("bpffs: mounted at %s for the pinned maps", f.mounted)
        log.info("source %s: eBPF filter (%s mode%s), maps %s in %s, epoch %s",
                 self.cfg.source, "decision" if self.cfg.decisions else "aggregate",
                 f", 1 in {self.cfg.sample} decisions" if self.cfg.sample > 1 else "",
                 "created" if f.fresh else "reused", f.pin, f.epoch)
        return f

    def stop(self) -> None:
        self._stop.set()

    def _open_generation(self) -> None:
        """While the agent can still enter the namespace: the socket that tells the rules
        watcher whether anything changed (agent/rules/generation.py)."""
        self._iptables_v = iptables_version()
        try:
            self._gen = Generation(self.cfg.netns)
        except OSError as e:
            self._unreadable(e)

    def _unreadable(self, e: Exception) -> None:
        log.warning("rules: nf_tables generation unreadable (%s); the rules are read "
                    "every %.1f s", e, self.cfg.rules_interval)
        if self._gen is not None:
            self._gen.close()
        self._gen = None

    def _generation(self) -> int | None:
        """The namespace's nf_tables generation; None when it cannot be read."""
        if self._gen is None:
            return None
        try:
            return self._gen.read()
        except (OSError, ValueError) as e:
            self._unreadable(e)
            return None

    def _watch_rules(self) -> None:
        while not self._stop.wait(self.cfg.rules_interval):
            gen = self._generation()
            if (gen is not None and gen == self._gen_at_read
                    and tracks(self._rules_mode, self._iptables_v)):
                continue  # no nf_tables commit since the last read: nothing to read
            self._emit_rules(gen)

    def _emit_rules(self, gen: int | None) -> bool:
        """Read the rules; ``gen``: the generation read before (a commit during the read
        makes the next check read again)."""
        t0 = time.time_ns()
        self.rules_reads += 1
        try:
            model = read_rules(self.cfg.netns)
        except RulesUnavailable as e:
            log.error("rules: %s", e)
            return False
        self._gen_at_read, self._rules_mode = gen, model.mode
        self.health.ready = True
        if model.hash != self._rules_hash:
            log.info("rules: %s mode, %d service ports, %s", model.mode, len(model.services),
                     model.hash[:19])
            self._rules_hash = model.hash
            self._vips = {(sp.vip, sp.port, sp.protocol) for sp in model.services}
            self.batcher.add_rules(to_snapshot(model, t0))
        return True

    def _snapshot_table(self, src: ConntrackSource, event: pb.Event) -> int:
        """Dump the table; ship DNAT entries not seen before as ``event`` records."""
        now = time.time_ns()
        n = 0
        known: Callable[[int, int, int], bool]
        mark: Callable[[int, int, int], None]
        if self.filter is not None:
            known, mark = self.filter.seen_checker(), self.filter.mark_seen
        else:
            known, mark = self.seen.known, self.seen.add
        for ev in src.dump():
            if not ev.is_dnat or known(ev.zone, ev.ct_id, ev.start_ns):
                continue
            mark(ev.zone, ev.ct_id, ev.start_ns)
            self.batcher.add_decision(to_decision(ev, event, self.source_pb, now))
            n += 1
        return n

    def _ship_counters(self) -> None:
        """Kernel counters changed since the last read, with their running totals."""
        assert self.filter is not None
        now = time.time_ns()
        current = self.filter.read_counters()
        for key, v in current.items():
            last = self._shipped.get(key, CounterValue())
            if v == last:
                continue
            self.batcher.add_counter(pb.CounterDelta(
                window_start_ns=self._window_start, window_end_ns=now, protocol=key.protocol,
                vip=key.vip, vip_port=key.vip_port, endpoint_ip=key.endpoint_ip,
                endpoint_port=key.endpoint_port,
                connections=v.connections - last.connections,
                bytes=v.orig_bytes + v.reply_bytes - last.orig_bytes - last.reply_bytes,
                packets=v.orig_packets + v.reply_packets - last.orig_packets
                - last.reply_packets,
                epoch=self.filter.epoch, total_connections=v.connections,
                total_closed=v.closed, total_orig_packets=v.orig_packets,
                total_orig_bytes=v.orig_bytes, total_reply_packets=v.reply_packets,
                total_reply_bytes=v.reply_bytes, total_duration_ns=v.duration_ns))
        self._shipped = current
        self._window_start = now
        stats = self.filter.read_stats()
        for reason, name in (("map-full", "map_full"), ("sampling", "sampled_out"),
                             ("malformed", "malformed"), ("ring-overflow", "ring_full")):
            total, last_total = stats[name], self._lost_shipped.get(name, 0)
            if total != last_total:
                self._record_lost(pb.LostEvents(
                    time_ns=now, source=pb.SOURCE_EBPF, reason=reason,
                    count=total - last_total, epoch=self.filter.epoch, total=total))
                self._lost_shipped[name] = total

    def _run_capture(self) -> int:
        """``--source pcap``: decisions from packets, paired before and after DNAT."""
        cap = LiveCapture(self.cfg.netns, self.cfg.rcvbuf)
        self._open_generation()
        self.source_pb = pb.SOURCE_PCAP
        log.info("source pcap: capturing every interface of %s (filter: %s)",
                 self.cfg.netns or "this namespace", CAPTURE_FILTER)
        if not self.cfg.keep_privileges:
            kept = keep_only(needed(False, self.cfg.netns is not None))
            log.info("privileges: kept %s; dropped the rest (bounding set too)",
                     describe(kept))
        self._start_serving()
        cap.start_link_monitor()
        if not self._emit_rules(self._generation()):
            log.error("rules: starting without a declared model; every connection to a "
                      "new destination is paired as if it were a VIP until they are read")
        threading.Thread(target=self._watch_rules, name="rules", daemon=True).start()
        pairer = Pairer(self._vips or None)
        next_stats = time.monotonic() + 5
        try:
            while not self._stop.is_set():
                self.health.beat()
                pairer.vips = self._vips or None
                for p in cap.read(0.2):
                    pair = pairer.feed(p)
                    if pair is None:
                        continue
                    self.stats["new"] += 1
                    self.batcher.add_decision(from_pair(pair))
                if time.monotonic() >= next_stats:
                    self._capture_losses(cap, pairer)
                    next_stats = time.monotonic() + 5
                self.batcher.tick()
            for p in cap.read(0.0):
                pairer.feed(p)
            self._capture_losses(cap, pairer)
        finally:
            cap.close()
        return self._finish()

    def _start_serving(self) -> None:
        """Health/metrics endpoint and the shipper: after privileges are dropped."""
        if self.cfg.health_listen:
            host, _, port = self.cfg.health_listen.rpartition(":")
            srv = serve(self.health, host, int(port), agent_registry(self))
            log.info("health: /healthz, /readyz and /metrics on %s:%d",
                     *srv.server_address[:2])
        self.shipper.start()

    def _capture_losses(self, cap: LiveCapture, pairer: Pairer) -> None:
        dropped = cap.drops()
        if dropped:
            self.stats["lost"] += dropped
            self._record_lost(pb.LostEvents(time_ns=time.time_ns(), source=pb.SOURCE_PCAP,
                                            reason="capture-drops", count=dropped))
        self.stats["non_dnat"] = pairer.stats.unpaired

    def run(self) -> int:
        if self.cfg.source == "pcap":
            return self._run_capture()
        if self.cfg.accounting:
            changed = enable_accounting(self.cfg.netns)
            if changed:
                log.info("conntrack: switched on %s", ", ".join(changed))
        if events_disabled(self.cfg.netns):
            log.error("conntrack: events are disabled in %s (net.netfilter."
                      "nf_conntrack_events=0): no decision can be seen until it is 1 or 2",
                      self.cfg.netns or "this namespace")
        self.filter = self._load_filter()
        if self.filter is not None:
            self.source_pb = pb.SOURCE_EBPF
        # Subscribe before the dump, so no connection falls between the two.
        src = ConntrackSource(self.cfg.netns, self.cfg.rcvbuf,
                              attach=self.filter.attach if self.filter else None)
        filt = self.filter
        ring = filt if filt is not None and self.cfg.decisions else None
        if ring is not None:
            ring.open_decisions(self._kernel_rows.append)
        self._open_generation()
        # Set up: from here on the agent reads rules and its own maps. Before any thread
        # that could start a program exists (capabilities are per thread).
        if not self.cfg.keep_privileges:
            kept = keep_only(needed(filt is not None, self.cfg.netns is not None))
            log.info("privileges: kept %s; dropped the rest (bounding set too)",
                     describe(kept))
        self._start_serving()
        rules_ok = self._emit_rules(self._generation())
        if not rules_ok:
            log.error("rules: starting without a declared model; decisions are kept and "
                      "will be judged once the rules can be read")
        if self.filter is not None and not self.filter.fresh:
            # Restarted on existing maps: what the table holds and the kernel-side seen
            # set lacks was decided while no agent ran. Counted, marked recovered.
            self.stats["recovered"] = self._snapshot_table(src, pb.EVENT_RECOVERED)
            log.info("conntrack: subscribed in %s; recovered %d DNAT decisions made while "
                     "the agent was down", self.cfg.netns or "this namespace",
                     self.stats["recovered"])
        else:
            self.stats["snapshot"] = self._snapshot_table(src, pb.EVENT_SNAPSHOT)
            log.info("conntrack: subscribed in %s; %d DNAT entries already in the table "
                     "(stored as snapshot, not counted)", self.cfg.netns or "this namespace",
                     self.stats["snapshot"])
        watcher = threading.Thread(target=self._watch_rules, name="rules", daemon=True)
        watcher.start()
        next_counters = time.monotonic()
        # How long the loop sleeps when nothing comes: events wake it at once; a quiet
        # node (and the aggregate mode's socket, to which the filter passes nothing)
        # wakes it once a second, not five times (bench/idle_agent.py).
        wait = min(IDLE_WAIT_S, self.cfg.batch_age)
        try:
            while not self._stop.is_set():
                self.health.beat()
                if ring is not None:
                    ring.poll(wait)
                    self._take_kernel_rows()
                    self._read(src, 0.0)
                elif self._read(src, wait):
                    # One datagram per event: let a few milliseconds of them queue up
                    # rather than wake for each (at 30,000/s a wake-up per event cost
                    # the agent more than decoding it).
                    time.sleep(GATHER_S)
                if filt is not None and time.monotonic() >= next_counters:
                    self._ship_counters()
                    next_counters = time.monotonic() + self.cfg.counters_interval
                self.batcher.tick()
            self._read(src, 0.0)  # what the kernel queued before we were told to stop
            if filt is not None:
                filt.poll(0.0)
                self._take_kernel_rows()
                self._ship_counters()
        finally:
            src.close()
        if self.filter is not None:
            self.stats.update({f"bpf_{k}": v for k, v in self.filter.read_stats().items()})
            self.filter.close()
        return self._finish()

    def _finish(self) -> int:
        """Flush, wait for the collector's acknowledgements, say what was seen."""
        self.batcher.flush()
        ok = self.shipper.drain(self.cfg.drain_timeout)
        if not ok:
            log.error("shutdown: %d batches not acknowledged by %s within %.0fs",
                      self.shipper.pending, self.cfg.collector, self.cfg.drain_timeout)
        self.shipper.stop()
        log.info("stopped: %s; rules read %d times", ", ".join(
            f"{k}={v}" for k, v in self.stats.items()), self.rules_reads)
        return 0 if ok else 1

    def _take_kernel_rows(self) -> None:
        """The rows one poll of the filter's ring buffer decoded (eBPF decision mode),
        batched in one call rather than one lock per row."""
        rows = self._kernel_rows  # the list the ring's callback appends to
        if rows:
            destroyed = sum(1 for r in rows if r.event == pb.EVENT_DESTROY)
            self.stats["destroy"] += destroyed
            self.stats["new"] += len(rows) - destroyed
            self.batcher.add_decisions(rows)
            rows.clear()

    def _read(self, src: ConntrackSource, timeout: float) -> int:
        """Everything queued on the socket; how many messages that was."""
        overflowed = n = 0
        rows: list[DecisionRow] = []  # handed to the batcher in chunks, not one by one
        stats, seen, source = self.stats, self.seen, self.source_pb
        track = self.filter is None  # else the filter's seen map holds the ids
        for got in src.events(timeout):
            now = time.time_ns()  # after the read: no later than the kernel made the entry
            if isinstance(got, Overflow):
                n += 1
                if got.reason == "enobufs" and self.filter is None:
                    overflowed += got.lost
                else:
                    # Malformed messages, or (not expected: the eBPF filter hands the
                    # socket nothing) an overflow under the filter, whose events the
                    # kernel counters already hold: a recovery dump would count twice.
                    stats["lost"] += got.lost
                    log.error("conntrack: %d events lost (%s)", got.lost, got.reason)
                    self._record_lost(pb.LostEvents(time_ns=now, source=source,
                                                    reason=got.reason, count=got.lost))
                continue
            n += len(got)
            for v in got:
                # (kind, osrc, odst, proto, osport, odport, rsrc, rsport, ct_id, zone, ...)
                if v[2] == v[6] and v[5] == v[7]:
                    stats["non_dnat"] += 1  # not rewritten: the reply comes from the VIP
                    continue
                if v[0] == "new":
                    if track:
                        seen.add(v[9], v[8], now)
                    stats["new"] += 1
                    rows.append(from_values(v, _NEW, source, now))
                elif v[0] == "destroy":
                    if track:
                        seen.forget(v[9], v[8], v[15])
                    stats["destroy"] += 1
                    rows.append(from_values(v, _DESTROY, source, now))
            if len(rows) >= READ_CHUNK:
                self.batcher.add_decisions(rows)
                rows = []
        if rows:
            self.batcher.add_decisions(rows)
        if overflowed:
            recovered = self._snapshot_table(src, pb.EVENT_RECOVERED)
            self.stats["lost"] += overflowed
            self.stats["recovered"] += recovered
            log.warning("conntrack: receive buffer overflowed, kernel dropped %d events; "
                        "recovered %d DNAT decisions from the table", overflowed, recovered)
            self._record_lost(pb.LostEvents(
                time_ns=time.time_ns(), source=pb.SOURCE_NETLINK, reason="enobufs",
                count=overflowed, recovered=recovered))
        return n
