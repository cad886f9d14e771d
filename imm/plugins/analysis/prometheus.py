"""``kind = "prometheus"``: an instant PromQL query whose single value is judged.

    [[services.web.analysis]]
    name = "error-ratio"
    kind = "prometheus"
    url = "http://127.0.0.1:9090"        # or [analysis] prometheus_url
    query = 'sum(rate(app_requests_total{imm_digest="${digest}",status=~"5.."}[10s]))
             / sum(rate(app_requests_total{imm_digest="${digest}"}[10s]))'
    failure_condition = "result >= 0.05"

The query must come back as one number (a scalar or a one-series vector: aggregate with
``sum``/``max``); an empty vector or NaN is "no data". An unreachable server, an HTTP error or a
query Prometheus rejects is a :class:`MeasureError`.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

from ...errors import ConfigError
from ..analysis_base import AnalysisKind, AnalysisRegistry, AnalysisTarget, Measured, MeasureError, Template
from ..analysis_base import number as _number
from ..analysis_base import option as _option
from ..hookspecs import hookimpl

_PAIRS = {")": "(", "]": "[", "}": "{"}


def check_promql(where: str, text: str) -> None:
    """Catch what is malformed without a server: unbalanced brackets and quotes."""
    stack: list[str] = []
    quote = ""
    i = 0
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = ""
        elif c in "\"'`":
            quote = c
        elif c in "([{":
            stack.append(c)
        elif c in _PAIRS:
            if not stack or stack.pop() != _PAIRS[c]:
                raise ConfigError(f"{where} query {text!r}: unbalanced {c!r} at offset {i}")
        i += 1
    if quote:
        raise ConfigError(f"{where} query {text!r}: unterminated {quote} string")
    if stack:
        raise ConfigError(f"{where} query {text!r}: {stack[-1]!r} is never closed")


def prometheus_url(where: str, spec: Mapping[str, Any], defaults: Mapping[str, Any]) -> str:
    url = spec.get("url", defaults.get("prometheus_url"))
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ConfigError(f"{where} url {url!r} must be the Prometheus server's http(s) URL "
                          "(or set [analysis] prometheus_url)")
    return url.rstrip("/")


def query(url: str, promql: str, timeout_s: float) -> float | None:
    """One instant query: its value, or None for no data."""
    full = f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(full, timeout=timeout_s) as resp:  # noqa: S310 - http(s) only
            body = json.loads(resp.read())
    except urllib.error.HTTPError as e:
        try:
            detail = json.loads(e.read()).get("error", e.reason)
        except ValueError:
            detail = e.reason
        raise MeasureError(f"prometheus {url} answered {e.code}: {detail}") from None
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        reason = getattr(e, "reason", e)
        raise MeasureError(f"prometheus {url} unreachable: {reason}") from None
    except ValueError as e:
        raise MeasureError(f"prometheus {url} sent a body that is not JSON: {e}") from None
    if body.get("status") != "success":
        raise MeasureError(f"prometheus {url}: {body.get('error', body)}")
    data = body.get("data", {})
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar":
        return _number(result[1])
    if kind == "vector":
        if not result:
            return None
        if len(result) > 1:
            raise MeasureError(f"query returned {len(result)} series; aggregate it to one "
                               "(sum, max, ...)")
        return _number(result[0]["value"][1])
    raise MeasureError(f"query returned a {kind}; use an instant vector or scalar")


class Prometheus(AnalysisKind):
    kind = "prometheus"
    keys = frozenset({"url", "query", "timeout_s"})

    def __init__(self, where: str, spec: Mapping[str, Any], defaults: Mapping[str, Any]) -> None:
        super().__init__(where, spec, defaults)
        self.url = prometheus_url(where, spec, defaults)
        self.query = Template(f"{where} query", spec.get("query"))
        check_promql(where, self.query.text)
        self.timeout_s = _option(spec, where, "timeout_s", 5.0, float, 0.1)

    def measure(self, target: AnalysisTarget) -> Measured:
        q = self.query.render(target)
        return Measured({"result": query(self.url, q, self.timeout_s)}, q)


@hookimpl(trylast=True)
def imm_register_analysis_kinds(registry: AnalysisRegistry) -> None:
    registry.add(Prometheus)
