"""``natlens pcap import``: a capture taken on a node (``tcpdump -i any``) → decisions."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from natlens.cliutil import CliError, print_json


@click.group()
def pcap() -> None:
    """Packet captures as a second witness of DNAT decisions."""


@pcap.command(name="import")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--node", required=True, help="The node the capture was taken on.")
@click.option("--db", type=click.Path(dir_okay=False), help="Store into this natlens "
              "database (created if missing).")
@click.option("--rules", "rules_file", type=click.Path(exists=True, dir_okay=False),
              help="The node's rules when the capture was taken (iptables-save, an nft "
              "listing or ipvsadm output): decisions are judged against them, and only "
              "connections to their VIPs are paired. Without it the report shows "
              "observed shares only.")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
def pcap_import(file: str, node: str, db: str | None, rules_file: str | None,
                output: str) -> None:
    """Pair each connection's packet to a VIP with the same connection after DNAT, and
    store one decision per pair (source pcap). pcap and pcapng; Ethernet, Linux cooked
    v1 and v2, raw IP. A truncated or corrupt tail is said, and what came before kept."""
    from natlens.agent.decode.pairing import Pairer
    from natlens.agent.rules.live import to_snapshot
    from natlens.agent.sources.capture_file import CaptureError, ReadStats, read_first_packets
    from natlens.collector.store.db import Store
    from natlens.proto import natlens_pb2 as pb

    if db is None:
        raise click.UsageError("give --db PATH (the database to store into)")
    from natlens.agent.rules.dump import parse_dump

    model = None if rules_file is None else parse_dump(Path(rules_file).read_text())
    vips = None if model is None else {(s.vip, s.port, s.protocol) for s in model.services}
    pairer = Pairer(vips)
    stats = ReadStats()
    store = Store(db)
    boot = f"pcap-{time.time_ns()}"
    seq = 0
    pending: list[pb.Decision] = []
    first_t: int | None = None

    def flush(rules: list[pb.RuleSnapshot]) -> None:
        nonlocal seq, pending
        if not pending and not rules:
            return
        seq += 1
        store.ingest(pb.Batch(agent_id=f"pcap:{Path(file).name}", boot_id=boot, seq=seq,
                              node=node, decisions=pending, rules=rules))
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
            pending.append(pb.Decision(
                time_ns=pair.time_ns, protocol=pair.protocol, client_ip=pair.client,
                client_port=pair.client_port, vip=pair.vip, vip_port=pair.vip_port,
                endpoint_ip=pair.endpoint, endpoint_port=pair.endpoint_port,
                source=pb.SOURCE_PCAP, event=pb.EVENT_NEW))
            if len(pending) >= 5000:
                flush([])
        pairer.finish()
        flush([])
    except CaptureError as e:
        raise CliError(str(e)) from None
    finally:
        if progress:
            progress.close()
        store.close()
    summary = {"file": file, "node": node, "frames": stats.frames,
               "first_packets": stats.first_packets, "decisions": pairer.stats.pairs,
               "retransmits": pairer.stats.retransmits, "unpaired": pairer.stats.unpaired,
               "truncated_at_byte": stats.truncated_at}
    if output == "json":
        print_json(summary)
    else:
        click.echo(f"{file}: {stats.frames} frames, {pairer.stats.pairs} decisions stored "
                   f"for {node} ({pairer.stats.retransmits} retransmitted first packets, "
                   f"{pairer.stats.unpaired} never paired)")
    if stats.truncated_at is not None:
        click.echo(f"natlens: error: {file}: unreadable from byte {stats.truncated_at} of "
                   f"{stats.size} (truncated or corrupt); the {pairer.stats.pairs} decisions "
                   f"before it are stored", err=True)
        sys.exit(1)


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
