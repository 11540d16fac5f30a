"""Charts for the HTML report, drawn with matplotlib (Agg) and returned as ``data:`` URIs of SVG.

A data URI inside ``<img>`` keeps the HTML one self-contained file, isolates each SVG (matplotlib
reuses element ids, which collide when several SVGs are inlined in one document) and means no
chart can ever run markup from the data. Math text is off, so a ``$`` in a table name is text.
"""

from __future__ import annotations

import base64
import io
from datetime import datetime
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

PALETTE = [
    "#2563eb",
    "#f59e0b",
    "#10b981",
    "#8b5cf6",
    "#ef4444",
    "#06b6d4",
    "#84cc16",
    "#ec4899",
    "#64748b",
    "#a16207",
]
OUTCOME_COLORS = {
    "carried": "#16a34a",
    "skipped": "#f59e0b",
    "not carried": "#dc2626",
    "lost values": "#7c3aed",
}
STYLE = {
    "svg.fonttype": "none",
    "svg.hashsalt": "recovery-report",
    "text.parse_math": False,
    "font.size": 10,
    "font.family": ["DejaVu Sans", "sans-serif"],
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.edgecolor": "#cbd5e1",
    "axes.labelcolor": "#334155",
    "xtick.color": "#475569",
    "ytick.color": "#475569",
    "axes.grid": True,
    "grid.color": "#e2e8f0",
    "grid.linewidth": 0.8,
    "axes.axisbelow": True,
    "legend.frameon": False,
}


def _data_uri(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    return "data:image/svg+xml;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def activity_chart(activity: dict[str, Any]) -> str | None:
    """Stacked bars: records created or changed per time bin after the deploy, one colour a table."""
    bins = activity.get("bins") or []
    if not bins:
        return None
    minutes = int(activity.get("bin_minutes") or 5)
    starts = sorted({b["start"] for b in bins})
    tables = sorted({b["table"] for b in bins})
    index = {s: i for i, s in enumerate(starts)}
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(9, 3.2))
        xs = [datetime.fromisoformat(s) for s in starts]
        width = minutes / 1440 * 0.85
        bottom = [0] * len(starts)
        for n, table in enumerate(tables):
            heights = [0] * len(starts)
            for b in bins:
                if b["table"] == table:
                    heights[index[b["start"]]] += b["created"] + b["changed"]
            ax.bar(
                xs,
                heights,
                width=width,
                bottom=bottom,
                align="edge",
                label=table,
                color=PALETTE[n % len(PALETTE)],
                linewidth=0,
            )
            bottom = [a + h for a, h in zip(bottom, heights, strict=True)]
        ax.set_ylabel(f"records per {minutes} min")
        ax.yaxis.get_major_locator().set_params(integer=True)
        ax.grid(axis="x", visible=False)
        import matplotlib.dates as mdates

        ax.xaxis.set_major_formatter(
            mdates.DateFormatter("%H:%M" if minutes < 720 else "%m-%d %H:%M")
        )
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=9)
        return _data_uri(fig)


def outcome_chart(tables: list[dict[str, Any]]) -> str | None:
    """Horizontal stacked bars per table: records carried back / skipped / not carried."""
    rows = [t for t in tables if t["created"] + t["changed"]]
    if not rows:
        return None
    rows = sorted(rows, key=lambda t: t["created"] + t["changed"])
    names = [t["table"] for t in rows]
    carried = [t["carried"] for t in rows]
    skipped = [
        t["not_carried"] if t["not_carried_reason"].startswith("conflict") else 0 for t in rows
    ]
    missing = [t["not_carried"] - s for t, s in zip(rows, skipped, strict=True)]
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(9, 0.5 * len(rows) + 1.1))
        left = [0] * len(rows)
        for label, values in (("carried", carried), ("skipped", skipped), ("not carried", missing)):
            if any(values):
                bars = ax.barh(
                    names, values, left=left, color=OUTCOME_COLORS[label], label=label, height=0.6
                )
                ax.bar_label(
                    bars,
                    labels=[str(v) if v else "" for v in values],
                    label_type="center",
                    color="white",
                    fontsize=9,
                    fontweight="bold",
                )
            left = [a + v for a, v in zip(left, values, strict=True)]
        for y, t in enumerate(rows):
            if t["lost_values"]:
                ax.annotate(
                    f"{t['lost_values']} lost value(s)",
                    (left[y], y),
                    xytext=(6, 0),
                    textcoords="offset points",
                    va="center",
                    fontsize=9,
                    color=OUTCOME_COLORS["lost values"],
                )
        ax.set_xlabel("records created or changed after the deploy")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(axis="y", visible=False)
        ax.set_xlim(0, max(left) * 1.25 + 1)
        ax.legend(loc="lower right", ncols=3, fontsize=9)
        return _data_uri(fig)
