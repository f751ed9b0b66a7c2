"""What every command shares: one-line errors, durations and times, JSON, opening a store."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import click
import orjson

from natlens.errors import NatlensError
from natlens.timeparse import duration_ns, time_ns

if TYPE_CHECKING:
    from natlens.collector.store.api import Store
    from natlens.security import TlsFiles


class CliError(NatlensError):
    """A failure to report as one line."""


def parse_duration(text: str) -> int:
    """``90s``, ``15m``, ``2h``, ``7d``, ``1h30m`` → nanoseconds."""
    try:
        return duration_ns(text)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def parse_time(text: str, flag: str) -> int:
    """RFC 3339 (``2026-11-24T03:12:00Z``, offsets allowed) or ``now`` → ns since epoch."""
    if text == "now":
        return time.time_ns()
    try:
        return time_ns(text)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint=flag) from None


def window(since: str | None, start: str | None, end: str | None) -> tuple[int | None,
                                                                         int | None]:
    """``--since DUR`` or ``--from/--to`` → (since_ns, until_ns)."""
    if since and start:
        raise click.UsageError("--since and --from are two ways to say the same; give one")
    lo = time.time_ns() - parse_duration(since) if since else (
        parse_time(start, "--from") if start else None)
    hi = parse_time(end, "--to") if end else None
    if lo is not None and hi is not None and hi < lo:
        raise click.BadParameter("--to is before the start of the window", param_hint="--to")
    return lo, hi


def window_options(f: Any) -> Any:
    """--since DUR, or --from/--to RFC 3339: the time window of a report or query."""
    for opt in reversed([
            click.option("--since", metavar="DUR", help="Only the last DUR (30m, 2h, 7d)."),
            click.option("--from", "start", metavar="TIME", help="Window start, RFC 3339 "
                         "(2026-11-24T03:00:00Z)."),
            click.option("--to", "end", metavar="TIME", help="Window end, RFC 3339.")]):
        f = opt(f)
    return f


def print_json(obj: Any) -> None:
    """Indented JSON on stdout (orjson: the standard library's indenting encoder, in
    Python, took longer than parsing a big node's rules)."""
    click.echo(orjson.dumps(obj, option=orjson.OPT_INDENT_2))


F = TypeVar("F", bound=Callable[..., Any])

DB_HELP = ("The store: an SQLite file, or postgresql://USER@HOST:PORT/DB (password and "
           "other settings also from the PG* environment variables and PGPASSFILE).")


def db_option(help: str = DB_HELP, required: bool = True) -> Callable[[F], F]:
    """``--db``: an SQLite path or a PostgreSQL URL (not a click.Path: a URL is no file)."""
    option: Callable[[F], F] = click.option("--db", required=required, metavar="PATH|URL",
                                            help=help)
    return option


def print_yaml(obj: Any) -> None:
    """YAML on stdout, keys in the JSON's order."""
    import yaml

    click.echo(yaml.safe_dump(obj, sort_keys=False, allow_unicode=True), nl=False)


def print_ndjson(rows: list[Any]) -> None:
    """One JSON object per line (jq -c, log shippers)."""
    for r in rows:
        click.echo(orjson.dumps(r))


@contextmanager
def open_store(path: str) -> Iterator[Store]:
    """A natlens store opened for reading only: reports and queries never change it."""
    from natlens.collector.store.open import open_store as open_any

    store = open_any(path, read_only=True)
    try:
        yield store
    finally:
        store.close()


def collector_client_options(f: Any) -> Any:
    """How a client (the agent, ``pcap import``) reaches the collector: TLS or not."""
    for opt in reversed([
            click.option("--tls-ca", metavar="PEM", help="CA that signed the collector's "
                         "certificate; turns on TLS."),
            click.option("--tls-cert", metavar="PEM", help="Client certificate (mutual TLS)."),
            click.option("--tls-key", metavar="PEM", help="Its private key."),
            click.option("--tls-server-name", metavar="NAME", help="Name to check in the "
                         "collector's certificate (default: the host in --collector)."),
            click.option("--token-file", metavar="PATH", help="Send the bearer token in "
                         "PATH with the stream."),
            click.option("--insecure", is_flag=True, help="Allow plaintext gRPC (no "
                         "--tls-ca), e.g. to a collector on loopback.")]):
        f = opt(f)
    return f


def tls_settings(files: TlsFiles, insecure: bool, side: str) -> TlsFiles | None:
    """The TLS settings, or None for plaintext, which needs --insecure."""
    given = any((files.cert, files.key, files.ca))
    if given and insecure:
        raise click.UsageError("--insecure and --tls-* contradict each other")
    if not given and not insecure:
        need = ("--tls-ca (and --tls-cert/--tls-key for mutual TLS)" if side == "client"
                else "--tls-cert and --tls-key (and --tls-ca to require client certificates)")
        raise click.UsageError(f"refusing plaintext gRPC: give {need}, or --insecure")
    return files if given else None


def check_hostport(value: str, flag: str) -> None:
    """HOST:PORT, or several comma-separated (collector replicas to fail over between)."""
    for one in value.split(","):
        host, sep, port = one.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise click.BadParameter(f"{one!r} is not HOST:PORT", param_hint=flag)
