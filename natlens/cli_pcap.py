"""``natlens pcap import``: a capture taken on a node (``tcpdump -i any``) → decisions."""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import click

from natlens.cliutil import (
    CliError,
    check_hostport,
    collector_client_options,
    print_json,
    tls_settings,
)


@click.group()
def pcap() -> None:
    """Packet captures as a second witness of DNAT decisions."""


@pcap.command(name="import")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--node", required=True, help="The node the capture was taken on.")
@click.option("--db", type=click.Path(dir_okay=False), help="Store into this natlens "
              "database (created if missing).")
@click.option("--collector", metavar="HOST:PORT", help="Or ship to a running collector, as "
              "an agent would (TLS options below).")
@collector_client_options
@click.option("--rules", "rules_file", type=click.Path(exists=True, dir_okay=False),
              help="The node's rules when the capture was taken (iptables-save, an nft "
              "listing or ipvsadm output): decisions are judged against them, and only "
              "connections to their VIPs are paired. Without it the report shows "
              "observed shares only.")
@click.option("--ack-timeout", type=click.FloatRange(1, 3600), default=60.0,
              show_default=True, help="--collector: seconds to wait for it to answer, at "
              "the start and for the last acknowledgements.")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
def pcap_import(file: str, node: str, db: str | None, collector: str | None,
                tls_ca: str | None, tls_cert: str | None, tls_key: str | None,
                tls_server_name: str | None, token_file: str | None, insecure: bool,
                rules_file: str | None, ack_timeout: float, output: str) -> None:
    """Pair each connection's packet to a VIP with the same connection after DNAT, and
    store one decision per pair (source pcap). pcap and pcapng; Ethernet, Linux cooked
    v1 and v2, raw IP. A truncated or corrupt tail is said, and what came before kept.
    Importing the same file again for the same node stores nothing twice."""
    from natlens.agent.decode.decision import from_pair
    from natlens.agent.decode.pairing import Pairer
    from natlens.agent.rules.dump import parse_dump
    from natlens.agent.rules.live import to_snapshot
    from natlens.agent.sources.capture_file import CaptureError, ReadStats, read_first_packets
    from natlens.proto import natlens_pb2 as pb
    from natlens.proto.columns import DecisionRow, pack

    if (db is None) == (collector is None):
        raise click.UsageError("give --db PATH (store here) or --collector HOST:PORT "
                               "(ship there), one of the two")
    model = None if rules_file is None else parse_dump(Path(rules_file).read_text())
    sink = (_StoreSink(db) if db is not None else
            _CollectorSink(collector or "", tls_ca, tls_cert, tls_key, tls_server_name,
                           token_file, insecure, ack_timeout))
    vips = None if model is None else {(s.vip, s.port, s.protocol) for s in model.services}
    pairer = Pairer(vips)
    stats = ReadStats()
    boot = _import_id(Path(file), node)
    seq = 0
    pending: list[DecisionRow] = []
    first_t: int | None = None

    def flush(rules: list[pb.RuleSnapshot]) -> None:
        nonlocal seq, pending
        if not pending and not rules:
            return
        seq += 1
        sink.put(pb.Batch(agent_id=f"pcap:{Path(file).name}", boot_id=boot, seq=seq,
                          node=node, columns=pack(pending), rules=rules))
        pending = []

    progress = _progress(Path(file))
    try:
        for p in read_first_packets(file, stats, progress.update if progress else None):
            pair = pairer.feed(p)
            if first_t is None:
                first_t = p.time_ns
                if model is not None:
                    flush([to_snapshot(model, p.time_ns - 1)])
            if pair is None:
                continue
            pending.append(from_pair(pair))
            if len(pending) >= 5000:
                flush([])
        pairer.finish()
        flush([])
    except CaptureError as e:
        raise CliError(str(e)) from None
    finally:
        if progress:
            progress.close()
        sink.close()
    summary = {"file": file, "node": node, "frames": stats.frames,
               "first_packets": stats.first_packets, "decisions": pairer.stats.pairs,
               "retransmits": pairer.stats.retransmits, "unpaired": pairer.stats.unpaired,
               "truncated_at_byte": stats.truncated_at}
    where = f"stored for {node}" if db else f"shipped to {collector} for {node}"
    if output == "json":
        print_json(summary)
    else:
        click.echo(f"{file}: {stats.frames} frames, {pairer.stats.pairs} decisions {where} "
                   f"({pairer.stats.retransmits} retransmitted first packets, "
                   f"{pairer.stats.unpaired} never paired)")
    if stats.truncated_at is not None:
        click.echo(f"natlens: error: {file}: unreadable from byte {stats.truncated_at} of "
                   f"{stats.size} (truncated or corrupt); the {pairer.stats.pairs} decisions "
                   f"before it are {'stored' if db else 'shipped'}", err=True)
        sys.exit(1)


