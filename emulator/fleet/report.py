"""The fleet report: a self-contained HTML page (inline SVG plots, no network) from the JSON figures.

matplotlib draws the plots (a well-kept library; nothing here draws by hand). The page embeds every
plot as inline SVG and every style inline, so it opens from a file with no network.
"""

from __future__ import annotations

import html
import io
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from sidekick_testbed.emulator.fleet.durations import format_duration  # noqa: E402

plt.rcParams["svg.hashsalt"] = "sidekick"  # stable element ids: same figures, same SVG
plt.rcParams["svg.fonttype"] = "none"

PLOTS = ("at-risk", "age", "out-of-date", "lost", "latency", "bytes")
COLORS = ("#1f6feb", "#d1242f")

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:72rem;
color:#1f2328;padding:0 1rem}h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #d0d7de}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #d0d7de;padding:.25rem .6rem;text-align:right}
th{background:#f6f8fa}td:first-child,th:first-child{text-align:left}.verdict{padding:.8rem 1rem;border-radius:6px;
font-size:1.05rem}.ok{background:#dafbe1}.bad{background:#ffebe9}figure{margin:1rem 0}figcaption{color:#59636e}
h3{font-size:1rem;margin:1rem 0 .3rem}svg{max-width:100%;height:auto}
"""


def _svg(fig: Any) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None}, bbox_inches="tight")
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def _shade_outages(ax: Any, report: dict[str, Any]) -> None:
    timeline = report["timeline"]
    start = None
    for point in timeline:
        hours = point["t"] / 3600
        if not point["server_up"] and start is None:
            start = hours
        elif point["server_up"] and start is not None:
            ax.axvspan(start, hours, color="#afb8c1", alpha=0.35, lw=0)
            start = None
    if start is not None and timeline:
        ax.axvspan(start, timeline[-1]["t"] / 3600, color="#afb8c1", alpha=0.35, lw=0)
    for event in report.get("server_events", []):
        ax.axvline(event["at"] / 3600, color="#6e7781", lw=0.8, ls=":")


def _timeline_plot(reports: list[tuple[str, dict[str, Any]]], key: str, ylabel: str, scale: float = 1.0) -> str:
    fig, ax = plt.subplots(figsize=(7, 3))
    for (label, report), color in zip(reports, COLORS, strict=False):
        xs = [p["t"] / 3600 for p in report["timeline"]]
        ys = [p[key] / scale for p in report["timeline"]]
        ax.step(xs, ys, where="post", color=color, label=label, lw=1.6)
    _shade_outages(ax, reports[0][1])
    ax.set_ylim(bottom=0, top=max(ax.get_ylim()[1], 1))
    if scale == 1.0:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("simulated time (hours); grey: server unavailable; dotted: server event")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(reports) > 1:
        ax.legend()
    return _svg(fig)


def _latency_plot(reports: list[tuple[str, dict[str, Any]]]) -> str:
    fig, ax = plt.subplots(figsize=(7, 3))
    width = 0.8 / len(reports)
    nets = sorted({n for _, r in reports for n in r["sync_by_network"]})
    for i, ((label, report), color) in enumerate(zip(reports, COLORS, strict=False)):
        for j, net in enumerate(nets):
            figures = report["sync_by_network"].get(net)
            if not figures or not figures["p50"]:
                continue
            x = j + (i - (len(reports) - 1) / 2) * width
            ax.bar(x, figures["p50"], width * 0.9, color=color, alpha=0.85,
                   label=f"{label}: p50 bar, p95 dot, p99 tick" if j == 0 else None)
            ax.plot([x, x], [figures["p50"], max(figures["p99"], figures["p50"])], color="#1f2328", lw=1)
            ax.plot([x], [figures["p95"]], "o", color="#1f2328", ms=3)
            ax.plot([x], [figures["p99"]], "_", color="#1f2328", ms=10, mew=1.5)
    ax.set_xticks(range(len(nets)), nets)
    ax.set_yscale("log")
    ax.set_ylabel("seconds per sync (log scale)")
    ax.grid(alpha=0.3, axis="y", which="both")
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False)
    return _svg(fig)


def _bytes_plot(reports: list[tuple[str, dict[str, Any]]]) -> str:
    fig, ax = plt.subplots(figsize=(7, 3))
    width = 0.8 / len(reports)
    nets = sorted({n for _, r in reports for n in r["sync_by_network"]})
    for i, ((label, report), color) in enumerate(zip(reports, COLORS, strict=False)):
        values = [report["sync_by_network"].get(n, {}).get("bytes_per_device_per_day", 0) / 1024 for n in nets]
        ax.bar([j + (i - (len(reports) - 1) / 2) * width for j in range(len(nets))], values, width * 0.9,
               color=color, label=label)
    ax.set_xticks(range(len(nets)), nets)
    ax.set_ylabel("KiB per handset per day")
    ax.grid(alpha=0.3, axis="y")
    if len(reports) > 1:
        ax.legend()
    return _svg(fig)


def _table(rows: list[tuple[str, list[Any]]], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + f"<td>{html.escape(name)}</td>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in values)
        + "</tr>"
        for name, values in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".") if value % 1 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


CONFIG_ORDER = ("handset", "server events", "devices", "accounts", "duration", "workload", "network", "seed",
                "flash per handset")

TOTAL_LABELS = {
    "devices": "handsets",
    "user_changes": "user changes",
    "syncs": "sync attempts",
    "syncs_failed": "failed syncs",
    "retries": "retries",
    "conflicts": "conflicts",
    "reboots": "handset reboots",
    "regressions_detected": "server regressions detected by handsets",
    "user_versions": "record versions users wrote",
    "bytes_per_device_per_day": "on the air per handset per day",
    "frames_per_sync_p50": "frames per sync (p50)",
    "frames_per_sync_p95": "frames per sync (p95)",
    "records_at_risk_max": "records at risk, peak",
    "oldest_at_risk_max_s": "oldest record at risk, peak age",
    "records_at_risk_end": "records at risk at the end, after the heal",
    "devices_out_of_date_max": "handsets out of date, peak",
    "data_loss_records": "records lost",
    "data_loss_users": "users who lost data",
    "store_full": "writes refused, handset flash full",
    "handset_errors": "unexpected handset errors (bugs)",
}


def _total(key: str, value: Any) -> Any:
    if key == "oldest_at_risk_max_s" and isinstance(value, int | float):
        return format_duration(value) if value else "0s"
    if key == "bytes_per_device_per_day" and isinstance(value, int | float):
        return f"{value / 1024:,.1f} KiB"
    return value


def _loss_tables(reports: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """Who lost what: records lost by kind, and the users who lost most."""
    parts: list[str] = []
    for label, report in reports:
        losses = report.get("losses", [])
        if not losses:
            continue
        kinds: dict[str, int] = {}
        users: dict[str, int] = {}
        for loss in losses:
            kinds[loss["kind"]] = kinds.get(loss["kind"], 0) + 1
            users[loss["account"]] = users.get(loss["account"], 0) + 1
        parts.append(f"<h2>Data lost: {html.escape(label)}</h2>")
        parts.append(_table([(kind, [count]) for kind, count in sorted(kinds.items())], ["kind", "records lost"]))
        worst = sorted(users.items(), key=lambda item: (-item[1], item[0]))[:10]
        parts.append(_table([(user, [count]) for user, count in worst], ["user (the 10 who lost most)", "records lost"]))
        first = min(loss["created"] for loss in losses if "created" in loss) if "created" in losses[0] else None
        if first is not None:
            parts.append(f"<p>The lost versions were written from {format_duration(first)} into the run on; "
                         "each was on its user's handset only, and the handset discarded it.</p>")
    return parts


def _summary(label: str, report: dict[str, Any]) -> str:
    """A few sentences a person reads first."""
    totals = report["totals"]
    config = report.get("config", {})
    nets = ", ".join(f"{net} {f['devices']}" for net, f in report["sync_by_network"].items())
    text = (f"{label}: {totals['devices']:,} handsets ({nets}) for {config.get('duration', '?')} of simulated time "
            f"with the {config.get('workload', '?')} workload wrote {totals.get('user_versions', 0):,} record "
            f"versions and ran {totals['syncs']:,} syncs ({totals['syncs_failed']:,} failed after retries). "
            f"At the worst moment {totals['records_at_risk_max']:,} records were at risk (on a handset only), "
            f"the oldest for {format_duration(totals['oldest_at_risk_max_s']) if totals['oldest_at_risk_max_s'] else '0s'}; "
            f"up to {totals['devices_out_of_date_max']:,} handsets were out of date. "
            f"Handsets detected {totals['regressions_detected']:,} server regressions and re-pushed their data.")
    return f"<p>{html.escape(text)}</p>"


def _verdict(label: str, report: dict[str, Any]) -> str:
    totals = report["totals"]
    lost = totals["data_loss_records"]
    if lost == 0:
        text = (f"{label}: no user lost any data ({totals.get('user_versions', totals['user_changes']):,} "
                f"record versions, {totals['syncs']:,} syncs).")
        return f'<p class="verdict ok">{html.escape(text)}</p>'
    text = (f"{label}: {lost:,} records lost by {totals['data_loss_users']:,} users "
            f"on {totals['data_loss_devices']:,} handsets.")
    return f'<p class="verdict bad">{html.escape(text)}</p>'


def render_html(reports: list[tuple[str, dict[str, Any]]]) -> str:
    """One page for one run, or two runs side by side (``--compare``)."""
    labels = [label for label, _ in reports]
    first = reports[0][1]
    config = first.get("config", {})
    title = "Fleet simulation" + (": " + " vs ".join(labels) if len(reports) > 1 else "")
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>",
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    parts += [_verdict(label, report) for label, report in reports]
    parts += [_summary(label, report) for label, report in reports]
    parts.append("<h2>Run</h2>")
    keys = [k for k in CONFIG_ORDER if k in config] + [k for k in config if k not in CONFIG_ORDER]
    config_rows = [(key, [r.get("config", {}).get(key, "") for _, r in reports]) for key in keys]
    parts.append(_table(config_rows, ["setting", *labels]))
    events = first.get("server_events", [])
    if events:
        parts.append("<h2>Server events</h2><ul>")
        parts += [f"<li>{html.escape(e['description'])}</li>" for e in events]
        parts.append("</ul>")
    parts.append("<h2>Totals</h2>")
    parts.append(_table([(TOTAL_LABELS[k], [_total(k, r["totals"].get(k, "")) for _, r in reports])
                         for k in TOTAL_LABELS], ["figure", *labels]))
    parts.append("<h2>Sync by network</h2>")
    for label, report in reports:
        rows = [(net, [f["devices"], f["syncs"], f["failed"], f["p50"], f["p95"], f["p99"],
                       round(f["bytes_per_device_per_day"] / 1024, 1)])
                for net, f in report["sync_by_network"].items()]
        parts.append(f"<h3>{html.escape(label)}</h3>" + _table(
            rows, ["network", "handsets", "syncs", "failed", "p50 s", "p95 s", "p99 s", "KiB/handset/day"]))
    parts += _loss_tables(reports)
    plots = [
        ("at-risk", "Records at risk (created on a handset, not yet durable on the server)",
         _timeline_plot(reports, "at_risk", "records at risk")),
        ("out-of-date", "Handsets out of date (the server holds changes they have not pulled)",
         _timeline_plot(reports, "devices_out_of_date", "handsets")),
        ("age", "Age of the oldest record at risk",
         _timeline_plot(reports, "oldest_at_risk_s", "hours", scale=3600.0)),
        ("lost", "Records lost so far (gone from the handset and the server)",
         _timeline_plot(reports, "lost", "records lost")),
        ("latency", "Sync latency by network, retries included (successful syncs)", _latency_plot(reports)),
        ("bytes", "Bytes on the air per handset per day, both ways", _bytes_plot(reports)),
    ]
    parts.append("<h2>Plots</h2>")
    for plot_id, caption, svg in plots:
        parts.append(f'<figure id="plot-{plot_id}" class="plot">{svg}<figcaption>{html.escape(caption)}'
                     "</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(directory: Path, reports: list[tuple[str, dict[str, Any]]], name: str = "report.html") -> Path:
    """Write the HTML page (and the JSON of each run) into ``directory``; return the page's path."""
    directory.mkdir(parents=True, exist_ok=True)
    page = directory / name
    page.write_text(render_html(reports), encoding="utf-8")
    if len(reports) == 1:
        (directory / "report.json").write_text(json.dumps(reports[0][1], indent=1, sort_keys=True) + "\n")
    return page
