"""The report as a terminal table (rich): the verdict first, the evidence beside it."""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from natlens.proto.names import endpoint_key

STYLE = {"consistent": "green", "skewed": "bold red", "insufficient-data": "yellow"}


def render(report: dict[str, Any], ground_truth: dict[str, Any] | None = None) -> Group:
    parts: list[Any] = [Text(f"window {report['window']['from']} → {report['window']['to']}"
                             f"   alpha {report['alpha']}", style="dim")]
    for s in report["services"]:
        title = (f"{s['service']}  {endpoint_key(s['vip'], s['port'])}/{s['protocol']}  "
                 f"on {s['node']}  "
                 f"rules {s['rules_version'][7:19]}")
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
        truth = (ground_truth or {}).get(s["node"], {}).get(s["service"])
        if truth is not None:
            t.add_column("client tally", justify="right")
        for e in s["endpoints"]:
            row = [e["endpoint"], e.get("pod") or "", e.get("chain") or "",
                   f"{e['declared']:.4f}", str(e["observed"]), f"{e['share']:.4f}",
                   f"{e['ci95'][0]:.4f}–{e['ci95'][1]:.4f}"]
            if truth is not None:
                row.append(str(truth.get(e["endpoint"], 0)))
            t.add_row(*row)
        for u in s["undeclared"]:
            row = [u["endpoint"], u.get("pod") or "", "(undeclared)", "—", str(u["observed"]),
                   "", ""]
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
        if s.get("sources"):
            parts.append(Text(f"  counted from {s['source']}; each source's total: " + ", ".join(
                f"{k} {v}" for k, v in s["sources"].items()), style="dim"))
        if s.get("sampled"):
            sm = s["sampled"]
            parts.append(Text(f"  decision records sampled 1 in {sm['rate']}: " + ", ".join(
                f"{e['endpoint']} {e['decisions']} × {sm['rate']} = {e['scaled']} "
                f"± {e['error']:g}" for e in sm["endpoints"]), style="dim"))
    if not report["services"]:
        parts.append(Text("no decisions in the window", style="yellow"))
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
