"""Charts of a rollout as SVG drawn on the server: no script, no chart service, readable with
JavaScript off. The traffic chart gets one point per finished step (the split the step left);
each analysis gets a chart of its measurements over time, one line per measured value.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from markupsafe import Markup, escape

from ...rollout.states import ANALYSIS, DONE, OP_SHIFT

STAMP = "%Y-%m-%dT%H:%M:%SZ"
W, H, LEFT, RIGHT, TOP, BOTTOM = 640, 200, 48, 12, 12, 32
COLOURS = ("#0a4fa8", "#a40e26", "#116329", "#7a4a00", "#5a32a3")
Point = tuple[float, float]
MAX_MARKS = 300  # beyond this many points a series is drawn as its line only


def _t(stamp: str) -> float:
    return datetime.strptime(stamp, STAMP).replace(tzinfo=UTC).timestamp()


def traffic_points(status: dict[str, Any]) -> list[Point]:
    """(seconds since the start, % of traffic on the new image) after each finished step."""
    start = _t(status["created_at"])
    pct_of = {s["name"]: s["pct"] for s in status["plan"] if s["op"] == OP_SHIFT}
    pct, out = 0.0, [(0.0, 0.0)]
    for j in status["journal"]:
        if j["action"] == DONE:
            pct = float(pct_of.get(j["step"], pct))
            out.append((max(0.0, _t(j["at"]) - start), pct))
    return out


def analysis_series(status: dict[str, Any]) -> dict[str, dict[str, list[Point]]]:
    """Per analysis name, per measured value: (seconds since the start, value) points."""
    start = _t(status["created_at"])
    out: dict[str, dict[str, list[Point]]] = {}
    for j in status["journal"]:
        if j["action"] != ANALYSIS:
            continue
        d = j["detail"]
        lines = out.setdefault(str(d.get("name", "analysis")), {})
        for m in d.get("measurements", []):
            for key, raw in (m.get("values") or {}).items():
                if raw is None:
                    continue
                try:
                    v = float(raw)
                except ValueError:
                    continue
                if not math.isfinite(v):  # NaN or ±Inf from a query: no place on the chart
                    continue
                lines.setdefault(key, []).append((max(0.0, m["at_ms"] / 1000 - start), v))
    return out


def _num(v: float) -> str:
    return f"{v:.4g}"


def svg(title: str, series: dict[str, list[Point]], y_max: float | None = None,
        unit: str = "", cid: str = "chart", x_unit: str = "s") -> Markup:
    """A line chart: one polyline and one circle (class ``pt``) per point of each series."""
    pts = [p for ps in series.values() for p in ps]
    x_hi = max([p[0] for p in pts] + [1.0])
    y_hi = y_max if y_max is not None else max([p[1] for p in pts] + [0.0]) or 1.0
    y_lo = min([p[1] for p in pts] + [0.0])
    span = (y_hi - y_lo) or 1.0

    def sx(x: float) -> float:
        return LEFT + (W - LEFT - RIGHT) * x / x_hi

    def sy(y: float) -> float:
        return TOP + (H - TOP - BOTTOM) * (1 - (y - y_lo) / span)

    tid = f"{cid}-title"
    parts = [f'<svg class="chart" id="{escape(cid)}" viewBox="0 0 {W} {H}" role="img" '
             f'aria-labelledby="{escape(tid)}" xmlns="http://www.w3.org/2000/svg">',
             f'<title id="{escape(tid)}">{escape(title)}</title>',
             f'<line x1="{LEFT}" y1="{H - BOTTOM}" x2="{W - RIGHT}" y2="{H - BOTTOM}" '
             'stroke="#57606a"/>',
             f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{H - BOTTOM}" stroke="#57606a"/>',
             f'<text x="{LEFT - 4}" y="{TOP + 4}" text-anchor="end" font-size="11">'
             f'{escape(_num(y_hi))}{escape(unit)}</text>',
             f'<text x="{LEFT - 4}" y="{H - BOTTOM}" text-anchor="end" font-size="11">'
             f'{escape(_num(y_lo))}{escape(unit)}</text>',
             f'<text x="{W - RIGHT}" y="{H - 8}" text-anchor="end" font-size="11">'
             f'{escape(_num(x_hi))} {escape(x_unit)}</text>',
             f'<text x="{LEFT}" y="{H - 8}" font-size="11">0 {escape(x_unit)}</text>']
    u, xu = escape(unit), escape(x_unit)
    for n, (label, ps) in enumerate(sorted(series.items())):
        colour, name = COLOURS[n % len(COLOURS)], escape(label)
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in ps)
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" '
                     f'points="{coords}"><title>{name}</title></polyline>')
        if len(ps) <= MAX_MARKS:  # a mark (and its tooltip) per point while they can be told apart
            parts += [f'<circle class="pt" cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3.5" '
                      f'fill="{colour}"><title>{name}: {_num(y)}{u} at {_num(x)} {xu}</title>'
                      '</circle>' for x, y in ps]
        parts.append(f'<text x="{LEFT + 6}" y="{TOP + 14 + 14 * n}" font-size="11" '
                     f'fill="{colour}">{escape(label)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every interpolated text is escaped above


def rollout_charts(status: dict[str, Any]) -> dict[str, Any]:
    traffic = traffic_points(status)
    analyses = analysis_series(status)
    return {
        "traffic": svg("Traffic on the new image (%) after each step",
                       {"new image": traffic}, 100.0, "%", "traffic"),
        "traffic_points": traffic,
        "analyses": [{"name": name, "svg": svg(f"Analysis {name}: measurements over time",
                                                lines, cid=f"analysis-{n}"),
                      "points": sum(len(v) for v in lines.values())}
                     for n, (name, lines) in enumerate(sorted(analyses.items()))],
    }
