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

from ..analysis_base import AnalysisRegistry, AnalysisTarget, Measured
from ..hookspecs import hookimpl
from .prometheus import Prometheus, query


class Compare(Prometheus):
    """The prometheus kind's settings (url, query, timeout_s), its query asked once per role."""

    kind = "compare"
    variables = ("canary", "stable")

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
