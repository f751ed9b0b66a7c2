"""``natlens pcap import``: a capture taken on a node (``tcpdump -i any``) → decisions."""

from __future__ import annotations

import hashlib
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from natlens.agent.decode.pairing import Pairer, PairingStats
    from natlens.agent.rules.model import DeclaredModel
    from natlens.agent.ship.batch import Batcher
    from natlens.agent.ship.bounded import BoundedShipper
    from natlens.agent.sources.capture_file import ReadStats
    from natlens.proto import natlens_pb2 as pb

from natlens.cliutil import (
    check_hostport,
    collector_client_options,
    db_option,
    print_json,
    print_yaml,
    tls_settings,
)


@click.group()
def pcap() -> None:
    """Packet captures as a second witness of DNAT decisions."""


@pcap.command(name="import")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--node", required=True, help="The node the capture was taken on.")
@db_option("Store into this natlens store: an SQLite file (created if missing) or a "
           "postgresql:// URL.", required=False)
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
@click.option("-o", "--output", type=click.Choice(["table", "json", "yaml"]), default="table",
              show_default=True)
def pcap_import(file: str, node: str, db: str | None, collector: str | None,
                tls_ca: str | None, tls_cert: str | None, tls_key: str | None,
                tls_server_name: str | None, token_file: str | None, insecure: bool,
                rules_file: str | None, ack_timeout: float, output: str) -> None:
    """Pair each connection's packet to a VIP with the same connection after DNAT, and
    store one decision per pair (source pcap). pcap and pcapng; Ethernet, Linux cooked
    v1 and v2, raw IP. A truncated or corrupt tail is said, and what came before kept.
    Importing the same file again for the same node stores nothing twice."""
    from natlens.agent.decode.pairing import Pairer
    from natlens.agent.ship.batch import Batcher
    from natlens.agent.sources.capture_file import ReadStats

    if (db is None) == (collector is None):
        raise click.UsageError("give --db PATH (store here) or --collector HOST:PORT "
                               "(ship there), one of the two")
    model = _rules(rules_file)
    sink = (_StoreSink(db) if db is not None else
            _collector_sink(collector or "", tls_ca, tls_cert, tls_key, tls_server_name,
                            token_file, insecure, ack_timeout))
    pairer = Pairer(None if model is None else
                    {(s.vip, s.port, s.protocol) for s in model.services})
    stats = ReadStats()
    # Batches numbered the same way each time (the import's id, fixed sizes, no clock),
    # so a second import of the file is recognised batch by batch.
    batcher = Batcher(f"pcap:{Path(file).name}", node, sink.put, max_records=BATCH,
                      max_age=math.inf, boot_id=_import_id(Path(file), node))
    try:
        _pair_file(file, pairer, batcher, model, stats)
    finally:
        sink.close()
    _summary(file, node, db, collector, stats, pairer.stats, output)


BATCH = 5000


def _rules(rules_file: str | None) -> DeclaredModel | None:
    from natlens.agent.rules.dump import parse_dump
    from natlens.inputs import read_text

    return None if rules_file is None else parse_dump(read_text(rules_file, "--rules"))


def _pair_file(file: str, pairer: Pairer, batcher: Batcher, model: DeclaredModel | None,
               stats: ReadStats) -> None:
    """The capture's first packets, paired; the rules in force from its first packet."""
    from natlens.agent.decode.decision import from_pair
    from natlens.agent.rules.live import to_snapshot
    from natlens.agent.sources.capture_file import read_first_packets

    progress = _progress(Path(file))
    first = True
    try:
        for p in read_first_packets(file, stats, progress.update if progress else None):
            if first and model is not None:
                batcher.add_rules(to_snapshot(model, p.time_ns - 1))
            first = False
            pair = pairer.feed(p)
            if pair is not None:
                batcher.add_decision(from_pair(pair))
        pairer.finish()
        batcher.flush()
    finally:
        if progress:
            progress.close()


def _summary(file: str, node: str, db: str | None, collector: str | None, stats: ReadStats,
             paired: PairingStats, output: str) -> None:
    summary = {"file": file, "node": node, "frames": stats.frames,
               "first_packets": stats.first_packets, "decisions": paired.pairs,
               "retransmits": paired.retransmits, "unpaired": paired.unpaired,
               "truncated_at_byte": stats.truncated_at}
    where = f"stored for {node}" if db else f"shipped to {collector} for {node}"
    if output == "json":
        print_json(summary)
    elif output == "yaml":
        print_yaml(summary)
    else:
        click.echo(f"{file}: {stats.frames} frames, {paired.pairs} decisions {where} "
                   f"({paired.retransmits} retransmitted first packets, "
                   f"{paired.unpaired} never paired)")
    if stats.truncated_at is not None:
        click.echo(f"natlens: error: {file}: unreadable from byte {stats.truncated_at} of "
                   f"{stats.size} (truncated or corrupt); the {paired.pairs} decisions "
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
        from natlens.collector.store.open import open_store

        self.store = open_store(db)

    def put(self, batch: pb.Batch) -> None:
        self.store.ingest(batch)

    def close(self) -> None:
        self.store.close()


def _collector_sink(target: str, ca: str | None, cert: str | None, key: str | None,
                    server_name: str | None, token_file: str | None, insecure: bool,
                    timeout: float) -> BoundedShipper:
    """Ships as an agent does (agent/ship/bounded.py), failing in one line when the
    collector does not answer."""
    from natlens.agent.ship.bounded import BoundedShipper
    from natlens.security import TlsFiles, channel_credentials, read_token

    check_hostport(target, "--collector")
    tls = tls_settings(TlsFiles(cert, key, ca), insecure, side="client")
    return BoundedShipper(target, channel_credentials(tls) if tls is not None else None,
                          read_token(token_file), server_name, timeout)


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
