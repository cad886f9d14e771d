"""Prometheus text exposition (format 0.0.4) of request counts and latencies.

Small enough to write by hand; gauges that describe the catalog are read at scrape time.
"""

from __future__ import annotations

import bisect
from collections import defaultdict

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.hist: dict[tuple[str, str], list[int]] = {}
        self.sums: dict[tuple[str, str], float] = defaultdict(float)
        self.counters: dict[str, int] = defaultdict(int)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests[(method, route, status)] += 1
        key = (method, route)
        buckets = self.hist.setdefault(key, [0] * (len(BUCKETS) + 1))
        buckets[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.sums[key] += seconds

    def inc(self, name: str, by: int = 1) -> None:
        self.counters[name] += by

    def render(self, gauges: dict[str, tuple[str, float]]) -> str:
        out = ["# HELP imm_http_requests_total API requests by method, route and status.",
               "# TYPE imm_http_requests_total counter"]
        for (m, r, s), n in sorted(self.requests.items()):
            out.append(f'imm_http_requests_total{{method="{m}",route="{_esc(r)}",status="{s}"}} {n}')
        out += ["# HELP imm_http_request_duration_seconds API request latency.",
                "# TYPE imm_http_request_duration_seconds histogram"]
        for (m, r), buckets in sorted(self.hist.items()):
            labels = f'method="{m}",route="{_esc(r)}"'
            acc = 0
            for bound, n in zip(BUCKETS, buckets, strict=False):
                acc += n
                out.append(f'imm_http_request_duration_seconds_bucket{{{labels},le="{bound}"}} {acc}')
            acc += buckets[-1]
            out.append(f'imm_http_request_duration_seconds_bucket{{{labels},le="+Inf"}} {acc}')
            out.append(f"imm_http_request_duration_seconds_sum{{{labels}}} {self.sums[(m, r)]:.6f}")
            out.append(f"imm_http_request_duration_seconds_count{{{labels}}} {acc}")
        for name, n in sorted(self.counters.items()):
            out += [f"# TYPE imm_{name}_total counter", f"imm_{name}_total {n}"]
        for name, (help_text, value) in sorted(gauges.items()):
            out += [f"# HELP imm_{name} {help_text}", f"# TYPE imm_{name} gauge",
                    f"imm_{name} {value:g}"]
        return "\n".join(out) + "\n"
