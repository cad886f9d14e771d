"""Running one blocking libcloud call: retries with backoff, and failures named (see the package
docstring)."""

from __future__ import annotations

import http.client
import logging
import random
import re
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ...errors import ConfigError, ImmError, ProviderError, RouterError
from .credentials import Scrubber
from .settings import setting_int, setting_num

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_RETRIES = 5
DEFAULT_BACKOFF_BASE_S = 0.5
DEFAULT_BACKOFF_MAX_S = 10.0
MAX_RETRY_AFTER_S = 60.0  # a server's Retry-After is honoured up to this

# Error codes (AWS, GCP, Azure, OpenStack spellings) that mean "slow down", whatever the status.
THROTTLING_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestLimitExceeded",
    "RequestThrottled", "RequestThrottledException", "TooManyRequestsException",
    "TooManyRequests", "SlowDown", "PriorRequestNotComplete", "EC2ThrottledException",
    "BandwidthLimitExceeded", "RateLimitExceeded", "rateLimitExceeded", "userRateLimitExceeded",
    "LimitExceededException", "ServerBusy", "OverLimit",
})
_THROTTLING_TEXT = re.compile(r"rate exceeded|too many requests|throttl|rate limit", re.I)
_ERRNO = re.compile(r"\[Errno -?\d+\][^'\")\]]*")
# "Code: message", the way libcloud's AWS responses word an error (one line per error).
_CODE_RE = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_.]*(?:\.[A-Za-z0-9_]+)*):\s")


