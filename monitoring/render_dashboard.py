"""Render monitoring/grafana/dashboard.json as a PNG without Grafana: each panel's PromQL
is asked of a Prometheus (``/api/v1/query_range``) and plotted with matplotlib, laid out
as the dashboard's gridPos lays it out, with its titles, units and legends.

    python monitoring/render_dashboard.py --prometheus http://127.0.0.1:9090 \
        --minutes 15 --out docs/img/dashboard.png

matplotlib is not a dependency of mallard: ``pip install matplotlib`` where you run this.
docs/img/dashboard.png was made this way from a Prometheus scraping a local stack under
load (docs/monitoring.md says how).
"""
from __future__ import annotations

import argparse
import json
import re
import time
import urllib.parse
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

DASHBOARD = Path(__file__).resolve().parent / "grafana" / "dashboard.json"
GRID_COLUMNS = 24  # Grafana's grid width
GRID_ROW_INCHES = 0.42


def query_range(prometheus: str, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{prometheus.rstrip('/')}/api/v1/query_range?{params}", timeout=30) as resp:
        body = json.loads(resp.read())
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body}")
    return body["data"]["result"]


def legend(fmt: str, labels: dict[str, str]) -> str:
    """Grafana's legendFormat: ``{{label}}`` replaced by the series' label value."""
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt) if fmt else str(labels)


def unit_formatter(unit: str):
    from matplotlib.ticker import FuncFormatter

    def human(value: float, base: float, suffixes: list[str], suffix: str = "") -> str:
        for s in suffixes:
            if abs(value) < base or s == suffixes[-1]:
                return f"{value:.3g}{s}{suffix}"
            value /= base
        return f"{value:.3g}"

    if unit == "bytes":
        return FuncFormatter(lambda v, _: human(v, 1024, ["", "Ki", "Mi", "Gi", "Ti"], "B"))
    if unit == "s":
        return FuncFormatter(lambda v, _: f"{v * 1000:.3g}ms" if 0 < abs(v) < 1 else f"{v:.3g}s")
    if unit == "ops":
        return FuncFormatter(lambda v, _: human(v, 1000, ["", "k", "M"], "/s"))
    return FuncFormatter(lambda v, _: human(v, 1000, ["", "k", "M", "G"]))


def render(prometheus: str, start: float, end: float, out: Path, dashboard: Path = DASHBOARD) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    doc = json.loads(dashboard.read_text())
    panels = doc["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    step = max(1.0, (end - start) / 300)
    fig = plt.figure(figsize=(16, rows * GRID_ROW_INCHES + 1.0), facecolor="#111217")
    fig.suptitle(f"{doc['title']}  ({datetime.fromtimestamp(start):%Y-%m-%d %H:%M} to "
                 f"{datetime.fromtimestamp(end):%H:%M}, from Prometheus)", color="#ccccdc", fontsize=13)
    spec = fig.add_gridspec(rows, GRID_COLUMNS, left=0.05, right=0.99, top=1 - 1.1 / (rows * GRID_ROW_INCHES + 1),
                            bottom=0.03, hspace=1.2, wspace=2.5)
    for panel in panels:
        g = panel["gridPos"]
        ax = fig.add_subplot(spec[g["y"]:g["y"] + g["h"] - 1, g["x"]:g["x"] + g["w"]])
        ax.set_facecolor("#181b1f")
        ax.set_title(panel["title"], color="#ccccdc", fontsize=10, loc="left")
        ax.tick_params(colors="#9fa7b3", labelsize=7)
        for spine in ax.spines.values():
            spine.set_color("#2c3235")
        ax.grid(color="#2c3235", linewidth=0.5)
        drawn = 0
        for target in panel["targets"]:
            for series in query_range(prometheus, target["expr"], start, end, step):
                xs, ys, previous = [], [], None
                for t, v in series["values"]:
                    t, v = float(t), float(v)
                    if previous is not None and t - previous > 1.5 * step:
                        xs.append(datetime.fromtimestamp(previous + step))  # no sample: a gap, as Grafana draws it
                        ys.append(float("nan"))
                    xs.append(datetime.fromtimestamp(t))
                    ys.append(v if abs(v) != float("inf") else float("nan"))
                    previous = t
                if not xs:
                    continue
                ax.plot(xs, ys, linewidth=1.4, label=legend(target.get("legendFormat", ""), series["metric"]))
                drawn += 1
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
        ax.yaxis.set_major_formatter(unit_formatter(unit))
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
        ax.set_xlim(datetime.fromtimestamp(start), datetime.fromtimestamp(end))
        ax.margins(y=0.1)
        ax.set_ylim(bottom=0)
        if drawn:
            ax.legend(fontsize=7, loc="upper left", facecolor="#181b1f", edgecolor="#2c3235", labelcolor="#ccccdc",
                      ncol=2)
        else:
            ax.text(0.5, 0.5, "No data", transform=ax.transAxes, ha="center", va="center", color="#9fa7b3")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90, facecolor=fig.get_facecolor())
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090", help="Prometheus' base URL")
    parser.add_argument("--minutes", type=float, default=15, help="the last N minutes (default 15)")
    parser.add_argument("--end", type=float, default=None, help="end of the range, Unix time (default: now)")
    parser.add_argument("--dashboard", type=Path, default=DASHBOARD)
    parser.add_argument("--out", type=Path, default=Path("dashboard.png"))
    args = parser.parse_args()
    end = args.end or time.time()
    render(args.prometheus, end - args.minutes * 60, end, args.out, args.dashboard)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