def _import_id(path: Path, node: str) -> str:
    """The same for the same file and node, so a second import of it is recognised by
    the store (batches are kept once per agent, boot and sequence number)."""
    h = hashlib.sha256(node.encode())
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            h.update(f.read(1 << 20))
            f.seek(max(size - (1 << 20), 0))
            h.update(f.read(1 << 20))
    except OSError:
        return f"pcap-{time.time_ns()}"  # the reader says what is wrong with the file
    h.update(str(size).encode())
    return f"pcap-{h.hexdigest()[:20]}"


class _StoreSink:
    def __init__(self, db: str) -> None:
        from natlens.collector.store.db import Store

        self.store = Store(db)

    def put(self, batch: Any) -> None:
        self.store.ingest(batch)

    def close(self) -> None:
        self.store.close()


class _CollectorSink:
    """Ships as an agent does, a bounded number of batches in flight; fails in one line
    if the collector does not answer, and says how many batches it did not take."""

    IN_FLIGHT = 16

    def __init__(self, target: str, ca: str | None, cert: str | None, key: str | None,
                 server_name: str | None, token_file: str | None, insecure: bool,
                 timeout: float) -> None:
        import grpc

        from natlens.agent.ship.client import Shipper
        from natlens.security import TlsFiles, channel_credentials, read_token

        check_hostport(target, "--collector")
        tls = tls_settings(TlsFiles(cert, key, ca), insecure, side="client")
        creds = channel_credentials(tls) if tls is not None else None
        self.target, self.timeout = target, timeout
        options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
        channel = (grpc.secure_channel(target, creds, options=options) if creds else
                   grpc.insecure_channel(target))
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise CliError(f"collector {target} did not answer within {timeout:.0f}s; "
                           "nothing was imported") from None
        finally:
            channel.close()
        self.shipper = Shipper(target, credentials=creds, token=read_token(token_file),
                               server_name=server_name, backoff=(0.2, 2.0))
        self.shipper.start()

    def put(self, batch: Any) -> None:
        deadline = time.monotonic() + self.timeout
        while self.shipper.pending >= self.IN_FLIGHT:
            if time.monotonic() > deadline:
                self._fail("stopped acknowledging")
            time.sleep(0.005)
        self.shipper.submit(batch)

    def close(self) -> None:
        ok = self.shipper.drain(self.timeout)
        self.shipper.stop()
        if not ok:
            self._fail("did not acknowledge every batch")

    def _fail(self, what: str) -> NoReturn:
        n = self.shipper.pending
        self.shipper.stop()
        raise CliError(f"collector {self.target} {what} within {self.timeout:.0f}s; "
                       f"{self.shipper.acked} batches were stored, {n} were not (import "
                       "again: stored batches are not stored twice)")


class _Bar:
    def __init__(self, size: int) -> None:
        from rich.progress import Progress

        self.p = Progress(transient=True)
        self.p.start()
        self.task = self.p.add_task("reading", total=size)

    def update(self, pos: int) -> None:
        self.p.update(self.task, completed=pos)

    def close(self) -> None:
        self.p.stop()


def _progress(path: Path) -> _Bar | None:
    """A progress bar on a terminal, nothing in a pipe."""
    if not sys.stderr.isatty() or not path.is_file():
        return None
    return _Bar(path.stat().st_size)
