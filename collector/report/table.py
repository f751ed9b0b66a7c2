"""The report as a terminal table (rich): the verdict first, the evidence beside it."""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from natlens.collector.report.summary import worst_first
from natlens.proto.names import endpoint_key

STYLE = {"consistent": "green", "skewed": "bold red", "insufficient-data": "yellow",
         "undeclared": "bold magenta"}


def summary_line(counts: dict[str, int]) -> Text:
    """``3 service ports judged: 1 skewed, 0 undeclared, …`` with each verdict's colour."""
    n = counts["judged"]
    line = Text(f"{n} service port{'' if n == 1 else 's'} judged: ", style="bold")
    rest = [(v, n) for v, n in counts.items() if v != "judged"]
    for i, (v, n) in enumerate(rest):
        line.append(f"{n} {v}", style=STYLE.get(v, "") if n else "dim")
        line.append(", " if i < len(rest) - 1 else "")
    return line


def render(report: dict[str, Any], ground_truth: dict[str, Any] | None = None) -> Group:
    parts: list[Any] = []
    if "summary" in report:
        parts.append(summary_line(report["summary"]))
    parts.append(Text(f"window {report['window']['from']} → {report['window']['to']}"
                      f"   alpha {report['alpha']}", style="dim"))
    for s in worst_first(report["services"]):
        parts.extend(_entry(s, ground_truth))
    if by_bytes_any(report):
        parts.append(Text("  bytes: each endpoint's share of the bytes of closed connections; "
                          "the test stays on connections", style="dim"))
    parts.extend(_comparison(c) for c in report.get("comparisons", []))
    if not report["services"]:
        judged = report.get("summary", {}).get("judged", 0)
        msg = (f"no entry with verdict {', '.join(report['only'])} ({judged} judged)"
               if report.get("only") and judged else
               report.get("empty") or "no decisions in the window")
        parts.append(Text(msg, style="yellow"))
    for u in report.get("unmatched", []):
        parts.append(Text(f"unmatched: {endpoint_key(u['vip'], u['port'])}/{u['protocol']} "
                          f"on {u['node']} "
                          f"matches no declared service port: {u['observed']}", style="red"))
    for lo in report.get("lost", []):
        parts.append(Text(f"lost: {lo['count']} {lo['source']} events on {lo['node']} "
                          f"({lo['reason']}), {lo['recovered']} decisions recovered",
                          style="bold yellow"))
    parts.extend(_agreement(a) for a in report.get("agreement", []))
    return Group(*parts)


def _entry(s: dict[str, Any], ground_truth: dict[str, Any] | None) -> list[Any]:
    """One service port: its title, the endpoints' table, the test and the verdict."""
    parts: list[Any] = []
    title = (f"{s['service']}  {endpoint_key(s['vip'], s['port'])}/{s['protocol']}  "
             f"on {s['node']}  "
             f"rules {s['rules_version'][7:19]}")
    if s.get("hour"):
        title = f"hour {s['hour']}  " + title
    if s.get("chain", "").startswith("service-"):  # kube-proxy's nftables mode
        title += f"\n  services → service-ips → {s['chain']} → endpoint-… → dnat"
    elif s.get("chain"):
        title += f"\n  KUBE-SERVICES → {s['chain']} → KUBE-SEP-… → DNAT"
    elif s.get("scheduler", "random") != "random":
        title += f"\n  IPVS virtual service, scheduler {s['scheduler']}"
    t = Table(title=title, title_justify="left", expand=False)
    t.add_column("endpoint")
    t.add_column("pod")
    t.add_column("chain", style="dim")
    t.add_column("declared", justify="right")
    t.add_column("observed", justify="right")
    t.add_column("share", justify="right")
    t.add_column("95% CI", justify="right")
    by_bytes = "tvd_bytes" in s
    if by_bytes:
        t.add_column("bytes", justify="right")
        t.add_column("byte share", justify="right")
    # ClientIP affinity: "observed" is first connections per client (what the test
    # judges); every connection beside it
    first = s.get("connections") if s.get("affinity") == "ClientIP" else None
    if first is not None:
        t.add_column("all connections", justify="right")
    truth = (ground_truth or {}).get(s["node"], {}).get(s["service"])
    if truth is not None:
        t.add_column("client tally", justify="right")
    for e in s["endpoints"]:
        row = [e["endpoint"], e.get("pod") or "", e.get("chain") or "",
               f"{e['declared']:.4f}", str(e["observed"]), f"{e['share']:.4f}",
               f"{e['ci95'][0]:.4f}–{e['ci95'][1]:.4f}"]
        if by_bytes:
            row += [str(e.get("bytes", 0)), f"{e.get('byte_share', 0.0):.4f}"]
        if first is not None:
            row.append(str(first.get(e["endpoint"], 0)))
        if truth is not None:
            row.append(str(truth.get(e["endpoint"], 0)))
        t.add_row(*row)
    for u in s["undeclared"]:
        row = [u["endpoint"], u.get("pod") or "", "(undeclared)", "—", str(u["observed"]),
               "", ""]
        if by_bytes:
            row += ["", ""]
        if first is not None:
            row.append(str(first.get(u["endpoint"], 0)))
        if truth is not None:
            row.append(str(truth.get(u["endpoint"], 0)))
        t.add_row(*row, style="red")
    parts.append(t)
    test = s["test"]
    line = Text(f"  total {s['total']}  ")
    if test and test["p_value"] is None:  # IPVS rr/wrr: a bound, not a p-value
        line.append(f"{s['scheduler']} rotation: worst deviation {test['statistic']:.2f} "
                    f"of its bound (≤ 1 is that rotation)  ")
    elif test:
        line.append(f"{test['method']} stat {test['statistic']:.3f} dof {test['dof']} "
                    f"p {test['p_value']:.3g} (Holm {test['p_value_holm']:.3g})  ")
    line.append(s["verdict"], style=STYLE.get(s["verdict"], ""))
    for r in s.get("reasons", []):
        line.append(f"  — {r}", style="dim")
    parts.append(line)
    if s.get("bytes_unknown"):
        parts.append(Text(f"  bytes: {s['bytes_unknown']}", style="yellow"))
    if s.get("sources"):
        parts.append(Text(f"  counted from {s['source']}; each source's total: " + ", ".join(
            f"{k} {v}" for k, v in s["sources"].items()), style="dim"))
    if s.get("sampled"):
        sm = s["sampled"]
        parts.append(Text(f"  decision records sampled 1 in {sm['rate']}: " + ", ".join(
            f"{e['endpoint']} {e['decisions']} × {sm['rate']} = {e['scaled']} "
            f"± {e['error']:g}" for e in sm["endpoints"]), style="dim"))
    return parts


