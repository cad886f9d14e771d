"""The rollout charts drawn on the server: points from a rollout's status, and SVG that escapes
what it is given."""

from __future__ import annotations

import re
from typing import Any

from imm.daemon.dashboard.charts import MAX_MARKS, analysis_series, rollout_charts, svg, traffic_points


def status() -> dict[str, Any]:
    plan = [{"name": "0-launch", "op": "launch"}, {"name": "1-shift", "op": "shift", "pct": 25},
            {"name": "2-pause", "op": "pause"}, {"name": "3-shift", "op": "shift", "pct": 100}]
    t0 = 1767225600  # 2026-01-01T00:00:00Z

    def at(s: int) -> str:
        return f"2026-01-01T00:00:{s:02d}Z"

    journal = [{"step": "0-launch", "action": "done", "at": at(2), "detail": {}},
               {"step": "1-shift", "action": "done", "at": at(3), "detail": {}},
               {"step": "2-pause", "action": "analysis", "at": at(5), "detail": {
                   "name": "errors<script>", "measurements": [
                       {"at_ms": (t0 + 4) * 1000, "values": {"ratio": "0.01", "p99": None}},
                       {"at_ms": (t0 + 5) * 1000, "values": {"ratio": "0.02", "p99": "nan?"}},
                       {"at_ms": (t0 + 6) * 1000, "values": {"ratio": "nan", "p99": "inf"}}]}},
               {"step": "2-pause", "action": "done", "at": at(6), "detail": {}},
               {"step": "3-shift", "action": "fail", "at": at(7), "detail": {}}]
    return {"created_at": at(0), "plan": plan, "journal": journal}


def test_one_traffic_point_per_finished_step_at_its_split() -> None:
    assert traffic_points(status()) == [(0.0, 0.0), (2.0, 0.0), (3.0, 25.0), (6.0, 25.0)]


def test_each_analysis_value_is_a_series_and_unreadable_values_are_left_out() -> None:
    assert analysis_series(status()) == {"errors<script>": {"ratio": [(4.0, 0.01), (5.0, 0.02)]}}


def test_svg_escapes_labels_and_marks_points_only_while_few() -> None:
    charts = rollout_charts(status())
    assert str(charts["traffic"]).count('class="pt"') == 4
    [a] = charts["analyses"]
    text = str(a["svg"])
    assert "<script>" not in text and "errors&lt;script&gt;" in text and a["points"] == 2
    many = svg("t", {"s": [(float(i), float(i)) for i in range(MAX_MARKS + 1)]})
    assert 'class="pt"' not in str(many) and "<polyline" in str(many)
    assert re.search(r'viewBox="0 0 \d+ \d+" role="img" aria-labelledby="chart-title"', str(many))
