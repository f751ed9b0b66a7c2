"""The agent's bounded on-disk spool: a batch is written here before it is sent and
deleted only when the collector has acknowledged it, so a collector restart, a network
partition or an agent restart (kill -9 included) loses nothing already batched.

One file per batch (``BOOT-SEQ.pb``, written to a temporary name and renamed, so a
crash never leaves half a batch under a real name). A restarted agent resends what it
finds with the original agent id, boot id and sequence, and the collector stores each
batch once. When a batch would not fit under ``max_bytes``, ``aggregate`` turns its
per-connection decisions into counters (a handful of bytes per service endpoint), so
the counts stay exact and what was not kept per connection is said, not hidden.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from pathlib import Path

from natlens.proto import natlens_pb2 as pb
from natlens.proto.columns import unpack

log = logging.getLogger("natlens.agent.spool")
SUFFIX = ".pb"


class Spool:
    def __init__(self, path: str, max_bytes: int) -> None:
        self.dir = Path(path)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.bytes = 0
        self.full_events = 0
        self._sizes: dict[tuple[str, int], int] = {}
        for tmp in self.dir.glob("*.tmp"):
            tmp.unlink(missing_ok=True)  # a write a crash interrupted: never renamed

    @staticmethod
    def _name(boot_id: str, seq: int) -> str:
        return f"{boot_id}-{seq:016d}{SUFFIX}"

    def load(self) -> list[pb.Batch]:
        """Batches a previous run left unacknowledged, oldest first. A file that does
        not parse is moved aside (``.bad``) and said, not resent."""
        out = []
        for f in sorted(self.dir.glob(f"*{SUFFIX}"), key=lambda p: (p.stat().st_mtime, p.name)):
            b = pb.Batch()
            try:
                b.ParseFromString(f.read_bytes())
                if not b.boot_id or not b.seq:
                    raise ValueError("no boot id or sequence")
            except Exception as e:  # protobuf's DecodeError, or the check above
                log.error("spool: %s is not a batch (%s); moved to %s.bad", f.name, e, f.name)
                f.rename(f.with_name(f.name + ".bad"))
                continue
            self._sizes[(b.boot_id, b.seq)] = f.stat().st_size
            self.bytes += f.stat().st_size
            out.append(b)
        return out

    def put(self, batch: pb.Batch) -> bool:
        """Write ``batch``; False when it does not fit (the caller degrades it)."""
        data = batch.SerializeToString()
        if self.bytes + len(data) > self.max_bytes:
            self.full_events += 1
            return False
        final = self.dir / self._name(batch.boot_id, batch.seq)
        tmp = final.with_name(final.name + ".tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            tmp.rename(final)
        except OSError as e:  # the disk itself is full (or gone): not spooled
            tmp.unlink(missing_ok=True)
            self.full_events += 1
            log.error("spool: cannot write %s: %s", final.name, e.strerror)
            return False
        self._sizes[(batch.boot_id, batch.seq)] = len(data)
        self.bytes += len(data)
        return True

    def remove(self, boot_id: str, seq: int) -> None:
        size = self._sizes.pop((boot_id, seq), None)
        if size is None:
            return
        (self.dir / self._name(boot_id, seq)).unlink(missing_ok=True)
        self.bytes -= size


class Aggregator:
    """Per-connection decisions → running-total counters, for batches the spool has no
    room for. One epoch per agent run; the collector stores each increase once."""

    def __init__(self, epoch: str) -> None:
        self.epoch = epoch
        # connections, closed, orig bytes, reply bytes, orig packets, reply packets, duration
        self.totals: dict[tuple[str, str, int, str, int], list[int]] = defaultdict(
            lambda: [0] * 7)
        self.not_kept = 0

    def aggregate(self, batch: pb.Batch) -> pb.Batch:
        """The same batch with its decisions folded into counters, and a LostEvents
        record saying how many decisions were counted but not kept per connection."""
        slim = pb.Batch()
        slim.CopyFrom(batch)
        slim.ClearField("columns")
        decisions = unpack(batch)
        if not decisions:
            return slim
        touched = set()
        rate = max(batch.sample_rate, 1)
        for d in decisions:
            key = (d.protocol, d.vip, d.vip_port, d.endpoint_ip, d.endpoint_port)
            t = self.totals[key]
            if d.source == pb.SOURCE_EBPF and d.event != pb.EVENT_RECOVERED:
                continue  # the eBPF source counts these in the kernel already
            if d.event == pb.EVENT_NEW:
                t[0] += rate
            elif d.event == pb.EVENT_RECOVERED:
                t[0] += 1
            elif d.event == pb.EVENT_DESTROY:
                for i, v in enumerate((1, d.orig_bytes, d.reply_bytes, d.orig_packets,
                                       d.reply_packets, d.duration_ns), start=1):
                    t[i] += v
            else:
                continue  # table snapshots are not counted anywhere
            touched.add(key)
        now = max(d.time_ns for d in decisions)
        for key in sorted(touched):
            c = self.totals[key]
            slim.counters.append(pb.CounterDelta(
                window_start_ns=now, window_end_ns=now, protocol=key[0], vip=key[1],
                vip_port=key[2], endpoint_ip=key[3], endpoint_port=key[4], epoch=self.epoch,
                total_connections=c[0], total_closed=c[1], total_orig_bytes=c[2],
                total_reply_bytes=c[3], total_orig_packets=c[4], total_reply_packets=c[5],
                total_duration_ns=c[6], source=decisions[0].source))
        self.not_kept += len(decisions)
        slim.lost.append(pb.LostEvents(
            time_ns=now, source=decisions[0].source,
            reason="spool-full: counted, not kept per connection",
            count=len(decisions)))
        return slim
