"""``natlens query …`` and ``natlens db …``: post-incident questions to a collector's store."""

from __future__ import annotations

import sys
from typing import Any

import click

from natlens.cliutil import (
    CliError,
    db_option,
    open_store,
    parse_time,
    print_json,
    print_ndjson,
    print_yaml,
    window,
    window_options,
)
from natlens.remote import remote_or_none

_db = db_option(required=False)
_out = click.option("-o", "--output", type=click.Choice(["table", "json", "yaml", "ndjson"]),
                    default="table", show_default=True,
                    help="ndjson: one JSON object per line.")
_no_headers = click.option("--no-headers", is_flag=True, help="Tables without their header "
                           "row (for scripts: cut, awk).")


def _data(obj: Any, output: str) -> bool:
    """Print ``obj`` in a data format; False for a table (the caller draws it)."""
    if output == "json":
        print_json(obj)
    elif output == "yaml":
        print_yaml(obj)
    elif output == "ndjson":
        print_ndjson(obj if isinstance(obj, list) else [obj])
    else:
        return False
    return True


def _table(rows: list[dict[str, Any]], columns: list[str], empty: str,
           headers: bool = True) -> None:
    from rich.table import Table

    from natlens.collector.report.table import console

    if not rows:
        click.echo(empty, err=not headers)
        return
    if not headers:
        for r in rows:
            click.echo("\t".join("" if r.get(c) is None else str(r[c]) for c in columns))
        return
    t = Table()
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*("" if r.get(c) is None else str(r[c]) for c in columns))
    console().print(t)


@click.group()
def query() -> None:
    """Ask the store: which pod a client reached, the rules in force, undeclared traffic."""


@query.command(name="decisions")
@_db
@click.option("--client", metavar="IP", help="Only connections from this client address.")
@click.option("--service", metavar="NS/NAME[:PORT]", help="Only this service (port).")
@click.option("--endpoint", metavar="IP[:PORT]", help="Only connections DNATed to this.")
@click.option("--node", help="Only decisions made on this node.")
@click.option("--source", type=click.Choice(["ebpf", "netlink", "pcap"]), help="Only what "
              "this source saw (a node watched by several has each connection once per "
              "source).")
@window_options
@click.option("--pod", metavar="NS/NAME", help="Only connections DNATed to this pod (to the "
              "addresses it held, while it held them).")
@click.option("--limit", type=click.IntRange(1, 10_000_000), default=10_000, show_default=True,
              help="At most this many (oldest first); a line on stderr says when cut.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing decisions as they are "
              "stored (from now, or from --since/--from), until interrupted.")
@_out
@_no_headers
def query_decisions_cmd(db: str | None, client: str | None, service: str | None,
                        endpoint: str | None, node: str | None, source: str | None,
                        since: str | None, start: str | None, end: str | None, pod: str | None,
                        limit: int, follow: bool, output: str, no_headers: bool) -> None:
    """One row per decision: when, where, from which client, to which endpoint, and the
    pod that had the endpoint's IP at that moment. A connection's end (its DESTROY
    event) is not a decision and is not listed."""
    from natlens.collector.query.decisions import DecisionQuery, query_decisions
    from natlens.collector.report.shape import decisions_json

    lo, hi = window(since, start, end)
    q = DecisionQuery(client=client, service=service, endpoint=endpoint, node=node,
                      since_ns=lo, until_ns=hi, limit=limit, source=source, pod=pod)
    remote = remote_or_none(db)
    if follow:
        if end is not None:
            raise click.UsageError("--follow shows what comes next: no --to")
        _follow(db, remote, q, output)
        return
    if remote is not None:
        rows = _remote_decisions(remote, q)
        cut = len(rows) > limit
        rows = rows[:limit]
    else:
        assert db is not None
        with open_store(db) as store:
            found, cut = query_decisions(store, q)
        rows = decisions_json(found)
    if not _data(rows, output):
        _table(rows, DECISION_COLUMNS, "no decisions match", headers=not no_headers)
    if cut:
        click.echo(f"natlens: showing the first {limit} decisions; raise --limit or narrow "
                   f"the window for more", err=True)


DECISION_COLUMNS = ["time", "node", "client", "service", "vip", "endpoint", "pod", "source",
                    "event", "duration", "bytes"]


def _remote_decisions(remote: Any, q: Any) -> list[dict[str, Any]]:
    """``query decisions`` asked of a collector (one more row than the limit: cut?)."""
    from natlens.timeparse import rfc3339

    rows: list[dict[str, Any]] = remote.get("/api/decisions", {
        "client": q.client, "service": q.service, "endpoint": q.endpoint, "pod": q.pod,
        "node": q.node, "source": q.source,
        "from": rfc3339(q.since_ns) if q.since_ns is not None else None,
        "to": rfc3339(q.until_ns) if q.until_ns is not None else None,
        "limit": q.limit + 1})
    return rows


def _follow(db: str | None, remote: Any, q: Any, output: str, every: float = 1.0) -> None:
    """Poll until Ctrl-C (or SIGTERM); one line per new decision."""
    import contextlib
    import signal
    import time

    from natlens.collector.query.decisions import query_decisions
    from natlens.collector.query.follow import Follow
    from natlens.collector.report.shape import decisions_json

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    f = Follow(q, q.since_ns if q.since_ns is not None else time.time_ns())
    try:
        with contextlib.ExitStack() as stack:
            if remote is not None:
                def fetch(dq: Any) -> list[dict[str, Any]]:
                    return _remote_decisions(remote, dq)
            else:
                store = stack.enter_context(open_store(db))  # type: ignore[arg-type]

                def fetch(dq: Any) -> list[dict[str, Any]]:
                    return decisions_json(query_decisions(store, dq)[0])
            while True:
                for r in f.poll(fetch):
                    if output in ("json", "ndjson"):
                        print_ndjson([r])
                    elif output == "yaml":
                        print_yaml([r])
                    else:
                        click.echo("  ".join("" if r.get(c) is None else str(r[c])
                                             for c in DECISION_COLUMNS))
                sys.stdout.flush()
                time.sleep(every)
    except KeyboardInterrupt:
        pass


