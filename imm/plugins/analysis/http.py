"""``kind = "http"``: GET or POST a URL and read one number from the JSON answer.

    [[services.web.analysis]]
    name = "slo"
    kind = "http"
    url = "http://slo.internal/v1/error-ratio?service=${service}&digest=${digest}"
    method = "GET"                  # or POST, with body = '{"rollout": "${rollout}"}'
    json_path = "$.data.ratio"
    failure_condition = "result > 0.01"
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from jsonpath_ng import parse as jsonpath
from jsonpath_ng.exceptions import JsonPathParserError

from ...errors import ConfigError
from ..analysis_base import AnalysisKind, AnalysisRegistry, AnalysisTarget, Measured, MeasureError, Template
from ..analysis_base import number as _number
from ..analysis_base import option as _option
from ..hookspecs import hookimpl


class Http(AnalysisKind):
    kind = "http"
    keys = frozenset({"url", "method", "body", "json_path", "headers", "timeout_s"})

    def __init__(self, where: str, spec: Mapping[str, Any], defaults: Mapping[str, Any]) -> None:
        super().__init__(where, spec, defaults)
        self.url = Template(f"{where} url", spec.get("url"))
        if not self.url.text.startswith(("http://", "https://")):
            raise ConfigError(f"{where} url {self.url.text!r} must be an http(s) URL")
        self.method = spec.get("method", "GET")
        if self.method not in ("GET", "POST"):
            raise ConfigError(f"{where} method {self.method!r}: use GET or POST")
        self.body = Template(f"{where} body", spec["body"]) if "body" in spec else None
        path = spec.get("json_path")
        if not isinstance(path, str):
            raise ConfigError(f"{where} json_path must be a JSON path like '$.data.value', "
                              f"got {path!r}")
        try:
            self.path = jsonpath(path)
        except (JsonPathParserError, Exception) as e:  # noqa: BLE001 - the parser raises several
            raise ConfigError(f"{where} json_path {path!r} is not a JSON path: {e}") from None
        self.path_text = path
        headers = spec.get("headers", {})
        if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
            raise ConfigError(f"{where} headers must be a table of strings, got {headers!r}")
        self.headers = dict(headers)
        self.timeout_s = _option(spec, where, "timeout_s", 5.0, float, 0.1)

    def measure(self, target: AnalysisTarget) -> Measured:
        url = self.url.render(target)
        data = self.body.render(target).encode() if self.body else None
        req = urllib.request.Request(url, data=data, method=self.method,  # noqa: S310
                                     headers={"Content-Type": "application/json", **self.headers})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:  # noqa: S310
                body = json.loads(resp.read())
        except urllib.error.HTTPError as e:
            raise MeasureError(f"{self.method} {url} answered {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            raise MeasureError(f"{self.method} {url} unreachable: "
                               f"{getattr(e, 'reason', e)}") from None
        except ValueError as e:
            raise MeasureError(f"{self.method} {url} sent a body that is not JSON: {e}") from None
        found = [m.value for m in self.path.find(body)]
        if len(found) > 1:
            raise MeasureError(f"json_path {self.path_text!r} matched {len(found)} values")
        value = _number(found[0]) if found else None
        return Measured({"result": value}, f"{self.method} {url} {self.path_text}")


@hookimpl(trylast=True)
def imm_register_analysis_kinds(registry: AnalysisRegistry) -> None:
    registry.add(Http)
