"""``natlens report --plot FILE.png``: declared against observed shares at a glance.

One row per service port (node, rules version): on the left each endpoint's declared
share as an outline and its observed share as a bar with the 95 % interval; on the
right each endpoint's share of the connections per minute over the window.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import matplotlib
import sqlite_utils

from natlens.collector.report.build import ReportQuery
from natlens.collector.report.sources import OLDER

MINUTE_NS = 60 * 10**9
MAX_ROWS = 12


def shares_over_time(db: sqlite_utils.Database, entry: dict[str, Any], q: ReportQuery,
                     ) -> dict[str, list[tuple[float, float]]]:
    """Endpoint → [(minute as epoch seconds, share of that minute's connections)]."""
    args: list[Any] = [entry["node"], entry["rules_version"], entry["protocol"], entry["vip"],
                       entry["port"]]
    extra = ""
    if q.since_ns is not None:
        extra += " AND t >= ?"
        args.append(q.since_ns)
    if q.until_ns is not None:
        extra += " AND t <= ?"
        args.append(q.until_ns)
    rows = db.execute(
        "SELECT (t / ?) * ? AS m, endpoint, SUM(n) FROM ("
        "SELECT time_ns AS t, endpoint, sample_rate AS n, node, rules_hash AS h, protocol, "
        "vip, vip_port, source FROM decisions WHERE event IN ('new', 'recovered') AND NOT "
        "(source = 'ebpf' AND event = 'new') UNION ALL SELECT window_end_ns, endpoint, "
        "connections, node, rules_hash, protocol, vip, vip_port, source FROM counters "
        "UNION ALL SELECT bucket_ns, endpoint, connections, node, rules_hash, protocol, vip, "
        "vip_port, source FROM rollups WHERE granularity = 'minute' AND bucket_ns < "
        "COALESCE((SELECT value_ns FROM retention WHERE name = 'pruned_before_ns'), 0)) "
        "WHERE node = ? AND h = ? AND protocol = ? AND vip = ? AND vip_port = ? AND "
        f"source IN (?, ?){extra} GROUP BY m, endpoint ORDER BY m",
        [MINUTE_NS, MINUTE_NS, *args[:5], entry.get("source", OLDER), OLDER,
         *args[5:]]).fetchall()
    per_minute: dict[int, dict[str, int]] = defaultdict(dict)
    for m, ep, n in rows:
        per_minute[m][ep] = int(n)
    out: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for m, by_ep in sorted(per_minute.items()):
        total = sum(by_ep.values())
        for ep in {e["endpoint"] for e in entry["endpoints"]} | set(by_ep):
            out[ep].append((m / 1e9, by_ep.get(ep, 0) / total))
    return out


def plot_report(db: sqlite_utils.Database, report: dict[str, Any], q: ReportQuery,
                path: str) -> None:
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    entries = report["services"][:MAX_ROWS]
    rows = max(len(entries), 1)
    fig, axes = plt.subplots(rows, 2, figsize=(13, 3.2 * rows), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 1.4]})
    if not entries:
        axes[0][0].text(0.5, 0.5, "no decisions in the window", ha="center")
    for (left, right), e in zip(axes, entries, strict=False):
        names = [x["endpoint"] for x in e["endpoints"]] + [u["endpoint"] for u in e["undeclared"]]
        declared = [x["declared"] for x in e["endpoints"]] + [0.0] * len(e["undeclared"])
        total = e["total"] or 1
        observed = [x["observed"] / total for x in e["endpoints"]] + [
            u["observed"] / total for u in e["undeclared"]]
        lo = [x["ci95"][0] for x in e["endpoints"]] + observed[len(e["endpoints"]):]
        hi = [x["ci95"][1] for x in e["endpoints"]] + observed[len(e["endpoints"]):]
        ypos = range(len(names))
        colour = {"consistent": "tab:green", "skewed": "tab:red"}.get(e["verdict"], "tab:gray")
        left.barh(ypos, observed, color=colour, alpha=0.6, label="observed (95% CI)",
                  xerr=[[o - a for o, a in zip(observed, lo, strict=True)],
                        [b - o for o, b in zip(observed, hi, strict=True)]])
        left.barh(ypos, declared, fill=False, edgecolor="black", linewidth=1.5,
                  label="declared")
        left.set_yticks(list(ypos), names, fontsize=8)
        left.set_xlim(0, 1)
        left.set_xlabel("share of connections")
        hour = f" {e['hour']}" if "hour" in e else ""
        left.set_title(f"{e['service']} on {e['node']}{hour}: {e['verdict']} "
                       f"(n={e['total']}, TVD {e['tvd'] or 0:.3f})", fontsize=9, loc="left")
        left.legend(fontsize=7, loc="lower right")
        series_by_ep = shares_over_time(db, e, q)
        times = [x for series in series_by_ep.values() for x, _ in series]
        for ep, series in sorted(series_by_ep.items()):
            if series:
                xs, ys = zip(*series, strict=True)
                right.plot([datetime.fromtimestamp(x, UTC) for x in xs], ys, marker=".",
                           label=ep)
        if times:  # at least a few minutes wide, so one minute of data is not a dot in years
            pad = max(120.0, (max(times) - min(times)) * 0.05)
            right.set_xlim(datetime.fromtimestamp(min(times) - pad, UTC),
                           datetime.fromtimestamp(max(times) + pad, UTC))
        locator = mdates.AutoDateLocator()  # type: ignore[no-untyped-call]
        right.xaxis.set_major_locator(locator)
        right.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]
        for d in declared:
            right.axhline(d, color="black", linewidth=0.5, linestyle=":")
        right.set_ylim(0, 1)
        right.set_ylabel("share per minute")
        right.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
