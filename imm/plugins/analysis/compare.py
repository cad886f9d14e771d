"""``kind = "compare"``: one PromQL query for the canary and for the stable set, judged together.

    [[services.web.analysis]]
    name = "errors-vs-stable"
    kind = "compare"
    query = 'sum(rate(app_requests_total{imm_digest="${digest}",status=~"5.."}[10s]))
             / sum(rate(app_requests_total{imm_digest="${digest}"}[10s]))'
    failure_condition = "canary > stable * 1.1 + 0.01"

``${digest}`` and ``${role}`` take each role's value in turn; the condition sees ``canary`` and
``stable``. Kayenta's idea, without its statistics.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..analysis_base import AnalysisKind, AnalysisRegistry, AnalysisTarget, Measured, Template
from ..analysis_base import option as _option
from ..hookspecs import hookimpl
from .prometheus import check_promql, prometheus_url, query


class Compare(AnalysisKind):
    kind = "compare"
    variables = ("canary", "stable")
    keys = frozenset({"url", "query", "timeout_s"})

    def __init__(self, where: str, spec: Mapping[str, Any], defaults: Mapping[str, Any]) -> None:
        super().__init__(where, spec, defaults)
        self.url = prometheus_url(where, spec, defaults)
        self.query = Template(f"{where} query", spec.get("query"))
        check_promql(where, self.query.text)
        self.timeout_s = _option(spec, where, "timeout_s", 5.0, float, 0.1)

    def measure(self, target: AnalysisTarget) -> Measured:
        values: dict[str, float | None] = {}
        asked = []
        for role in ("canary", "stable"):
            q = self.query.render(target.as_role(role))
            values[role] = query(self.url, q, self.timeout_s)
            asked.append(f"{role}: {q}")
        return Measured(values, "; ".join(asked))


@hookimpl(trylast=True)
def imm_register_analysis_kinds(registry: AnalysisRegistry) -> None:
    registry.add(Compare)
