"""``natlens report --plot FILE.png``: declared against observed shares at a glance.

One row per service port (node, rules version), worst first: on the left each
endpoint's declared share as an outline and its observed share as a bar with the 95 %
interval; on the right each endpoint's share over time, in bins of at least
``MIN_BIN`` connections (a minute of three connections is noise, not a share), with a
break where no connection came for ``GAP_S``; times in UTC. Past ``MAX_ROWS`` entries
the figure says how many it left out.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import matplotlib

from natlens.collector.analyze.sources import OLDER
from natlens.collector.report.build import ReportQuery
from natlens.collector.report.summary import worst_first
from natlens.collector.report.timeline import MIN_BIN, bins
from natlens.collector.store.api import PortKey, Store, Window

MAX_ROWS = 12
def shares_over_time(store: Store, entry: dict[str, Any], q: ReportQuery,
                     ) -> dict[str, list[tuple[float, float]]]:
    """Endpoint → [(bin middle as epoch seconds, share of that bin's connections)], with
    (time, NaN) where the line breaks."""
    key = PortKey(entry["node"], entry["rules_version"], entry["protocol"], entry["vip"],
                  entry["port"])
    per_minute: dict[int, dict[str, int]] = defaultdict(dict)
    for m, ep, n in store.minute_counts(Window(None, q.since_ns, q.until_ns), key,
                                        (entry.get("source", OLDER), OLDER)):
        per_minute[m][ep] = n
    eps = {e["endpoint"] for e in entry["endpoints"]} | {
        ep for by_ep in per_minute.values() for ep in by_ep}
    out: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for b in bins([(m / 1e9, by_ep) for m, by_ep in sorted(per_minute.items())]):
        total = sum(b.counts.values())
        for ep in eps:
            if b.after_gap:
                out[ep].append((b.start_s, float("nan")))
            out[ep].append(((b.start_s + b.end_s) / 2, b.counts.get(ep, 0) / total))
    return out


def plot_report(store: Store, report: dict[str, Any], q: ReportQuery,
                path: str) -> None:
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    ordered = worst_first(report["services"])
    entries, left_out = ordered[:MAX_ROWS], len(ordered) - MAX_ROWS
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
        series_by_ep = shares_over_time(store, e, q)
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
        locator = mdates.AutoDateLocator(tz=UTC)  # type: ignore[no-untyped-call]
        right.xaxis.set_major_locator(locator)
        right.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=UTC))  # type: ignore[no-untyped-call]
        for d in declared:
            right.axhline(d, color="black", linewidth=0.5, linestyle=":")
        right.set_ylim(0, 1)
        right.set_ylabel(f"share (bins of ≥ {MIN_BIN} connections)")
        right.set_xlabel("time (UTC)")
        right.legend(fontsize=7, loc="upper right")
    if left_out > 0:
        fig.suptitle(f"the {MAX_ROWS} worst of {len(ordered)} entries; {left_out} more not "
                     "drawn (narrow with --service, --node or --only)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
