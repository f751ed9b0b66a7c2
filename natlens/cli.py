"""The ``natlens`` command: thin shells over importable functions.

Every command either does its job or prints one line, ``natlens: error: …``, on stderr
and exits non-zero (2 for usage errors, 1 for everything else). No tracebacks.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from natlens import __version__
from natlens.cliutil import (
    CliError,
    check_hostport,
    collector_client_options,
    db_option,
    open_store,
    parse_duration,
    print_json,
    print_ndjson,
    print_yaml,
    tls_settings,
    window,
    window_options,
)
from natlens.errors import NatlensError

SEED_SCENARIO = Path(__file__).resolve().parent.parent / "examples" / "seed-bill-service.yaml"


def _setup_logging(level: str, name: str) -> None:
    import logging

    logging.basicConfig(level=getattr(logging, level.upper()), stream=sys.stderr,
                        format=f"%(asctime)s {name} %(levelname)s %(message)s")


# Command groups in modules of their own, imported when named (or listed): a command
# such as `rules parse` on a big node does not pay for their imports.
LAZY = {"db": ("natlens.cli_query", "db_group"), "pcap": ("natlens.cli_pcap", "pcap"),
        "query": ("natlens.cli_query", "query")}


class Natlens(click.Group):
    """The command group, with natlens's way of failing: one line on stderr,
    ``natlens: error: …``, exit 2 for usage errors and 1 for the rest, no traceback for
    anything a user can cause (``NatlensError`` and the operating system's errors)."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in LAZY and cmd_name not in self.commands:
            import importlib

            module, attr = LAZY[cmd_name]
            self.add_command(getattr(importlib.import_module(module), attr), cmd_name)
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY})

    def load_all(self) -> Natlens:
        """Every command in ``commands`` (for whatever walks them, such as the docs'
        check)."""
        for name in LAZY:
            self.get_command(click.Context(self), name)
        return self

    def main(self, args: Any = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             **extra: Any) -> NoReturn:
        # gRPC's core logs every failed TLS handshake to stderr at INFO, once per retry;
        # the agent says why it cannot deliver in its own log. GRPC_VERBOSITY overrides.
        os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
        # numpy's BLAS would start a thread pool at import: before the agent drops its
        # capabilities (per thread), and of no use to natlens' small arrays.
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
        try:
            rv = super().main(args=args, prog_name=prog_name or "natlens",
                              complete_var=complete_var, standalone_mode=False, **extra)
        except click.exceptions.Exit as e:
            sys.exit(e.exit_code)
        except click.UsageError as e:
            cmd = e.ctx.command_path if e.ctx else "natlens"
            fail(f"{e.format_message()} (see {cmd} --help)", 2)
        except click.ClickException as e:
            fail(e.format_message())
        except (KeyboardInterrupt, click.exceptions.Abort):
            click.echo("natlens: interrupted", err=True)
            sys.exit(130)
        except NatlensError as e:
            fail(str(e))
        except ModuleNotFoundError as e:  # the agent's image carries only the agent's
            if (e.name or "natlens").split(".")[0] == "natlens":
                raise  # natlens's own modules are always there: a bug, with its traceback
            fail(f"this installation lacks the Python package {e.name!r} that this command "
                 "needs (the natlens-agent image carries only what the agent imports; "
                 "natlens-collector has every command)")
        except PermissionError as e:
            fail(f"{e.strerror}: {e.filename or ''} (run as root?)")
        except OSError as e:
            fail(str(e))
        sys.exit(rv if isinstance(rv, int) else 0)


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"natlens: error: {message}", err=True)
    sys.exit(code)


@click.group(cls=Natlens, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="natlens")
@click.option("--server", metavar="URL", envvar="NATLENS_SERVER",
              help="Run report and query through this collector's HTTP API (its --http "
              "address, e.g. http://natlens-collector.natlens.svc:8080) instead of --db.")
@click.option("--token-file", "server_token_file", metavar="PATH",
              envvar="NATLENS_TOKEN_FILE", help="With --server: the bearer token in PATH "
              "(the collector's --http-token-file).")