@query.command(name="rules")
@_db
@click.option("--node", required=True, help="The node whose rules to show.")
@click.option("--at", "at", default="now", show_default=True, metavar="TIME",
              help="RFC 3339 time (2026-11-24T03:12:00Z).")
@_out
@_no_headers
def query_rules_cmd(db: str | None, node: str, at: str, output: str, no_headers: bool) -> None:
    """The declared model in force on NODE at TIME: per service port, each endpoint's
    probability."""
    from natlens.collector.query.rules import RulesLater, rules_at
    from natlens.collector.report.shape import rules_json, rules_later

    at_ns = parse_time(at, "--at")
    remote = remote_or_none(db)
    if remote is not None:
        model = remote.get("/api/rules", {"node": node, "at": None if at == "now" else at})
    else:
        assert db is not None
        with open_store(db) as store:
            try:
                model = rules_json(rules_at(store, node, at_ns))
            except RulesLater as e:
                raise CliError(rules_later(e.node, e.first_ns, e.at_ns)) from None
    if _data(model, output):
        return
    if not no_headers:
        click.echo(f"{node}: {model['mode']} rules {model['hash'][7:19]}, in force from "
                   f"{model['in_force_from']}" + (f" until {model['replaced_at']}"
                                                    if model["replaced_at"] else ""))
    rows = [{"service": s["service"], "kind": s["kind"], "vip": f"{s['vip']}:{s['port']}",
             "protocol": s["protocol"], "endpoint": e["endpoint"],
             "probability": f"{e['probability']:.4f}", "chain": e["chain"]}
            for s in model["services"] for e in (s["endpoints"] or [{"endpoint": "(none)",
                                                                     "probability": 0.0,
                                                                     "chain": ""}])]
    _table(rows, ["service", "kind", "vip", "protocol", "endpoint", "probability", "chain"],
           "no service ports", headers=not no_headers)


@query.command(name="undeclared")
@_db
@click.option("--node", help="Only this node.")
@window_options
@_out
@_no_headers
def query_undeclared_cmd(db: str | None, node: str | None, since: str | None, start: str | None,
                         end: str | None, output: str, no_headers: bool) -> None:
    """Traffic to endpoints no rule declared: stale endpoints, foreign NAT rules, VIPs
    another proxy handles."""
    from natlens.collector.report.build import ReportQuery, build_report
    from natlens.collector.report.undeclared import undeclared

    lo, hi = window(since, start, end)
    remote = remote_or_none(db)
    if remote is not None:
        rows = remote.get("/api/undeclared", {"node": node, "since": since, "from": start,
                                              "to": end})
    else:
        assert db is not None
        with open_store(db) as store:
            rows = undeclared(build_report(store, ReportQuery(node=node, since_ns=lo,
                                                              until_ns=hi)))
    if not _data(rows, output):
        _table(rows, ["kind", "node", "service", "vip", "port", "protocol", "endpoint", "pod",
                      "connections"], "no undeclared traffic", headers=not no_headers)


@click.group(name="db")
def db_group() -> None:
    """The collector's store: its size, and moving it into PostgreSQL."""


@db_group.command(name="stats")
@_db
@_out
@_no_headers
def db_stats_cmd(db: str | None, output: str, no_headers: bool) -> None:
    """Rows, oldest and newest per table, and the store's size."""
    from natlens.timeparse import rfc3339

    if db is None:
        raise click.UsageError("Missing option '--db' (db stats reads the store itself)")
    with open_store(db) as store:
        st = store.stats()
    if _data(st, output):
        return
    per = st["bytes_per_decision"]
    if not no_headers:
        click.echo(f"{st['path']}: {st['bytes'] / 1e6:.1f} MB, schema {st['schema_version']}"
                   + (f", {per} bytes per decision" if per else ""))
    _table([{"table": t["table"], "rows": t["rows"],
             "oldest": rfc3339(t["oldest_ns"]) if t.get("oldest_ns") else "",
             "newest": rfc3339(t["newest_ns"]) if t.get("newest_ns") else ""}
            for t in st["tables"]], ["table", "rows", "oldest", "newest"], "no tables",
           headers=not no_headers)


@db_group.command(name="copy")
@click.option("--from", "source", required=True, metavar="PATH",
              help="The SQLite store to copy (opened read-only).")
@click.option("--to", "target", required=True, metavar="URL",
              help="postgresql://USER@HOST:PORT/DB: a new or empty database.")
def db_copy_cmd(source: str, target: str) -> None:
    """Move an SQLite store into PostgreSQL: every table, rows unchanged, so reports and
    queries answer the same before and after. Stop the collector (or run it with
    --read-only) first: rows it writes during the copy are not copied."""
    from natlens.collector.store.copy import copy_store
    from natlens.collector.store.open import redact

    copied = copy_store(source, target,
                        lambda t, n: click.echo(f"{t}: {n} rows", err=True))
    click.echo(f"copied {sum(copied.values())} rows in {len(copied)} tables from {source} "
               f"to {redact(target)}")
