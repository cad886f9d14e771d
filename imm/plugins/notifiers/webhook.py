"""``kind = "webhook"``: POST each event as JSON (or Slack-compatible text), HMAC-signed.

    [notifications.ops]
    kind = "webhook"
    url = "https://hooks.example.com/imm"
    format = "json"                 # or "slack": {"text": "..."} for Slack-compatible receivers
    secret_env = "IMM_WEBHOOK_SECRET"   # or secret_file = "/etc/imm/webhook.key"
    events = ["rollout.rolled-back", "analysis.failed"]   # default: every event
    services = ["web"]              # default: every service (a global notifier)

With a secret, the header ``X-Imm-Signature: sha256=<hex>`` is HMAC-SHA256 of the exact body
bytes under the secret; ``X-Imm-Event`` names the event, ``X-Imm-Delivery`` is the delivery id
(the same on every retry of one delivery). The secret is read from the environment or a file,
never from the config text, and never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ...errors import ConfigError
from ..hookspecs import hookimpl
from ..notify_base import DeliveryError, Notifier, NotifierRegistry


def sign(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def slack_text(event: Mapping[str, Any]) -> str:
    subject = event.get("service") or event.get("instance") or ""
    return f"[imm] {event['event']} {subject}: {event.get('summary', '')}".strip()


class Webhook(Notifier):
    kind = "webhook"
    keys = frozenset({"url", "format", "secret_env", "secret_file", "timeout_s", "headers"})

    def __init__(self, name: str, spec: Mapping[str, Any]) -> None:
        super().__init__(name, spec)
        where = f"[notifications.{name}]"
        url = spec.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError(f"{where} url {url!r} must be an http(s) URL")
        self.url = url
        self.format = spec.get("format", "json")
        if self.format not in ("json", "slack"):
            raise ConfigError(f"{where} format {self.format!r}: use json or slack")
        self.secret: bytes | None = None
        if "secret_env" in spec:
            value = os.environ.get(str(spec["secret_env"]))
            if not value:
                raise ConfigError(f"{where} secret_env: environment variable "
                                  f"{spec['secret_env']!r} is not set")
            self.secret = value.encode()
        elif "secret_file" in spec:
            try:
                self.secret = Path(str(spec["secret_file"])).read_bytes().strip()
            except OSError as e:
                raise ConfigError(f"{where} secret_file {spec['secret_file']!r}: "
                                  f"{e.strerror}") from None
        timeout = spec.get("timeout_s", 5)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ConfigError(f"{where} timeout_s must be a number > 0, got {timeout!r}")
        self.timeout_s = float(timeout)
        headers = spec.get("headers", {})
        if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
            raise ConfigError(f"{where} headers must be a table of strings")
        self.headers = dict(headers)

    def body(self, event: Mapping[str, Any]) -> bytes:
        if self.format == "slack":
            return json.dumps({"text": slack_text(event)}).encode()
        return json.dumps(dict(event), sort_keys=True, separators=(",", ":")).encode()

    def deliver(self, event: Mapping[str, Any]) -> str:
        body = self.body(event)
        headers = {"Content-Type": "application/json", "User-Agent": "imm-webhook",
                   "X-Imm-Event": str(event["event"]),
                   "X-Imm-Delivery": str(event["delivery"]), **self.headers}
        if self.secret is not None:
            headers["X-Imm-Signature"] = sign(self.secret, body)
        req = urllib.request.Request(self.url, data=body, method="POST",  # noqa: S310
                                     headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:  # noqa: S310
                return f"HTTP {resp.status}"
        except urllib.error.HTTPError as e:
            raise DeliveryError(f"{self.url} answered HTTP {e.code}") from None
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            raise DeliveryError(f"{self.url} unreachable: {getattr(e, 'reason', e)}") from None


@hookimpl(trylast=True)
def imm_register_notifiers(registry: NotifierRegistry) -> None:
    registry.add(Webhook)