@click.pass_context
def cli(ctx: click.Context, server: str | None, server_token_file: str | None) -> None:
    """natlens: where did a Service's traffic actually go, and is that what the rules say?

    An agent on each node watches the kernel's DNAT decisions (conntrack) and reads
    kube-proxy's rules; a collector stores both and reports, per service port, observed
    per-endpoint shares against the declared probabilities with a statistical test.
    """
    token = None
    if server_token_file:
        from natlens.security import read_token

        token = read_token(server_token_file)
    ctx.obj = {"server": server, "token": token}


# ---------------------------------------------------------------- agent / collector

@cli.command()
@click.option("--collector", metavar="HOST:PORT[,HOST:PORT…]", help="Collector gRPC address "
              "(required); several: replicas sharing a PostgreSQL store, failed over in turn.")
@click.option("--node", default=lambda: os.environ.get("NODE_NAME") or os.uname().nodename,
              show_default="$NODE_NAME or the hostname", help="Node name put on every record.")
@click.option("--netns", metavar="NAME", help="Watch this network namespace (/run/netns/NAME "
              "or a path) instead of the agent's own.")
@click.option("--source", default="auto", show_default=True, metavar="SOURCE",
              help="Where decisions come from. hook: a BPF netfilter program (kernel 6.4+ "
              "with BTF, compiled at install time) counts every DNAT decision just before "
              "conntrack confirms it and records each connection in a pinned ring, with or "
              "without conntrack events; ebpf: a bcc socket filter counts DNAT "
              "decisions in the kernel; netlink: every conntrack event in user space; auto: "
              "hook, else ebpf, else netlink, each step with one log line saying why; "
              "pcap: packets on every interface, paired before and after DNAT. all, or a "
              "list such as netlink,pcap: one agent process per source, side by side (ids "
              "NODE/SOURCE; --spool gets a folder per source and --health-listen the given "
              "port and the next ones), for report --agreement.")
@click.option("--decisions", is_flag=True, hidden=True, help="The default now: kept so "
              "that older command lines still run.")
@click.option("--aggregate-only", is_flag=True, help="hook and ebpf: ship the kernel's "
              "counters only, no record per connection (cheaper; query decisions, "
              "affinity first connections and names at the time then have nothing).")
@click.option("--closes", is_flag=True, help="hook: also read conntrack DESTROY events "
              "through a second BPF program: bytes, packets and durations per endpoint "
              "(report --weight bytes), and each record's end. Off by default: it costs "
              "the kernel a netlink message per closed connection (BENCHMARKS.md).")
@click.option("--sample", type=click.IntRange(1, 1 << 20), default=1, show_default=True,
              metavar="N", help="hook and ebpf: ship the records of 1 in N connections, "
              "picked in the kernel by a hash of the connection; counters stay exact.")
@click.option("--pin-root", default="/sys/fs/bpf/natlens", show_default=True,
              help="bpffs folder for the pinned maps (one subfolder per node); a restarted "
              "agent continues from them.")
@click.option("--counters-interval", type=click.FloatRange(0.05, 3600), default=5.0,
              show_default=True, help="ebpf: seconds between reads of the kernel counters "
              "(a read of 100,000 keys costs about 0.6 s of CPU).")
@click.option("--print-bpf", is_flag=True, help="Print the C source of the BPF program "
              "the chosen --source runs (hook, else the ebpf socket filter) and exit.")
@click.option("--health-listen", metavar="HOST:PORT", help="Serve /healthz (the source "
              "loop turns) and /readyz (subscribed, rules read) for kubelet probes.")
@collector_client_options
@click.option("--spool", metavar="DIR", help="Keep every batch on disk here until the "
              "collector acknowledges it; a restarted agent resends what it finds.")
@click.option("--spool-max-bytes", type=click.IntRange(4096, 1 << 40), default=256 << 20,
              show_default=True, help="Spool size limit; past it decisions are counted in "
              "aggregate (exact counts, no per-connection rows) and that is reported.")
@click.option("--keep-privileges", is_flag=True, help="Do not drop capabilities once set up "
              "(by default only CAP_NET_ADMIN, and CAP_BPF with the eBPF source and "
              "CAP_SYS_ADMIN with --netns, remain).")