def by_bytes_any(report: dict[str, Any]) -> bool:
    return any("tvd_bytes" in s for s in report["services"])


def _comparison(c: dict[str, Any]) -> Group:
    """One service port seen from several nodes: connections per endpoint and node, and
    whether the nodes split them alike."""
    nodes = list(c["nodes"])
    head = Text(f"{c['service']}  {endpoint_key(c['vip'], c['port'])}/{c['protocol']}  "
                "node against node", style="italic")
    t = Table(expand=False)
    t.add_column("endpoint")
    for n in nodes:
        t.add_column(n, justify="right")
    for ep in sorted({ep for counts in c["nodes"].values() for ep in counts}):
        t.add_row(ep, *(str(c["nodes"][n].get(ep, 0)) for n in nodes))
    test = c.get("test")
    line = Text("  ")
    if test:
        line.append(f"{test['method']} stat {test['statistic']:.3f} dof {test['dof']} "
                    f"p {test['p_value']:.3g}  ")
    line.append(c["verdict"], style="green" if c["verdict"] == "same" else "bold red")
    return Group(head, t, line)


def _agreement(a: dict[str, Any]) -> Group:
    """Per node watched by several sources: seen by all, missed by each, examples."""
    missed = ", ".join(f"{s} missed {n}" for s, n in a["missed"].items())
    ok = a["seen_by_all"] == a["connections"] and not a["disagreed"]
    lines: list[Any] = [Text(
        f"sources on {a['node']}: {a['connections']} connections, {a['seen_by_all']} seen "
        f"by all of {', '.join(a['sources'])}; {missed}; {a['disagreed']} with different "
        "endpoints", style="green" if ok else "bold yellow")]
    for x in a["examples"]:
        lines.append(Text(f"  {x['time']} {x['protocol']} {x['client']} → {x['vip']}: seen by "
                          + ", ".join(f"{k} ({v})" for k, v in x["seen_by"].items())
                          + (f", missed by {', '.join(x['missed_by'])}"
                             if x["missed_by"] else ""), style="dim"))
    return Group(*lines)


def console() -> Console:
    """The terminal's width on a terminal; wide enough not to cut columns in a pipe."""
    import sys

    return Console() if sys.stdout.isatty() else Console(width=220)


def print_report(report: dict[str, Any], ground_truth: dict[str, Any] | None = None) -> None:
    console().print(render(report, ground_truth))


def print_model(model: dict[str, Any]) -> None:
    """``rules parse -o table``: one row per endpoint of each declared service port."""
    t = Table(title=f"{model['mode']} rules {model['hash'][7:19]}: "
                    f"{len(model['services'])} service ports", title_justify="left")
    for c in ("service", "kind", "address", "affinity", "endpoint", "probability", "chain"):
        t.add_column(c, justify="right" if c == "probability" else "left")
    for sp in model["services"]:
        addr = f"{endpoint_key(sp['vip'], sp['port'])}/{sp['protocol']}"
        if not sp["endpoints"]:
            t.add_row(sp["service"], sp["kind"], addr, sp["affinity"], "(no endpoints)", "",
                      sp.get("chain") or "")
        for i, e in enumerate(sp["endpoints"]):
            first = i == 0
            t.add_row(sp["service"] if first else "", sp["kind"] if first else "",
                      addr if first else "", sp["affinity"] if first else "", e["endpoint"],
                      f"{e['probability']:.4f}", e.get("chain") or "")
    console().print(t)