@dataclass(frozen=True)
class CallPolicy:
    timeout_s: float = DEFAULT_TIMEOUT_S
    retries: int = DEFAULT_RETRIES
    backoff_base_s: float = DEFAULT_BACKOFF_BASE_S
    backoff_max_s: float = DEFAULT_BACKOFF_MAX_S

    KEYS = frozenset({"timeout_s", "retries", "backoff_base_s", "backoff_max_s"})

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], where: str) -> CallPolicy:
        policy = cls(
            timeout_s=setting_num(settings, "timeout_s", where, DEFAULT_TIMEOUT_S, 0.05, 3600),
            retries=setting_int(settings, "retries", where, DEFAULT_RETRIES, 0, 20),
            backoff_base_s=setting_num(settings, "backoff_base_s", where,
                                       DEFAULT_BACKOFF_BASE_S, 0, 60),
            backoff_max_s=setting_num(settings, "backoff_max_s", where,
                                      DEFAULT_BACKOFF_MAX_S, 0, 600),
        )
        if policy.backoff_max_s < policy.backoff_base_s:
            raise ConfigError(f"{where}: backoff_max_s ({policy.backoff_max_s:g}) must be at "
                              f"least backoff_base_s ({policy.backoff_base_s:g})")
        return policy

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Sleep before retry number ``attempt`` (1-based): exponential, capped, "equal jitter"
        (half fixed, half random) so that many callers throttled together spread out."""
        ceiling = min(self.backoff_max_s, self.backoff_base_s * (2 ** (attempt - 1)))
        delay = ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - jitter, not crypto
        if retry_after:
            delay = max(delay, min(retry_after, MAX_RETRY_AFTER_S))
        return delay


@dataclass(frozen=True)
class Failure:
    """What a failed cloud call tells us, already scrubbed."""

    kind: str  # auth | throttled | server | timeout | network | malformed | client | other
    retryable: bool
    message: str
    status: int | None = None
    cloud_code: str | None = None
    retry_after: float | None = None
    applied_unknown: bool = False  # the call may have reached the cloud (timeout, cut)


def _cloud_code(text: str) -> str | None:
    m = _CODE_RE.match(text)
    return m.group(1) if m else None


def _is_throttling(code: str | None, text: str) -> bool:
    return (code in THROTTLING_CODES) or bool(_THROTTLING_TEXT.search(text))


def classify(exc: BaseException, scrub: Callable[[Any], str]) -> Failure:
    """Sort a libcloud / network exception into a :class:`Failure`."""
    from libcloud.common.exceptions import BaseHTTPError, RateLimitReachedError
    from libcloud.common.types import InvalidCredsError, LibcloudError, MalformedResponseError
    from libcloud.common.types import ProviderError as LCProviderError

    if isinstance(exc, RateLimitReachedError):
        return Failure("throttled", True, scrub(exc.message or "HTTP 429 rate limit exceeded"),
                       429, None, getattr(exc, "retry_after", None) or None)
    if isinstance(exc, InvalidCredsError):
        text = scrub(getattr(exc, "value", None) or exc)
        return Failure("auth", False, text, getattr(exc, "http_code", 401), _cloud_code(text))
    if isinstance(exc, BaseHTTPError) or isinstance(exc, LCProviderError):
        if isinstance(exc, BaseHTTPError):
            status, raw = exc.code, exc.message
        else:
            status, raw = exc.http_code, exc.value
        text = scrub(raw or "").strip() or f"HTTP {status}"
        code = _cloud_code(text)
        retry_after = _retry_after(getattr(exc, "headers", None))
        try:
            status = int(status)
        except (TypeError, ValueError):
            status = None
        if status == 429 or _is_throttling(code, text):
            return Failure("throttled", True, text, status, code, retry_after)
        if status in (401, 403) or code in ("AuthFailure", "InvalidClientTokenId",
                                            "SignatureDoesNotMatch", "UnrecognizedClientException",
                                            "ExpiredToken", "InvalidAccessKeyId"):
            return Failure("auth", False, text, status, code)
        if status is not None and status >= 500:
            return Failure("server", True, text, status, code, retry_after, applied_unknown=True)
        return Failure("client", False, text, status, code)
    if isinstance(exc, MalformedResponseError):
        body = scrub(getattr(exc, "body", "") or "")
        snippet = " ".join(body.split())[:200]
        return Failure("malformed", True, f"unparseable answer ({scrub(exc.value)})"
                       + (f": {snippet}" if snippet else ""), applied_unknown=True)
    if isinstance(exc, LibcloudError):
        text = scrub(getattr(exc, "value", None) or exc) or type(exc).__name__
        code = _cloud_code(text)
        if _is_throttling(code, text):
            return Failure("throttled", True, text, None, code)
        return Failure("other", False, text, None, code)
    if _is_timeout(exc):
        return Failure("timeout", True, f"timed out ({type(exc).__name__})",
                       applied_unknown=True)
    if isinstance(exc, OSError | http.client.HTTPException):
        reason = scrub(getattr(exc, "strerror", None) or exc) or type(exc).__name__
        errno = _ERRNO.search(reason)  # requests wraps "[Errno 111] Connection refused" deeply
        not_sent = isinstance(exc, socket.gaierror | ConnectionRefusedError) or any(
            s in reason for s in ("Failed to establish a new connection", "NameResolution"))
        return Failure("network", True, f"{type(exc).__name__}: "
                       f"{errno.group(0).strip() if errno else reason}",
                       applied_unknown=not not_sent)
    return Failure("other", False, f"{type(exc).__name__}: {scrub(exc)}")


def _is_timeout(exc: BaseException) -> bool:
    if isinstance(exc, TimeoutError):  # socket.timeout is an alias
        return True
    try:
        import requests

        if isinstance(exc, requests.exceptions.Timeout):
            return True
    except ImportError:  # pragma: no cover - libcloud depends on requests
        pass
    return isinstance(exc, ssl.SSLError) and "timed out" in str(exc)


def _retry_after(headers: Any) -> float | None:
    if not headers:
        return None
    value = headers.get("retry-after") if hasattr(headers, "get") else None
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


class CloudProviderError(ProviderError):
    """A provider call failed; ``failure`` says how (kind, status, cloud error code)."""

    failure: Failure


class CloudRouterError(RouterError):
    """A router (load balancer) call failed; ``failure`` says how."""

    failure: Failure


def failure_of(exc: BaseException) -> Failure | None:
    return getattr(exc, "failure", None)


@dataclass
class CloudCaller:
    """Runs blocking libcloud calls with retries and turns failures into imm errors.

    :param cloud: "AWS", "GCP", ... as people call it.
    :param name: the configured provider or router name (``aws-prod``).
    :param credentials_hint: what to check when credentials are refused, e.g.
        ``"$AWS_ACCESS_KEY_ID/$AWS_SECRET_ACCESS_KEY"`` (names, never values).
    :param endpoint: region -> the endpoint it talks to, for network error messages.
    """

    cloud: str
    name: str
    policy: CallPolicy
    scrub: Scrubber
    log: logging.Logger
    credentials_hint: str = "the credentials"
    endpoint: Callable[[str], str] | None = None
    error_cls: type[CloudProviderError] | type[CloudRouterError] = CloudProviderError
    kind_word: str = "provider"
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)

    def call(self, region: str, call: str, fn: Callable[..., T], *args: Any,
             recover: Callable[[], T | None] | None = None, idempotent: bool = True,
             **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` with retries; see the module docstring."""
        attempt = 0
        started = time.monotonic()
        while True:
            attempt += 1
            try:
                return fn(*args, **kwargs)
            except ImmError:
                raise  # already an imm error (raised by the plugin's own code inside fn)
            except Exception as exc:  # noqa: BLE001 - every failure is classified below
                failure = classify(exc, self.scrub)
            may_retry = failure.retryable and attempt <= self.policy.retries and (
                idempotent or recover is not None or not failure.applied_unknown)
            if not may_retry:
                raise self.error(region, call, failure, attempt, time.monotonic() - started)
            delay = self.policy.delay(attempt, failure.retry_after)
            self.log.warning("%s %s %s, region %s: %s failed (%s: %s); retry %d of %d in %.2fs",
                             self.cloud, self.kind_word, self.name, region, call, failure.kind,
                             failure.message, attempt, self.policy.retries, delay)
            self.sleep(delay)
            if recover is not None and failure.applied_unknown:
                try:
                    found = recover()
                except (ProviderError, RouterError) as exc:
                    self.log.warning("%s %s %s, region %s: could not check whether %s took "
                                     "effect (%s); calling it again", self.cloud,
                                     self.kind_word, self.name, region, call, exc.message)
                    found = None
                if found is not None:
                    self.log.info("%s %s %s, region %s: %s had taken effect before it failed; "
                                  "using its result", self.cloud, self.kind_word, self.name,
                                  region, call)
                    return found

    def error(self, region: str, call: str, failure: Failure, attempts: int = 1,
              elapsed: float = 0.0) -> CloudProviderError | CloudRouterError:
        where = f"{self.cloud} {self.kind_word} {self.name}, region {region}"
        after = f" after {attempts} attempts ({elapsed:.1f}s)" if attempts > 1 else ""
        endpoint = self.endpoint(region) if self.endpoint else "the API endpoint"
        hint = {
            "auth": f"check {self.credentials_hint}: are they valid, not expired, and allowed "
                    f"to call {call}?",
            "throttled": "the API kept throttling; raise retries or backoff_max_s, or lower "
                         "imm's concurrency for this provider",
            "server": "the cloud API is failing (HTTP 5xx); retry later and check the cloud's "
                      "status page",
            "timeout": f"no answer within timeout_s={self.policy.timeout_s:g}s; check network "
                       f"access to {endpoint} or raise timeout_s",
            "network": f"cannot talk to {endpoint}; check DNS, proxy and firewall (and "
                       f"endpoint if set)",
            "malformed": f"{endpoint} did not answer like the {self.cloud} API (a proxy or "
                         f"captive portal?); check endpoint and proxy settings",
            "client": "the request was rejected; check the ids and settings it names",
            "other": "see the message; this may be a bug in imm or libcloud",
        }[failure.kind]
        status = f" (HTTP {failure.status})" if failure.status and failure.kind != "throttled" \
            else ""
        message = self.scrub(f"{where}: {call} failed{after}{status}: {failure.message}. {hint}")
        err = self.error_cls(message, detail={
            "cloud": self.cloud, self.kind_word: self.name, "region": region, "call": call,
            "attempts": attempts, "kind": failure.kind, "http_status": failure.status,
            "cloud_code": failure.cloud_code,
        })
        err.failure = failure
        return err