@click.option("--agent-id", default="", help="Stable id of this agent (default: the node).")
@click.option("--rules-interval", type=click.FloatRange(0.1, 3600), default=2.0,
              show_default=True, help="Seconds between checks of the node's rules: they are "
              "read again when nf_tables' generation moved (every check on legacy iptables "
              "and IPVS nodes).")
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=2000, show_default=True)
@click.option("--batch-age", type=click.FloatRange(0.01, 60), default=1.0, show_default=True,
              help="Seconds before a partly filled batch is sent.")
@click.option("--drain-timeout", type=click.FloatRange(0, 3600), default=30.0,
              show_default=True, help="On SIGTERM, seconds to wait for the collector's acks.")
@click.option("--rcvbuf", type=click.IntRange(4096, 1 << 30), default=64 << 20,
              show_default=True, help="ctnetlink receive buffer in bytes (SO_RCVBUFFORCE); "
              "an overflow is counted and reported, never silent.")
@click.option("--no-ct-accounting", is_flag=True, help="Do not switch on nf_conntrack_acct "
              "and nf_conntrack_timestamp (bytes and durations on DESTROY need them).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="info", show_default=True)
def agent(collector: str | None, node: str, netns: str | None, source: str,
          decisions: bool, aggregate_only: bool, closes: bool, sample: int, pin_root: str,
          counters_interval: float, print_bpf: bool, health_listen: str | None, tls_ca: str | None,
          tls_cert: str | None, tls_key: str | None, tls_server_name: str | None,
          token_file: str | None, insecure: bool, spool: str | None, spool_max_bytes: int,
          keep_privileges: bool, agent_id: str, rules_interval: float,
          batch_size: int, batch_age: float, drain_timeout: float, rcvbuf: int,
          no_ct_accounting: bool, log_level: str) -> None:
    """Run the node agent: stream DNAT decisions, counters and rule snapshots to the
    collector."""
    from natlens.agent.config import AgentConfig
    from natlens.agent.pipeline import Agent
    from natlens.agent.sources.ebpf_filter import BpfUnavailable, pin_dir, program_text
    from natlens.agent.supervise import children, parse_sources
    from natlens.agent.supervise import run as run_children
    from natlens.security import TlsFiles, channel_credentials, read_token

    if print_bpf:
        from natlens.agent.sources.ebpf_filter import with_includes
        from natlens.agent.sources.hook_loader import SOURCE as HOOK_SOURCE

        click.echo(with_includes(HOOK_SOURCE) if source in ("hook", "auto")
                   else program_text(pin_dir(pin_root, node, netns)), nl=False)
        return
    if collector is None:
        raise click.UsageError("Missing option '--collector'.")
    check_hostport(collector, "--collector")
    if health_listen is not None:
        check_hostport(health_listen, "--health-listen")
    try:
        sources = parse_sources(source)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--source") from None
    if decisions and aggregate_only:
        raise click.BadParameter("--decisions and --aggregate-only contradict each other",
                                 param_hint="--aggregate-only")
    if closes and source not in ("hook", "auto"):
        raise click.BadParameter("--closes applies to the hook source; the others read "
                                 "DESTROY events anyway", param_hint="--source")
    if source in ("netlink", "pcap") and (decisions or aggregate_only or sample > 1):
        raise click.BadParameter("--aggregate-only and --sample apply to the hook and ebpf "
                                 f"sources; the {source} source always ships every decision",
                                 param_hint="--source")
    tls = tls_settings(TlsFiles(tls_cert, tls_key, tls_ca), insecure, side="client")
    token = read_token(token_file)
    if tls is not None:
        channel_credentials(tls)  # file problems now, in one line, not at the handshake
    if len(sources) > 1:  # checked once here, not by each child
        _setup_logging(log_level, f"natlens-agent[{agent_id or node}]")
        ctx = click.get_current_context()
        kids = children(_argv_without(ctx, {"source", "agent_id", "spool", "health_listen",
                                            "decisions", "sample", "print_bpf"}),
                        sources, agent_id or node, spool, health_listen,
                        ["--sample", str(sample)] if sample > 1 else [])
        sys.exit(run_children(kids))
    _setup_logging(log_level, f"natlens-agent[{agent_id or node}]")
    ag = Agent(AgentConfig(
        collector=collector, node=node, netns=netns, agent_id=agent_id, source=source,
        aggregate_only=aggregate_only, closes=closes, sample=sample, pin_root=pin_root,
        counters_interval=counters_interval, rules_interval=rules_interval,
        batch_size=batch_size, batch_age=batch_age, drain_timeout=drain_timeout,
        accounting=not no_ct_accounting, rcvbuf=rcvbuf, health_listen=health_listen,
        tls=tls, token=token, tls_server_name=tls_server_name, spool=spool,
        spool_max_bytes=spool_max_bytes, keep_privileges=keep_privileges))
    signal.signal(signal.SIGTERM, lambda *_: ag.stop())
    signal.signal(signal.SIGINT, lambda *_: ag.stop())
    try:
        rc = ag.run()
    except BpfUnavailable as e:
        raise CliError(f"agent: --source {source}: {e}") from None
    except OSError as e:
        raise CliError(f"agent: {e}") from None
    sys.exit(rc)


def _argv_without(ctx: click.Context, skip: set[str]) -> list[str]:
    """This command's options as given (defaults included), less ``skip``: the base of
    a child process's command line."""
    out = [ctx.info_name or "agent"]
    for p in ctx.command.params:
        if not isinstance(p, click.Option) or p.name in skip or p.name is None:
            continue
        value = ctx.params.get(p.name)
        if p.is_flag:
            if value:
                out.append(p.opts[0])
        elif value is not None:
            out += [p.opts[-1] if p.opts[-1].startswith("--") else p.opts[0], str(value)]
    return out


@cli.command(name="collector")
@db_option("The store: an SQLite file (one collector), or postgresql://USER@HOST:PORT/DB "
           "shared by collector replicas (password also from PG* variables and PGPASSFILE).")
@click.option("--listen", default="127.0.0.1:7070", show_default=True, metavar="HOST:PORT",
              help="gRPC address for agents.")
@click.option("--tls-cert", metavar="PEM", help="The collector's certificate; turns on TLS.")
@click.option("--tls-key", metavar="PEM", help="Its private key.")
@click.option("--tls-ca", metavar="PEM", help="Require client certificates signed by this "
              "CA (mutual TLS).")
@click.option("--token-file", metavar="PATH", help="Require the bearer token in PATH on "
              "every stream.")
@click.option("--insecure", is_flag=True, help="Allow plaintext gRPC (said in the log).")
@click.option("--http", "http", metavar="HOST:PORT", help="Serve the dashboard, its JSON API, "
              "/metrics, /healthz and /readyz (read-only).")
@click.option("--http-token-file", metavar="PATH", help="Require this token on the HTTP side "
              "(Authorization: Bearer, or ?token= for a browser); probes stay open.")
@click.option("--retain-decisions", default="7d", show_default=True, metavar="DUR",
              help="Keep per-connection decisions (and kernel counter windows) this long.")
@click.option("--retain-rollups", default="90d", show_default=True, metavar="DUR",
              help="Keep the per-minute and per-hour rollups this long.")
@click.option("--maintenance-interval", type=click.FloatRange(1, 86400), default=60.0,
              show_default=True, help="Seconds between rollup-and-prune passes.")
@click.option("--metrics-max-series", type=click.IntRange(1, 10_000_000), default=10_000,
              show_default=True, help="At most this many (service, endpoint) label sets in "
              "/metrics; more are counted under 'other'.")
@click.option("--metrics-window", default="15m", show_default=True, metavar="DUR",
              help="/metrics judges each service port over this last window: declared and "
              "observed shares, the test's p-value, the verdict (for alerting rules).")
@click.option("--metrics-services", metavar="PATTERN[,PATTERN…]", default="",
              help="Only these service ports in the judgement gauges: NS/NAME or "
              "NS/NAME:PORT, shell wildcards (istio-demo/*); default every one.")
@click.option("--metrics-max-services", type=click.IntRange(1, 1_000_000), default=1000,
              show_default=True, help="At most this many (service port, node) pairs in the "
              "judgement gauges; natlens_metrics_services_dropped_total counts the rest.")
@click.option("--max-streams", type=click.IntRange(1, 100_000), default=64, show_default=True,
              help="Agent streams served at once; more are refused (RESOURCE_EXHAUSTED).")
@click.option("--max-message-bytes", type=click.IntRange(1 << 16, 1 << 31), default=64 << 20,
              show_default=True, help="Largest gRPC message accepted.")
@click.option("--max-batch-records", type=click.IntRange(1, 10_000_000), default=100_000,
              show_default=True, help="Largest batch accepted; a bigger one is refused.")
@click.option("--max-agent-rate", type=click.FloatRange(1, 1e9), default=1_000_000,
              show_default=True, help="Records per second per agent; a faster agent is "
              "slowed down (its acknowledgements wait), not refused.")
@click.option("--kubeconfig", metavar="PATH", help="Watch Pods, Services and EndpointSlices "
              "through this kubeconfig: names at the time for every IP, and a new rules "
              "epoch when a Service's endpoints change.")
@click.option("--in-cluster", is_flag=True, help="The same, with the pod's service account.")
@click.option("--read-only", is_flag=True, help="Serve the dashboard, its API and /metrics "
              "over the store as it is (an archived one, say), with --http: no gRPC, no "
              "ingest, retention or rollups; nothing in the file changes.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="info", show_default=True)
def collector_cmd(db: str, listen: str, tls_cert: str | None, tls_key: str | None,
                  tls_ca: str | None, token_file: str | None, insecure: bool,
                  http: str | None, http_token_file: str | None, retain_decisions: str,
                  retain_rollups: str, maintenance_interval: float, metrics_max_series: int,
                  metrics_window: str, metrics_services: str, metrics_max_services: int,
                  max_streams: int, max_message_bytes: int, max_batch_records: int,
                  max_agent_rate: float, kubeconfig: str | None, in_cluster: bool,
                  read_only: bool, log_level: str) -> None:
    """Run the collector: receive agents' streams and store them (SQLite, or PostgreSQL
    shared by several collector replicas).

    It refuses plaintext unless --insecure: agents ship every connection of their node."""
    from natlens.collector.ingest.limits import Limits
    from natlens.collector.server import CollectorConfig, serve
    from natlens.collector.store.retention import Policy
    from natlens.security import TlsFiles, read_token, server_credentials

    check_hostport(listen, "--listen")
    http_addr = None
    if http is not None:
        check_hostport(http, "--http")
        h, _, p = http.rpartition(":")
        http_addr = (h, int(p))
    keep_d, keep_r = parse_duration(retain_decisions), parse_duration(retain_rollups)
    if keep_r < keep_d:
        raise click.BadParameter("rollups must be kept at least as long as decisions",
                                 param_hint="--retain-rollups")
    if read_only and http is None:
        raise click.UsageError("--read-only serves the HTTP side only: give --http HOST:PORT")
    tls = None if read_only else tls_settings(TlsFiles(tls_cert, tls_key, tls_ca), insecure,
                                              side="collector")
    token = read_token(token_file)
    if tls is not None:
        server_credentials(tls)
    if kubeconfig and in_cluster:
        raise click.UsageError("--kubeconfig and --in-cluster: give one")
    if kubeconfig and not Path(kubeconfig).is_file():
        raise CliError(f"--kubeconfig {kubeconfig}: no such file")
    _setup_logging(log_level, "natlens-collector")
    sys.exit(serve(CollectorConfig(
        db=db, listen=listen, tls=tls, token=token, http=http_addr,
        http_token=read_token(http_token_file), policy=Policy(keep_d, keep_r),
        maintenance_interval=maintenance_interval, metrics_max_series=metrics_max_series,
        metrics_window_s=parse_duration(metrics_window) / 1e9,
        metrics_services=tuple(p.strip() for p in metrics_services.split(",") if p.strip()),
        metrics_max_services=metrics_max_services,
        kubeconfig="in-cluster" if in_cluster else kubeconfig,
        limits=Limits(max_batch_records, max_agent_rate), max_streams=max_streams,
        max_message_bytes=max_message_bytes, read_only=read_only)))


# ---------------------------------------------------------------- report

VERDICTS = ("skewed", "undeclared", "insufficient-data", "consistent")


def _verdicts(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, ...]:
    """A comma list of verdicts, each checked."""
    out = tuple(v.strip() for v in (value or "").split(",") if v.strip())
    bad = [v for v in out if v not in VERDICTS]
    if bad:
        raise click.BadParameter(f"{', '.join(bad)}: not a verdict (one of "
                                 f"{', '.join(VERDICTS)})")
    return out


@cli.command()
@db_option(required=False)
@click.option("--service", metavar="NS/NAME[:PORT]", help="Only this service (port).")
@click.option("--node", help="Only decisions made on this node.")
@window_options
@click.option("--by", type=click.Choice(["hour"]), help="One judgement per hour of the "
              "window (was the balancing off that hour?).")
@click.option("--weight", type=click.Choice(["connections", "bytes"]), default="connections",
              show_default=True, help="bytes: also show each endpoint's share of the bytes "
              "and its distance from the declared shares (the test stays on connections).")
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=0.001, show_default=True, help="Family-wise significance level (Holm).")
@click.option("--plot", metavar="FILE.png", type=click.Path(dir_okay=False),
              help="Also draw declared against observed shares, and the share over time.")
@click.option("--agreement", is_flag=True, help="Nodes watched by several sources at once "
              "(agent --source all): the connections each source saw, and those one saw "
              "and another missed.")
@click.option("--agreement-window", default="2s", show_default=True, metavar="DUR",
              help="--agreement: sightings of one client address and port within this "
              "time of each other are one connection.")
@click.option("--only", metavar="VERDICT[,VERDICT…]", callback=_verdicts,
              help="Only entries with these verdicts (skewed, undeclared, insufficient-data, "
              "consistent); the summary still counts every one.")
@click.option("--fail-on", metavar="VERDICT[,VERDICT…]", callback=_verdicts,
              help="Exit 3 when an entry has one of these verdicts (cron jobs, CI).")
@click.option("-o", "--output", type=click.Choice(["table", "json", "yaml", "ndjson"]),
              default="table", show_default=True, help="ndjson: one service port entry per "
              "line (the summary and other sections are in json and yaml).")
def report(db: str | None, service: str | None, node: str | None, since: str | None,
           start: str | None, end: str | None, by: str | None, weight: str, alpha: float,
           plot: str | None, agreement: bool, agreement_window: str,
           only: tuple[str, ...], fail_on: tuple[str, ...], output: str) -> None:
    """Declared against observed, per node, service port and rules version, with the
    same service compared across nodes. The first line counts the verdicts; the table
    lists the worst first.

    Exit status: 0, 1 on an error, 3 when --fail-on matched an entry."""
    from natlens.collector.report.build import ReportQuery
    from natlens.collector.report.select import report_for
    from natlens.remote import remote_or_none

    since_ns, until_ns = window(since, start, end)
    match_ns = parse_duration(agreement_window)
    remote = remote_or_none(db)
    if remote is not None:
        if plot or agreement:
            raise click.UsageError("--plot and --agreement read the store: use --db")
        rep = remote.get("/api/report", {
            "service": service, "node": node, "since": since, "from": start, "to": end,
            "by": by, "weight": weight, "alpha": alpha})
        _print_report(rep, only, fail_on, output)
        return
    assert db is not None
    with open_store(db) as store:
        q = ReportQuery(service=service, node=node, since_ns=since_ns, until_ns=until_ns,
                        alpha=alpha, weight=weight)
        rep = report_for(store, q, by == "hour")
        if agreement:
            from natlens.collector.query.agreement import agreement as agree
            from natlens.collector.report.shape import agreement_json

            rep["agreement"] = agreement_json(agree(store, q.window, match_ns))
        if plot:
            from natlens.collector.report.plot import MAX_ROWS, plot_report

            plot_report(store, rep, q, plot)
            if len(rep["services"]) > MAX_ROWS:
                click.echo(f"natlens: {plot} shows the {MAX_ROWS} worst of "
                           f"{len(rep['services'])} entries", err=True)
    _print_report(rep, only, fail_on, output)


def _print_report(rep: dict[str, Any], only: tuple[str, ...], fail_on: tuple[str, ...],
                  output: str) -> None:
    """--only, the output format, then --fail-on's exit status."""
    from natlens.collector.report.summary import failing
    from natlens.collector.report.summary import only as only_verdicts
    from natlens.collector.report.table import print_report

    failed = failing(rep["services"], fail_on)
    if only:
        rep["only"] = list(only)
        rep["services"] = only_verdicts(rep["services"], only)
    if output == "json":
        print_json(rep)
    elif output == "yaml":
        print_yaml(rep)
    elif output == "ndjson":
        print_ndjson(rep["services"])
    else:
        print_report(rep)
    if failed:
        click.echo(f"natlens: {len(failed)} entries with verdict "
                   f"{', '.join(sorted({e['verdict'] for e in failed}))} (--fail-on)", err=True)
        sys.exit(3)


# ---------------------------------------------------------------- rules

@cli.group()
def rules() -> None:
    """The declared model: what the node's rules say each endpoint should get."""


@rules.command(name="parse")
@click.argument("file", required=False,
                type=click.Path(exists=True, allow_dash=True, dir_okay=False))
@click.option("--mode", type=click.Choice(["auto", "iptables", "nftables", "ipvs"]),
              default="auto", show_default=True,
              help="What FILE is: iptables-save (or ip6tables-save) output, an nftables "
              "listing (nft list table ip kube-proxy / nft list ruleset, text or -j), IPVS "
              "(ipvsadm -Ln / ipvsadm-save -n), or auto: detected from the text. Live, auto "
              "uses kube-proxy's nftables table if it exists, else iptables, else IPVS.")
@click.option("--netns", metavar="NAME", help="Read the live rules of this network namespace.")
@click.option("-o", "--output", type=click.Choice(["json", "yaml", "table"]), default="json",
              show_default=True)
def rules_parse(file: str | None, mode: str, netns: str | None, output: str) -> None:
    """Print the declared model of FILE (- for stdin; also read from a pipe or a
    redirected file when no FILE is given), or of the live node."""
    import gc

    # A command that ends in a second: the collector's passes over a big node's
    # hundreds of thousands of objects cost it a third of its time (bench/rules_parse.py)
    gc.disable()
    if file is None and netns is None and _piped_stdin():
        file = "-"
    if file is None:
        from natlens.agent.rules.live import read_rules

        model = read_rules(netns, mode)
    else:  # only the parser of the file's mode is loaded: a big node's dump is read at once
        from natlens.agent.rules.dump import parse_dump
        from natlens.inputs import read_text

        model = parse_dump(read_text(file), mode)
    if output == "table":
        from natlens.collector.report.table import print_model

        print_model(model.to_json())
    elif output == "yaml":
        print_yaml(model.to_json())
    else:
        print_json(model.to_json())


def _piped_stdin() -> bool:
    """Standard input is a pipe or a file (``iptables-save | natlens rules parse``), not a
    terminal or /dev/null."""
    import stat

    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (OSError, ValueError):
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISREG(mode)


# ---------------------------------------------------------------- lab

@cli.group()
def lab() -> None:
    """A small cluster in network namespaces on this machine (needs root)."""


def _load(scenario: str) -> Any:
    from natlens.lab.scenario import load_scenario

    return load_scenario(scenario)


def _one_lab(name: str, prefix: str | None) -> Any:
    from natlens.lab.state import find

    labs = find(name, prefix)
    if not labs:
        raise CliError(f"no running lab for scenario {name!r}; run natlens lab up first")
    if len(labs) > 1 and prefix is None:
        raise CliError(f"{len(labs)} labs of {name!r} are up "
                       f"({', '.join(s.prefix for s in labs)}); choose one with --prefix")
    return labs[0]


@lab.command(name="up")
@click.argument("scenario", type=click.Path(exists=True, dir_okay=False))
def lab_up(scenario: str) -> None:
    """Build SCENARIO's nodes, pods, bridges, underlay and kube-proxy rules."""
    from natlens.lab.topology import up

    st = up(_load(scenario), scenario)
    print_json({"name": st.name, "prefix": st.prefix, "nodes": st.nodes, "pods": st.pods})


@lab.command(name="down")
@click.argument("scenario", type=click.Path(dir_okay=False))
@click.option("--prefix", help="Only the lab with this prefix (default: every lab of SCENARIO).")
def lab_down(scenario: str, prefix: str | None) -> None:
    """Remove every lab of SCENARIO (its namespaces, links, rules and processes)."""
    from natlens.lab.state import find
    from natlens.lab.topology import down

    name = _load(scenario).name if Path(scenario).exists() else scenario
    for st in find(name, prefix):
        removed = down(st)
        click.echo(f"{st.prefix}: removed {len(removed)} namespaces")


@lab.command(name="traffic")
@click.argument("scenario", type=click.Path(exists=True, dir_okay=False))
@click.option("--from", "source", required=True, metavar="POD", help="Client pod.")
@click.option("--service", required=True, metavar="NS/NAME:PORT")
@click.option("--connections", type=click.IntRange(1, 1_000_000), default=100,
              show_default=True)
@click.option("--family", type=click.Choice(["IPv4", "IPv6"]),
              help="Which cluster IP of a dual-stack service to connect to (default: its "
              "first).")
@click.option("--prefix", help="Which lab, when several of SCENARIO are up.")
def lab_traffic(scenario: str, source: str, service: str, connections: int,
                family: str | None, prefix: str | None) -> None:
    """Open N real connections from POD to the service; print the ground-truth tally."""
    from natlens.lab.traffic import run_traffic

    sc = _load(scenario)
    st = _one_lab(sc.name, prefix)
    fam = int(family[-1]) if family else None
    try:
        tally = run_traffic(sc, st, source, service, connections, fam=fam)
    except ValueError as e:
        raise CliError(str(e)) from None
    print_json(tally.to_json())


@lab.command(name="exec", context_settings={"ignore_unknown_options": True})
@click.argument("scenario", type=click.Path(exists=True, dir_okay=False))
@click.argument("target", metavar="NODE_OR_POD")
@click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--prefix", help="Which lab, when several of SCENARIO are up.")
def lab_exec(scenario: str, target: str, cmd: tuple[str, ...], prefix: str | None) -> None:
    """Run CMD inside a node's or pod's network namespace (use -- before CMD)."""
    st = _one_lab(_load(scenario).name, prefix)
    try:
        ns = st.netns_of(target)
    except KeyError:
        raise CliError(f"no node or pod {target!r} in lab {st.prefix}") from None
    sys.exit(subprocess.call(["ip", "netns", "exec", ns, *cmd]))


def _interrupt_on_sigterm() -> None:
    def handler(*_: Any) -> NoReturn:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def _run_and_print(scenario: str, source: str, output: str, db: str | None = None) -> None:
    from natlens.collector.report.table import print_report
    from natlens.lab.run import run_lab

    _interrupt_on_sigterm()
    result = run_lab(_load(scenario), scenario, source, keep_db=db)
    if output == "json":
        print_json(result)
    elif output == "yaml":
        print_yaml(result)
    else:
        print_report(result["report"], result["ground_truth"])


@lab.command(name="run")
@click.argument("scenario", type=click.Path(exists=True, dir_okay=False))
@click.option("--source", type=click.Choice(["auto", "ebpf", "netlink", "pcap", "all"]),
              default="auto", show_default=True, help="The agents' source; all: eBPF, "
              "netlink and packets side by side on every node, compared per connection.")
@click.option("--db", type=click.Path(dir_okay=False), help="Keep the collector's database "
              "here (for natlens query and report afterwards); by default it is removed.")
@click.option("-o", "--output", type=click.Choice(["table", "json", "yaml"]), default="table",
              show_default=True)
def lab_run(scenario: str, source: str, db: str | None, output: str) -> None:
    """up → collector → one agent per node → traffic → report → down, in one go."""
    _run_and_print(scenario, source, output, db)


@cli.command()
@click.option("-o", "--output", type=click.Choice(["table", "json", "yaml"]), default="table",
              show_default=True)
def demo(output: str) -> None:
    """The seed document's istio-demo/bill-service investigation, end to end, on this machine."""
    if output == "table":
        click.echo("Scenario: examples/seed-bill-service.yaml — front-tomcat → "
                   "bill-service:9999 (10.1.122.241), v1 on k8s-node2, v2 on k8s-node1\n")
    _run_and_print(str(SEED_SCENARIO), "auto", output)




# ---------------------------------------------------------------- entry point

def main(argv: list[str] | None = None) -> NoReturn:
    cli.main(args=argv, prog_name="natlens")
    raise AssertionError("unreachable")  # Natlens.main always exits
